"""What every rollout engine must do, on the embedded tiny model in fp32: the same greedy
responses as HFRollout, log-probs equal to a teacher-forced forward, the limits and EOS handled
alike, and sampling from the weights the policy has now. A new engine joins ``ENGINES``."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.losses import token_logprobs
from lightning_rlhf.models import load_causal_lm, load_tokenizer, padded_positions
from lightning_rlhf.rollout import HFRollout, PagedRollout, SamplingOptions

ENGINES = {"hf": HFRollout, "hf-dynamic": lambda: HFRollout(cache="dynamic"), "paged": PagedRollout}
TEXTS = ["Add 2 and 3:", "hello", "The capital of France is", "x"]


def spread(model, seed=0):
    """The default init is near uniform: spread the weights so that greedy answers differ by
    prompt and step."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return spread(load_causal_lm(tiny_model_dir).eval()), load_tokenizer(
        tiny_model_dir, padding_side="left"
    )


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    return ENGINES[request.param]()


def prompts(tok, texts=TEXTS):
    enc = tok(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    return enc.input_ids, enc.attention_mask


def run(engine, model, tok, options, texts=TEXTS, seed=0):
    torch.manual_seed(seed)
    engine.bind(model, tok.eos_token_id, tok.pad_token_id)
    return engine.generate(*prompts(tok, texts), options)


def teacher_forced(model, tok, out, temperature, texts=TEXTS):
    ids, mask = prompts(tok, texts)
    full_ids = torch.cat([ids, out.response_ids], 1)
    full_mask = torch.cat([mask, out.response_mask], 1)
    with torch.no_grad():
        logits = model(
            input_ids=full_ids, attention_mask=full_mask, position_ids=padded_positions(full_mask)
        ).logits
    R = out.response_ids.shape[1]
    scaled = logits[:, -R - 1 : -1] / max(temperature, 1e-6)
    return token_logprobs(scaled, out.response_ids) * out.response_mask


def eos_share(eos: int, share: float):
    """Logits with EOS at ``share`` of the mass, the other tokens in their proportions."""

    def fn(logits):
        others = logits.index_fill(-1, torch.tensor([eos]), -math.inf)
        logits = logits.clone()
        logits[..., eos] = others.logsumexp(-1) + math.log(share / (1 - share))
        return logits

    return fn


def logits_hook(model, fn):
    return model.get_output_embeddings().register_forward_hook(lambda m, i, logits: fn(logits))


def test_greedy_responses_equal_hf_rollout(engine, lm, one_thread):
    model, tok = lm
    greedy = SamplingOptions(12, temperature=0.0)
    ours, reference = run(engine, model, tok, greedy), run(HFRollout(), model, tok, greedy)
    assert len(set(reference.response_ids.flatten().tolist())) > 6  # not one token repeated
    assert torch.equal(ours.response_ids, reference.response_ids)
    assert torch.equal(ours.response_mask, reference.response_mask)
    assert ours.logprobs.dtype == torch.float32


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (50, 0.9)])
def test_sampled_logprobs_equal_a_teacher_forced_forward(engine, lm, one_thread, top_k, top_p):
    model, tok = lm
    eos = tok.eos_token_id
    # EOS at 1/8 of the mass: rows end at different steps, and not before min_new_tokens
    hook = logits_hook(model, eos_share(eos, 1 / 8))
    try:
        options = SamplingOptions(20, temperature=0.7, top_k=top_k, top_p=top_p, min_new_tokens=3)
        out = run(engine, model, tok, options, TEXTS * 3)
        expected = teacher_forced(model, tok, out, 0.7, TEXTS * 3)
    finally:
        hook.remove()
    lengths = out.response_mask.sum(1)
    assert (lengths >= 3).all() and len(set(lengths.tolist())) > 2
    assert not (out.response_ids[:, :2] == eos).any()  # min_new_tokens: no EOS in the first 3
    torch.testing.assert_close(out.logprobs, expected, atol=1e-5, rtol=1e-5)


def test_top_k_one_and_a_tiny_top_p_sample_the_greedy_response(engine, lm, one_thread):
    model, tok = lm
    greedy = run(HFRollout(), model, tok, SamplingOptions(10, temperature=0.0)).response_ids
    for options in (SamplingOptions(10, top_k=1), SamplingOptions(10, top_p=1e-6)):
        assert torch.equal(run(engine, model, tok, options).response_ids, greedy)


