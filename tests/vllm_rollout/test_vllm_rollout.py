"""VLLMRollout against HFRollout and a teacher-forced forward (fp32, CPU): the same greedy
answers, the policy's log-probs, EOS and the length limit, and never a stale weight."""

from __future__ import annotations

import logging

import pytest
import torch

from lightning_rlhf.losses import token_logprobs
from lightning_rlhf.models import LoraOptions, ModelOptions, load_causal_lm, load_tokenizer
from lightning_rlhf.rollout import HFRollout, SamplingOptions
from tests.vllm_rollout.conftest import NEEDS_VLLM, next_version

pytest.importorskip("vllm.entrypoints.llm", reason=NEEDS_VLLM)

TEXTS = ("Add 2 and 3:", "hello", "The capital of France is")


def policy(model_dir: str, seed: int, lora: bool = False):
    """The test Llama with weights spread (the default init is near uniform: greedy answers
    would not differ by prompt and step); with ``lora``, random non-zero adapters on top."""
    options = ModelOptions(lora=LoraOptions(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    model = load_causal_lm(model_dir, options if lora else None).eval()
    perturb(model, seed, adapters_only=False)
    return model


@torch.no_grad()
def perturb(model, seed: int, adapters_only: bool) -> None:
    """A stand-in for an optimizer step: new values for the weights (the adapters' only)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name or (adapters_only and "lora_" not in name):
            continue
        p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def prompts(tok, texts=TEXTS):
    enc = tok(list(texts), return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def teacher_forced(model, ids, mask, out, temperature: float):
    full_ids = torch.cat([ids, out.response_ids], 1)
    full_mask = torch.cat([mask, out.response_mask], 1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions).logits
    R = out.response_ids.shape[1]
    scaled = logits[:, -R - 1 : -1].float() / max(temperature, 1e-6)
    return token_logprobs(scaled, out.response_ids) * out.response_mask


def sample(engine, model, tok, options, version, texts=TEXTS, eos=None):
    engine.bind(model, tok.eos_token_id if eos is None else eos, tok.pad_token_id)
    engine.load_weights(model, version)
    ids, mask = prompts(tok, texts)
    return ids, mask, engine.generate(ids, mask, options)


def assert_serves(engine, model, tok, version) -> None:
    """The engine's greedy answers are HFRollout's on ``model``, and its sampled log-probs those
    of a teacher-forced forward of ``model``: it samples from these weights."""
    greedy = SamplingOptions(12, temperature=0.0)
    ids, mask, ours = sample(engine, model, tok, greedy, version)
    theirs = HFRollout().bind(model, tok.eos_token_id, tok.pad_token_id).generate(ids, mask, greedy)
    assert torch.equal(ours.response_ids, theirs.response_ids)
    assert torch.equal(ours.response_mask, theirs.response_mask)
    sampled = SamplingOptions(10, temperature=0.7, top_k=50, min_new_tokens=10)
    ids, mask, out = sample(engine, model, tok, sampled, version)
    expected = teacher_forced(model, ids, mask, out, 0.7)
    torch.testing.assert_close(out.logprobs, expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def tok(llama_dirs):
    return load_tokenizer(llama_dirs[False], padding_side="left")


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_greedy_is_hf_rollout_s_and_logprobs_the_policy_s(engines, llama_dirs, tok, tied):
    model = policy(llama_dirs[tied], seed=1)
    assert_serves(engines[tied], model, tok, next_version())
    greedy = SamplingOptions(12, temperature=0.0)
    _, _, out = sample(engines[tied], model, tok, greedy, next_version())
    assert len(set(out.response_ids.flatten().tolist())) > 3  # not one token repeated


@pytest.mark.parametrize("options", [{}, {"temperature": 1.3, "top_p": 0.9}])
def test_sampled_logprobs_equal_a_teacher_forced_forward(engines, llama_dirs, tok, options):
    model = policy(llama_dirs[False], seed=2)
    options = SamplingOptions(10, min_new_tokens=10, **options)
    ids, mask, out = sample(engines[False], model, tok, options, next_version())
    assert out.response_mask.shape == (3, 10) and out.response_mask.all()
    expected = teacher_forced(model, ids, mask, out, options.temperature)
    torch.testing.assert_close(out.logprobs, expected, atol=1e-4, rtol=1e-4)
    assert out.logprobs.dtype == torch.float32


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_after_an_update_the_engine_samples_from_the_new_weights(engines, llama_dirs, tok, tied):
    engine, model = engines[tied], policy(llama_dirs[tied], seed=3)
    assert_serves(engine, model, tok, next_version())
    pushes = engine.pushes
    perturb(model, seed=4, adapters_only=False)
    assert_serves(engine, model, tok, next_version())
    assert engine.pushes == pushes + 1  # one push per new version, none for the same version


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_pushes_through_files_as_to_a_worker_in_another_process(
    engines, llama_dirs, tok, monkeypatch, tied
):
    engine, model = engines[tied], policy(llama_dirs[tied], seed=14)
    assert_serves(engine, model, tok, next_version())
    assert engine._in_process  # the tests' engines run in-process: tensors handed over
    monkeypatch.setattr(engine, "_in_process", False)  # what a multiprocess engine gets
    perturb(model, seed=15, adapters_only=False)
    assert_serves(engine, model, tok, next_version())


def test_a_skipped_push_is_caught(engines, llama_dirs, tok, monkeypatch):
    engine, model = engines[True], policy(llama_dirs[True], seed=5)
    assert_serves(engine, model, tok, next_version())
    perturb(model, seed=6, adapters_only=False)
    monkeypatch.setattr(engine, "_push", lambda model: None)  # the bug: the update never lands
    with pytest.raises(AssertionError):
        assert_serves(engine, model, tok, next_version())


def test_lora_versions_are_never_stale(engines, llama_dirs, tok):
    from lightning_rlhf.models import adapters_off

    engine, model = engines[False], policy(llama_dirs[False], seed=7, lora=True)
    for seed in (8, 9):  # two updates of the adapters only
        perturb(model, seed=seed, adapters_only=True)
        assert_serves(engine, model, tok, next_version())
    with adapters_off(model), pytest.raises(AssertionError):  # πref is not what it serves
        assert_serves(engine, model, tok, engine.weight_version)


def test_eos_at_once_and_rows_cut_at_max_new_tokens(engines, llama_dirs, tok):
    engine, model = engines[False], policy(llama_dirs[False], seed=10)
    greedy = SamplingOptions(12, temperature=0.0)
    _, _, first = sample(engine, model, tok, greedy, next_version())
    eos = int(first.response_ids[0, 0])  # row 0's first token, taken as EOS: it ends at once
    ids, mask, out = sample(engine, model, tok, greedy, engine.weight_version, eos=eos)
    hf = HFRollout().bind(model, eos, tok.pad_token_id).generate(ids, mask, greedy)
    assert out.response_mask[0].tolist() == [1] + [0] * (out.response_mask.shape[1] - 1)
    assert torch.equal(out.response_ids, hf.response_ids)
    assert torch.equal(out.response_mask, hf.response_mask)
    assert first.response_mask.all()  # the real EOS never came in 12 tokens: cut there
    _, _, cut = sample(
        engine, model, tok, SamplingOptions(5, temperature=0.0), engine.weight_version
    )
    assert torch.equal(cut.response_ids, first.response_ids[:, :5]) and cut.response_mask.all()


def test_sleep_mode_on_cpu_is_a_no_op_said_once(engines, llama_dirs, tok, caplog, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    # the session's engine: freeing an engine in-process tears down vLLM's process groups,
    # which every engine of the process shares
    engine, model = engines[False], policy(llama_dirs[False], seed=11)
    monkeypatch.setattr(engine, "sleep_mode", True)
    monkeypatch.setattr(engine, "_sleep_noted", False)
    version = next_version()
    with caplog.at_level(logging.INFO, logger="lightning_rlhf.rollout.vllm_engine"):
        for _ in range(2):
            _, _, out = sample(engine, model, tok, SamplingOptions(4), version)
            assert out.response_ids.shape[0] == 3
    assert sum("cannot sleep on CPU" in r.message for r in caplog.records) == 1


def test_top_k_one_and_a_tiny_top_p_sample_the_greedy_response(engines, llama_dirs, tok):
    engine, model = engines[False], policy(llama_dirs[False], seed=12)
    version = next_version()
    _, _, greedy = sample(engine, model, tok, SamplingOptions(10, temperature=0.0), version)
    for options in (SamplingOptions(10, top_k=1), SamplingOptions(10, top_p=1e-6)):
        _, _, out = sample(engine, model, tok, options, version)
        assert torch.equal(out.response_ids, greedy.response_ids)


def test_a_group_of_one_prompt_gets_different_samples(engines, llama_dirs, tok):
    engine, model = engines[False], policy(llama_dirs[False], seed=13)
    options = SamplingOptions(8, temperature=1.0)  # samples_per_prompt = 4: one prompt repeated
    _, _, out = sample(engine, model, tok, options, next_version(), texts=["hello"] * 4)
    assert len({tuple(r) for r in out.response_ids.tolist()}) == 4
