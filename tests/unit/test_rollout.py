"""Sampling: the token draw against its definition, the KV-cached loop against transformers'
generate and a full forward, EOS handling and the options that shape the draw."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.losses import token_logprobs
from lightning_rlhf.models import load_causal_lm, load_tokenizer
from lightning_rlhf.rollout import (
    Generation,
    HFRollout,
    SamplingOptions,
    generate,
    rollout_metrics,
    sample_tokens,
)
from lightning_rlhf.rollout.cache import make_cache

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def frequencies(probs: torch.Tensor, n: int = 40_000, **options) -> torch.Tensor:
    """Empirical distribution of ``n`` draws from logits log(probs), all rows in one call."""
    torch.manual_seed(0)
    logits = probs.log().expand(n, -1)
    tokens, _ = sample_tokens(logits, SamplingOptions(**options))
    return torch.bincount(tokens, minlength=len(probs)).double() / n


def assert_distribution(freq: torch.Tensor, expected: torch.Tensor, n: int = 40_000) -> None:
    sigma = (expected * (1 - expected) / n).sqrt().clamp(min=1e-12)
    assert ((freq - expected).abs() <= 5 * sigma).all(), (freq, expected)
    assert (freq[expected == 0] == 0).all(), (freq, expected)  # never drawn, not merely rare


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, PROBS),
        ({"temperature": 2.0}, PROBS.sqrt() / PROBS.sqrt().sum()),  # softmax(log p / 2)
        ({"top_k": 2}, torch.tensor([0.5, 0.3, 0, 0]) / 0.8),
        # top-p 0.7: 0.5 < 0.7 before the second token, 0.8 >= 0.7 before the third
        ({"top_p": 0.7}, torch.tensor([0.5, 0.3, 0, 0]) / 0.8),
        ({"top_p": 0.5}, torch.tensor([1.0, 0, 0, 0])),  # the first token alone reaches 0.5
        # top-k first, then top-p of the renormalised rest: 0.5/0.95 < 0.6 <= 0.8/0.95
        ({"top_k": 3, "top_p": 0.6}, torch.tensor([0.5, 0.3, 0, 0]) / 0.8),
    ],
)
def test_draws_follow_the_truncated_tempered_distribution(options, expected):
    assert_distribution(frequencies(PROBS, **options), expected.double())


def test_top_k_keeps_ties_and_zero_probability_tokens_are_never_drawn():
    probs = torch.tensor([0.0, 0.25, 0.25, 0.25, 0.25, 0.0])  # -inf logits at both ends
    assert_distribution(frequencies(probs, top_k=2), probs.double())


def test_the_two_level_draw_is_the_inverse_cdf_across_blocks():
    # 1000 entries: four blocks of 256, the last padded; eighths sum exactly in float64, so the
    # two-level draw must pick exactly the entry a one-level cumulative sum picks
    from lightning_rlhf.rollout.sampling import _inverse_cdf

    g = torch.Generator().manual_seed(0)
    probs = torch.randint(0, 3, (64, 1000), generator=g).float() / 8
    probs[:, 255:257] = 0.0  # zeros on both sides of a block boundary
    probs[:, 600:] = 0.0  # whole blocks of zeros
    probs[0] = 0.0
    probs[0, 256] = 1.0  # one entry, the first of a block
    u = torch.rand(64, 1, generator=g, dtype=torch.float64)
    u[1] = 1.0 - 1e-16  # the top of the range
    got = _inverse_cdf(probs, u)
    cdf = probs.double().cumsum(-1)
    want = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    assert torch.equal(got, want.squeeze(1))
    assert (probs.gather(1, got[:, None]) > 0).all() and got[0] == 256


def test_logprobs_are_the_policy_s_before_the_truncation():
    logits = PROBS.log().expand(1000, -1)
    tokens, logprobs = sample_tokens(logits, SamplingOptions(temperature=2.0, top_k=2))
    expected = torch.log_softmax(logits / 2.0, dim=-1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs, expected)


def test_greedy_and_banned_token():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    tokens, logprobs = sample_tokens(logits, SamplingOptions(temperature=0.0))
    assert tokens.tolist() == [1, 0]
    for _ in range(50):  # banned even where it holds almost all the mass
        peaked = torch.tensor([[0.0, 30.0, 0.0]])
        token, logprob = sample_tokens(peaked, SamplingOptions(), banned=1)
        assert token.item() != 1
        # the log-probability is the policy's, the banned token's mass included: about -30
        torch.testing.assert_close(logprob, torch.log_softmax(peaked, -1)[0, token])


@pytest.mark.parametrize(
    "kwargs, field",
    [({"top_k": -1}, "top_k"), ({"min_new_tokens": 9}, "min_new_tokens"), ({"top_p": 0}, "top_p")],
)
def test_sampling_options_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingOptions(**kwargs)


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    torch.manual_seed(0)
    model = load_causal_lm(tiny_model_dir).eval()
    with torch.no_grad():  # the default init is near uniform: spread the weights so that greedy
        for name, p in model.named_parameters():  # answers differ by prompt and step
            if "norm" not in name:
                p.normal_(0.0, 0.3)
    return model, load_tokenizer(tiny_model_dir, padding_side="left")


def prompts(tokenizer, texts=("Add 2 and 3:", "hello", "The capital of France is")):
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def test_greedy_matches_transformers_generate_and_ignores_the_left_padding(lm, one_thread):
    model, tok = lm
    ids, mask = prompts(tok)
    greedy = SamplingOptions(12, temperature=0.0)
    ours = generate(model, ids, mask, greedy, tok.eos_token_id, tok.pad_token_id)
    theirs = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )[:, ids.shape[1] :]  # fmt: skip
    assert ours.response_ids.shape == (3, 12) and ours.response_mask.all()
    assert len(set(ours.response_ids.flatten().tolist())) > 3  # not one token repeated
    assert torch.equal(ours.response_ids, theirs)
    single = generate(model, *prompts(tok, ["hello"]), greedy, tok.eos_token_id, tok.pad_token_id)
    assert torch.equal(single.response_ids[0], ours.response_ids[1])  # unpadded == left-padded


def test_sampled_logprobs_equal_a_full_forward(lm, one_thread):
    model, tok = lm
    ids, mask = prompts(tok)
    torch.manual_seed(1)
    # EOS banned, so every row runs 10 tokens: log-probs are still the unmasked policy's
    sampling = SamplingOptions(10, temperature=0.7, top_k=50, min_new_tokens=10)
    out = generate(model, ids, mask, sampling, tok.eos_token_id, tok.pad_token_id)
    assert out.response_mask.shape == (3, 10) and out.response_mask.all()
    full_ids = torch.cat([ids, out.response_ids], 1)
    full_mask = torch.cat([mask, out.response_mask], 1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions).logits
    R = out.response_ids.shape[1]
    expected = token_logprobs(logits[:, -R - 1 : -1] / 0.7, out.response_ids) * out.response_mask
    torch.testing.assert_close(out.logprobs, expected, atol=1e-4, rtol=1e-4)
    assert out.logprobs.dtype == torch.float32


def test_eos_ends_each_row_and_generation_stops_when_all_have_ended(lm, one_thread):
    model, tok = lm
    eos = tok.eos_token_id

    def eos_half_the_mass(module, inputs, logits):  # rows end at different steps
        others = logits.clone()
        others[..., eos] = float("-inf")
        logits = logits.clone()
        logits[..., eos] = others.logsumexp(-1)
        return logits

    hook = model.get_output_embeddings().register_forward_hook(eos_half_the_mass)
    try:
        ids, mask = prompts(tok, ["a", "bb", "ccc", "dddd"] * 8)
        torch.manual_seed(0)
        out = generate(model, ids, mask, SamplingOptions(40), eos, tok.pad_token_id)
        torch.manual_seed(0)
        late = generate(model, ids, mask, SamplingOptions(40, min_new_tokens=40), eos,
                        tok.pad_token_id)  # fmt: skip
    finally:
        hook.remove()
    ends = [row.tolist().index(eos) if eos in row.tolist() else None for row in out.response_ids]
    assert len({e for e in ends}) > 2  # rows ended at different steps
    assert all(e is not None for e in ends) and out.response_ids.shape[1] == max(ends) + 1 < 40
    for row, m, lp, e in zip(out.response_ids, out.response_mask, out.logprobs, ends):
        assert m.tolist() == [1] * (e + 1) + [0] * (len(m) - e - 1)
        assert (row[e + 1 :] == tok.pad_token_id).all() and (lp[e + 1 :] == 0).all()
        assert (lp[: e + 1] < 0).all()
    assert late.response_ids.shape[1] == 40 and not (late.response_ids == eos).any()
    assert late.response_mask.all()
    # banned EOS still counts in the log-probs: near log(1/2) wherever it held half the mass
    assert late.logprobs.mean() < math.log(0.5) + 0.1


def test_generation_restores_training_mode(lm, one_thread):
    model, tok = lm
    model.train()
    try:
        generate(model, *prompts(tok), SamplingOptions(2), tok.eos_token_id, tok.pad_token_id)
        assert model.training
    finally:
        model.eval()


def test_decode_responses_keeps_the_masked_tokens_of_each_row(tokenizer):
    from lightning_rlhf.rollout import decode_responses

    rows = ["hello", "ok", "a longer answer"]
    encoded = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rows]
    width = max(map(len, encoded)) + 2
    ids = torch.full((3, width), tokenizer.pad_token_id)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
    ids[1, len(encoded[1])] = tokenizer.encode("X", add_special_tokens=False)[0]  # not in the mask
    assert decode_responses(tokenizer, ids, mask) == rows


def ragged_eos(model, eos, share=1 / 8):
    """A hook giving EOS ``share`` of the mass at every step, so rows end at different steps."""

    def hook(module, inputs, logits):
        others = logits.clone()
        others[..., eos] = float("-inf")
        logits = logits.clone()
        logits[..., eos] = others.logsumexp(-1) + math.log(share / (1 - share))
        return logits

    return model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize(
    "options",
    [{"compact_finished": False}, {"cache": "dynamic"}, {"cache": "static"}],
    ids=["no-compaction", "dynamic-cache", "static-cache"],
)
def test_compaction_and_caches_draw_the_same_tokens_per_row(lm, one_thread, options):
    # finished rows leave the batch, but each step's uniforms are drawn for the whole batch:
    # every row's tokens, given the seed, are those of the loop that keeps every row
    model, tok = lm
    ids, mask = prompts(tok, ["a", "bb", "ccc", "dddd"] * 4)
    sampling = SamplingOptions(30, temperature=0.9, top_p=0.95)
    hook = ragged_eos(model, tok.eos_token_id)
    try:
        runs = []
        for engine in (HFRollout(), HFRollout(**options)):
            torch.manual_seed(3)
            runs.append(engine.bind(model, tok.eos_token_id, tok.pad_token_id).generate(
                ids, mask, sampling))  # fmt: skip
    finally:
        hook.remove()
    (a, b) = runs
    ends = a.response_mask.sum(1)
    assert len(set(ends.tolist())) > 3  # rows ended at many different steps: compaction ran
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.response_mask, b.response_mask)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)


def test_compile_decode_falls_back_to_eager_on_cpu_with_the_reason_logged(lm, one_thread, caplog):
    model, tok = lm
    ids, mask = prompts(tok)
    greedy = SamplingOptions(6, temperature=0.0)
    engine = HFRollout(compile_decode=True).bind(model, tok.eos_token_id, tok.pad_token_id)
    with caplog.at_level("WARNING", logger="lightning_rlhf.rollout.hf"):
        out = engine.generate(ids, mask, greedy)
    assert "CUDA graphs need a CUDA device, the policy is on cpu" in caplog.text
    assert "cpu" in engine.compile_fallback
    expected = generate(model, ids, mask, greedy, tok.eos_token_id, tok.pad_token_id)
    assert torch.equal(out.response_ids, expected.response_ids)


def test_the_compiled_decode_step_draws_what_the_eager_loop_draws(lm, one_thread):
    # the CUDA path's loop (StaticCache, a torch.compile'd step) run on the CPU: the "eager"
    # backend traces the step as CUDA would, without CUDA graphs or a C++ compile; the second
    # rollout reuses the first one's cache (reset) and prompt widths are padded to 32
    model, tok = lm
    sampling = SamplingOptions(12, temperature=0.0)
    engine = HFRollout(compile_decode=True).bind(model, tok.eos_token_id, tok.pad_token_id)
    step = torch.compile(model, backend="eager", dynamic=False)
    caches = []
    for texts in (["a", "bb", "ccc", "dddd"], ["dddd", "c", "bb", "a a"]):
        ids, mask = prompts(tok, texts)
        with torch.no_grad():
            out = engine._decode(model, ids, mask, sampling, step)
        expected = generate(model, ids, mask, sampling, tok.eos_token_id, tok.pad_token_id)
        assert torch.equal(out.response_ids, expected.response_ids)
        torch.testing.assert_close(out.logprobs, expected.logprobs, atol=1e-5, rtol=1e-5)
        caches.append(engine._cache[1])
    assert caches[0] is caches[1]


@pytest.mark.parametrize("cache", ["preallocated", "static"])
def test_under_autocast_the_cache_keeps_the_autocast_dtype_and_rounds_alike(lm, one_thread, cache):
    # fp32 weights under bf16 autocast (precision: bf16-mixed): attention casts keys and values
    # to bf16 anyway, so a cache stored in bf16 draws what transformers' fp32 dynamic cache does
    model, tok = lm
    ids, mask = prompts(tok, ["a", "bb", "ccc", "dddd"])
    sampling = SamplingOptions(10, temperature=0.0)
    runs = []
    for kind in ("dynamic", cache):
        engine = HFRollout(cache=kind).bind(model, tok.eos_token_id, tok.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append(engine.generate(ids, mask, sampling))
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=0, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        made = make_cache(model, cache, 2, 8, torch.float32, torch.device("cpu"))
        if cache == "preallocated":
            layer = made.layers[0]
            layer.update(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4, dtype=torch.bfloat16))
            assert layer._k.dtype == layer._v.dtype == torch.bfloat16
        else:
            assert made.layers[0].keys.dtype == torch.bfloat16


def test_packed_cpu_linears_compute_the_linear_and_are_undone_after(lm, one_thread):
    from lightning_rlhf.rollout.cpu_linear import can_pack, packed_linears

    model, _ = lm
    if can_pack(model) is not None:
        pytest.skip(can_pack(model))
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    wrapped = linears[0]
    wrapped.forward = wrapped.forward  # as accelerate's hooks do: such a layer is left alone
    x = torch.randn(3, 5, linears[1].in_features)
    with torch.no_grad(), packed_linears(model, rows=3) as n:
        assert n == len(linears) - 1
        assert "forward" in linears[1].__dict__
        torch.testing.assert_close(linears[1](x), torch.nn.functional.linear(x, linears[1].weight))
    del wrapped.forward
    assert not any("forward" in m.__dict__ for m in linears)


def test_packed_and_blas_linears_draw_the_same_responses(lm, one_thread, monkeypatch):
    from lightning_rlhf.rollout import cpu_linear

    model, tok = lm
    if cpu_linear.can_pack(model) is not None:
        pytest.skip(cpu_linear.can_pack(model))
    calls = []  # the packed layers' calls: the default engine samples through them
    real = cpu_linear._linear
    monkeypatch.setattr(cpu_linear, "_linear", lambda w, b, x: calls.append(1) or real(w, b, x))
    ids, mask = prompts(tok, ["a", "bb", "ccc", "dddd"])
    runs, counts = [], []
    for pack in (True, False):
        torch.manual_seed(5)
        calls.clear()
        engine = HFRollout(pack_cpu_weights=pack).bind(model, tok.eos_token_id, tok.pad_token_id)
        runs.append(engine.generate(ids, mask, SamplingOptions(12, temperature=0.8)))
        counts.append(len(calls))
    assert counts[0] > 0 and counts[1] == 0
    assert not any("forward" in m.__dict__ for m in model.modules())  # undone after the rollout
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-5, rtol=1e-5)


def test_no_packing_under_cpu_autocast(lm):
    from lightning_rlhf.rollout.cpu_linear import can_pack

    model, _ = lm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in can_pack(model)


def test_an_unbound_engine_says_how_to_bind_it():
    with pytest.raises(RuntimeError, match="bind"):
        HFRollout().generate(
            torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2), SamplingOptions()
        )


def test_rollout_metrics_by_hand():
    eos = 1
    ids = torch.tensor([[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0], [5, 6, 7, 1]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]])
    m = rollout_metrics(Generation(ids, mask, torch.zeros(4, 4)), 0.5, 4, eos)
    assert m["rollout/tokens"].item() == 2 + 4 + 1 + 4
    assert m["rollout/tokens_per_s"].item() == 22.0
    assert m["rollout/response_length_mean"].item() == 11 / 4
    assert m["rollout/response_length_max"].item() == 4
    assert m["rollout/truncated"].item() == 0.25  # row 1 only: row 3 ended with EOS at the limit