def test_responses_are_cut_at_max_new_tokens(engine, lm, one_thread):
    model, tok = lm
    eos = tok.eos_token_id
    hook = logits_hook(model, lambda z: z.index_fill(-1, torch.tensor([eos]), -math.inf))
    try:
        out = run(engine, model, tok, SamplingOptions(7))
    finally:
        hook.remove()
    assert out.response_ids.shape == (len(TEXTS), 7) and out.response_mask.all()
    assert not (out.response_ids == eos).any()


def test_a_response_that_is_eos_at_once(engine, lm, one_thread):
    model, tok = lm
    eos = tok.eos_token_id
    hook = logits_hook(model, lambda z: z.index_fill(-1, torch.tensor([eos]), 1e4))
    try:
        out = run(engine, model, tok, SamplingOptions(7))
    finally:
        hook.remove()
    assert out.response_ids.tolist() == [[eos]] * len(TEXTS)
    assert out.response_mask.tolist() == [[1]] * len(TEXTS)
    assert out.logprobs.abs().max() < 1e-3  # EOS held all the mass


@pytest.fixture(scope="module")
def parrot(tiny_model_dir):
    """The tiny model with its attention and MLP outputs zeroed, so that the last hidden state is
    the embedding of the current token alone: a logits hook can then tell the tokens apart in any
    batch layout (paged batches pack the rows). Its hook repeats "~" forever and answers EOS
    after every other token."""
    model = spread(load_causal_lm(tiny_model_dir).eval())
    tok = load_tokenizer(tiny_model_dir, padding_side="left")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        tilde = tok.encode("~", add_special_tokens=False)[0]
        ref = model.model.norm(model.model.embed_tokens(torch.tensor([tilde])))[0]  # (H,)

    def hook(module, inputs, logits):
        is_tilde = torch.isclose(inputs[0], ref, atol=1e-5).all(-1, keepdim=True)  # (..., 1)
        forced = torch.full_like(logits, -1e4)
        forced[..., tilde] = torch.where(is_tilde[..., 0], 1e4, -1e4)
        forced[..., tok.eos_token_id] = torch.where(is_tilde[..., 0], -1e4, 1e4)
        return forced

    model.get_output_embeddings().register_forward_hook(hook)
    return model, tok, tilde


def test_one_row_runs_to_the_limit_while_the_others_stop_at_once(engine, parrot, one_thread):
    model, tok, tilde = parrot
    texts = ["ab", "ab~", "abcd", "a"]  # the second ends with "~": it repeats it to the limit
    out = run(engine, model, tok, SamplingOptions(9), texts)
    assert out.response_ids.shape == (4, 9)
    assert out.response_ids[1].tolist() == [tilde] * 9 and out.response_mask[1].all()
    for row in (0, 2, 3):
        assert out.response_ids[row].tolist() == [tok.eos_token_id] + [tok.pad_token_id] * 8
        assert out.response_mask[row].tolist() == [1] + [0] * 8
        assert (out.logprobs[row, 1:] == 0).all()


def test_after_a_weight_change_the_engine_samples_from_the_new_weights(engine, tiny_model_dir):
    model, tok = (
        spread(load_causal_lm(tiny_model_dir).eval()),
        load_tokenizer(tiny_model_dir, padding_side="left"),
    )
    greedy = SamplingOptions(10, temperature=0.0)
    engine.load_weights(model, version=0)
    before = run(engine, model, tok, greedy).response_ids
    spread(model, seed=1)  # an optimizer step, in place
    engine.load_weights(model, version=1)
    after = run(engine, model, tok, greedy).response_ids
    assert engine.weight_version == 1
    assert not torch.equal(after, before)
    assert torch.equal(after, run(HFRollout(), model, tok, greedy).response_ids)


def test_a_seed_fixes_the_samples_and_a_group_of_one_prompt_differs(engine, lm, one_thread):
    model, tok = lm
    options = SamplingOptions(8, temperature=1.0)
    group = ["hello"] * 4  # samples_per_prompt = 4: the rows repeat one prompt
    a, b = (
        run(engine, model, tok, options, group, seed=5),
        run(engine, model, tok, options, group, seed=5),
    )
    c = run(engine, model, tok, options, group, seed=6)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)  # another rank's seed: other samples
    assert len({tuple(r) for r in a.response_ids.tolist()}) == 4  # the group's samples differ
