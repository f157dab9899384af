"""Unit tests for lightning_rlhf.losses, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.losses import (
    bradley_terry_loss,
    completion_nll,
    entropy_from_logits,
    ppo_policy_loss,
    token_logprobs,
    value_loss,
)

ATOL = 1e-6


def close(actual: torch.Tensor, expected: list | float, atol: float = ATOL) -> None:
    expected_t = torch.tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected_t, atol=atol, rtol=0)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def random_logits(
    dtype: torch.dtype = torch.float32, scale: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 5, 11, generator=g) * scale).to(dtype)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, 1] = -100
    labels[1, 4] = -100
    return logits, labels


def reference_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logps = torch.log_softmax(logits.float(), dim=-1)
    logps = logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logps.masked_fill(labels == -100, 0.0)


# ---------------------------------------------------------------------------------------------
# token_logprobs / entropy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 1024])
def test_token_logprobs_matches_log_softmax(chunk_size: int) -> None:
    logits, labels = random_logits()
    out = token_logprobs(logits, labels, chunk_size=chunk_size)
    assert out.shape == (2, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference_logprobs(logits, labels), atol=ATOL, rtol=0)
    assert out[0, 1].item() == 0.0 and out[1, 4].item() == 0.0
    assert (out.masked_select(labels != -100) < 0).all()


def test_token_logprobs_hand_value() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    expected = 0.0 - math.log(math.exp(2) + 1 + math.exp(-1))
    close(token_logprobs(logits, torch.tensor([[1]])), [[expected]])


def test_token_logprobs_bf16() -> None:
    logits, labels = random_logits(torch.bfloat16)
    out = token_logprobs(logits, labels, chunk_size=3)
    assert out.dtype == torch.float32
    # upcast per chunk: same as float32 math on the bf16 values
    torch.testing.assert_close(out, reference_logprobs(logits, labels), atol=1e-5, rtol=0)
    # and close to the float32 logits it was rounded from (bf16 rounding of ~3-sigma logits)
    logits32, _ = random_logits()
    torch.testing.assert_close(out, reference_logprobs(logits32, labels), atol=0.1, rtol=0)


def test_token_logprobs_gradient_matches_reference() -> None:
    logits, labels = random_logits()
    logits.requires_grad_(True)
    token_logprobs(logits, labels, chunk_size=3).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    reference_logprobs(logits, labels).sum().backward()
    torch.testing.assert_close(ours, logits.grad, atol=ATOL, rtol=0)
    assert ours[0, 1].abs().max().item() == 0.0  # ignored position gets no gradient


def test_chunk_size_validation() -> None:
    logits, labels = random_logits()
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        token_logprobs(logits, labels, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        entropy_from_logits(logits, chunk_size=0)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_entropy_matches_direct_formula(chunk_size: int) -> None:
    logits, _ = random_logits(scale=1.0)  # unit scale keeps float32 rounding well below 1e-6
    logp = torch.log_softmax(logits.double(), dim=-1)
    expected = -(logp.exp() * logp).sum(-1).float()
    out = entropy_from_logits(logits, chunk_size=chunk_size)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_entropy_known_values() -> None:
    uniform = torch.zeros(1, 1, 7)
    close(entropy_from_logits(uniform), [[math.log(7)]])
    # two-way distribution p = sigmoid(1): H = -p log p - (1 - p) log(1 - p)
    p = 1 / (1 + math.exp(-1))
    h = -p * math.log(p) - (1 - p) * math.log(1 - p)
    close(entropy_from_logits(torch.tensor([[[1.0, 0.0]]]).to(torch.bfloat16)), [[h]])


def test_entropy_of_top_k_filtered_logits_is_finite() -> None:
    # top-2 of 4 logits: the rest are -inf, so the row is the two-way distribution sigmoid(1)
    p = 1 / (1 + math.exp(-1))
    h = -p * math.log(p) - (1 - p) * math.log(1 - p)
    inf = float("-inf")
    logits = torch.tensor([[[1.0, inf, 0.0, inf], [0.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    out = entropy_from_logits(logits)
    close(out, [[h, math.log(4)]])
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------------------------------------
# completion_nll
# ---------------------------------------------------------------------------------------------


def test_completion_nll_hand_values() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 5.0], [1.0, 0.0]]])
    labels = torch.tensor([[0, -100, 1]])
    loss, stats = completion_nll(logits, labels)
    lp0 = 2.0 - math.log(math.exp(2) + 1)
    lp2 = 0.0 - math.log(math.e + 1)
    close(loss, -(lp0 + lp2) / 2)
    close(stats["nll"], -(lp0 + lp2) / 2)
    assert stats["tokens"].item() == 2.0
    assert stats["token_accuracy"].item() == 0.5  # position 0 right, 2 wrong, 1 ignored
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_completion_nll_custom_ignore_index() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 5.0]]])
    loss, stats = completion_nll(logits, torch.tensor([[0, 7]]), ignore_index=7)
    close(loss, -(2.0 - math.log(math.exp(2) + 1)))
    assert stats["tokens"].item() == 1.0 and stats["token_accuracy"].item() == 1.0
    # ignore_index is a real class that the ignored position predicts: still not counted
    logits = torch.tensor([[[2.0, 0.0], [0.0, 5.0], [3.0, 0.0]]])
    loss, stats = completion_nll(logits, torch.tensor([[1, 1, 0]]), ignore_index=1)
    close(loss, -(3.0 - math.log(math.exp(3) + 1)))
    assert stats["tokens"].item() == 1.0 and stats["token_accuracy"].item() == 1.0


def test_completion_nll_gradient() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 5.0], [1.0, 0.0]]], requires_grad=True)
    loss, _ = completion_nll(logits, torch.tensor([[0, -100, 1]]))
    loss.backward()
    # d/dz of mean CE = (softmax(z) - onehot(y)) / n_tokens at counted positions, 0 elsewhere
    p0 = math.exp(2) / (math.exp(2) + 1)
    p2 = math.e / (math.e + 1)
    close(logits.grad, [[[(p0 - 1) / 2, (1 - p0) / 2], [0.0, 0.0], [p2 / 2, (1 - p2 - 1) / 2]]])


def test_completion_nll_no_counted_tokens() -> None:
    logits = torch.randn(2, 3, 4, requires_grad=True)
    loss, stats = completion_nll(logits, torch.full((2, 3), -100))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert stats["tokens"].item() == 0.0 and stats["token_accuracy"].item() == 0.0


# ---------------------------------------------------------------------------------------------
# Bradley-Terry
# ---------------------------------------------------------------------------------------------

CHOSEN = torch.tensor([2.0, 0.5])
REJECTED = torch.tensor([0.5, 1.0])  # differences 1.5, -0.5


def test_bradley_terry_plain() -> None:
    loss, stats = bradley_terry_loss(CHOSEN, REJECTED)
    expected = -(log_sigmoid(1.5) + log_sigmoid(-0.5)) / 2
    close(loss, expected)
    close(stats["bt_loss"], expected)
    assert stats["accuracy"].item() == 0.5
    close(stats["margin"], 0.5)
    close(stats["chosen_reward"], 1.25)
    close(stats["rejected_reward"], 0.75)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_bradley_terry_accuracy_is_strict() -> None:
    chosen = torch.tensor([0.25, 1.0, 0.0, 5.0])
    rejected = torch.tensor([0.0, 1.0, 3.0, 4.0])  # win, tie, loss, win
    _, stats = bradley_terry_loss(chosen, rejected, margin=torch.full((4,), 10.0))
    assert stats["accuracy"].item() == 0.5


def test_bradley_terry_margin_and_centering() -> None:
    margin = torch.tensor([1.0, 0.0])
    loss, stats = bradley_terry_loss(CHOSEN, REJECTED, margin=margin, center_coef=0.01)
    bt = -(log_sigmoid(0.5) + log_sigmoid(-0.5)) / 2
    center = 0.01 * (2.5**2 + 1.5**2) / 2
    close(loss, bt + center)
    close(stats["bt_loss"], bt)
    close(stats["margin"], 0.5)  # raw chosen - rejected, margin not subtracted


def test_bradley_terry_gradient() -> None:
    chosen = CHOSEN.clone().requires_grad_(True)
    loss, _ = bradley_terry_loss(chosen, REJECTED)
    loss.backward()
    # d/dc of -mean(logsigmoid(c - r)) = -(1 - sigmoid(c - r)) / B
    sig = [1 / (1 + math.exp(-d)) for d in (1.5, -0.5)]
    close(chosen.grad, [-(1 - s) / 2 for s in sig])


# ---------------------------------------------------------------------------------------------
# PPO policy loss
# ---------------------------------------------------------------------------------------------

EPS = 0.2
# per token: (advantage, ratio); the last token is masked out and must not count
PPO_CASES = [
    (1.0, 1.5),  # A > 0, ratio above 1 + eps: clipped, term -1.2
    (1.0, 0.5),  # A > 0, ratio below 1 - eps: unclipped, term -0.5
    (-1.0, 1.5),  # A < 0, ratio above 1 + eps: unclipped, term 1.5
    (-1.0, 0.5),  # A < 0, ratio below 1 - eps: clipped, term 0.8
    (2.0, 1.1),  # inside the clip range: term -2.2, not clipped
    (100.0, 3.0),  # masked
]


def ppo_inputs() -> tuple[torch.Tensor, ...]:
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.5, -2.5]])
    log_ratio = torch.tensor([[math.log(r) for _, r in PPO_CASES]])
    logprobs = (old + log_ratio).requires_grad_(True)
    advantages = torch.tensor([[a for a, _ in PPO_CASES]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    return logprobs, old, advantages, mask


def test_ppo_policy_loss_clip_cases() -> None:
    logprobs, old, advantages, mask = ppo_inputs()
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=EPS)
    close(loss, (-1.2 - 0.5 + 1.5 + 0.8 - 2.2) / 5)
    close(stats["policy_loss"], (-1.2 - 0.5 + 1.5 + 0.8 - 2.2) / 5)
    assert stats["clipfrac"].item() == pytest.approx(2 / 5, abs=1e-7)
    close(stats["ratio_mean"], (1.5 + 0.5 + 1.5 + 0.5 + 1.1) / 5)
    logs = [math.log(r) for _, r in PPO_CASES[:5]]
    close(stats["approx_kl"], sum(0.5 * x**2 for x in logs) / 5)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_ppo_policy_loss_gradient() -> None:
    logprobs, old, advantages, mask = ppo_inputs()
    loss, _ = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=EPS)
    loss.backward()
    # unclipped tokens: d(-A * ratio)/d logprob / n = -A * ratio / 5; clipped and masked: 0
    close(logprobs.grad, [[0.0, -0.5 / 5, 1.5 / 5, 0.0, -2.2 / 5, 0.0]])


def test_ppo_policy_loss_on_policy_is_minus_mean_advantage() -> None:
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    adv = torch.tensor([[1.0, -3.0, 0.5]])
    loss, stats = ppo_policy_loss(old.clone(), old, adv, torch.ones(1, 3), clip_range=EPS)
    close(loss, 0.5)
    assert stats["clipfrac"].item() == 0.0 and stats["approx_kl"].item() == 0.0
    loss, _ = ppo_policy_loss(old, old, adv, torch.zeros(1, 3), clip_range=EPS)
    assert loss.item() == 0.0


# ---------------------------------------------------------------------------------------------
# value loss
# ---------------------------------------------------------------------------------------------


def value_inputs() -> tuple[torch.Tensor, ...]:
    values = torch.tensor([[0.5, 0.5, 0.1, 9.0]], requires_grad=True)
    old = torch.zeros(1, 4)
    returns = torch.tensor([[1.0, 0.0, 1.0, -9.0]])
    mask = torch.tensor([[True, True, True, False]])
    return values, old, returns, mask


def test_value_loss_clipped() -> None:
    values, old, returns, mask = value_inputs()
    loss, stats = value_loss(values, old, returns, mask, clip_range=0.2)
    # token 0: v_clip 0.2 -> max(0.25, 0.64) = 0.64 (clipped branch larger)
    # token 1: v_clip 0.2 -> max(0.25, 0.04) = 0.25
    # token 2: inside range -> 0.81 both
    close(loss, 0.5 * (0.64 + 0.25 + 0.81) / 3)
    close(stats["value_loss"], 0.5 * (0.64 + 0.25 + 0.81) / 3)
    assert stats["value_clipfrac"].item() == pytest.approx(1 / 3, abs=1e-7)
    loss.backward()
    # token 0 takes the clipped branch (no gradient); others: (v - R) / 3
    close(values.grad, [[0.0, 0.5 / 3, -0.9 / 3, 0.0]])


def test_value_loss_unclipped() -> None:
    values, old, returns, mask = value_inputs()
    loss, stats = value_loss(values, old, returns, mask, clip_range=None)
    close(loss, 0.5 * (0.25 + 0.25 + 0.81) / 3)
    assert stats["value_clipfrac"].item() == 0.0
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_logprob_mismatch_by_hand():
    from lightning_rlhf.losses import logprob_mismatch

    engine = torch.tensor([[-1.0, -2.0, -0.5], [-0.25, -9.0, 0.0]])
    trainer = torch.tensor([[-1.05, -2.5, -0.5], [-0.3125, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])  # -9 vs -1 is off the mask: not counted
    stats = logprob_mismatch(engine, trainer, mask)
    # |d| on the mask: 0.05, 0.5, 0, 0.0625 -> mean 0.153125, max 0.5; over 0.1: only the 0.5
    torch.testing.assert_close(stats["logprob_diff_mean"], torch.tensor(0.153125))
    torch.testing.assert_close(stats["logprob_diff_max"], torch.tensor(0.5))
    torch.testing.assert_close(stats["logprob_diff_frac"], torch.tensor(0.25))


def test_truncated_importance_weights_by_hand():
    from lightning_rlhf.losses import truncated_importance_weights

    trainer = torch.tensor([[math.log(0.5), math.log(0.9), math.log(0.2)]])
    engine = torch.tensor([[math.log(0.25), math.log(0.9), math.log(0.4)]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # ratios π_old/μ: 2.0, 1.0, 0.5 (off the mask); cap 1.5 -> weights 1.5, 1.0, 0
    weights, stats = truncated_importance_weights(trainer, engine, mask, cap=1.5)
    torch.testing.assert_close(weights, torch.tensor([[1.5, 1.0, 0.0]]))
    torch.testing.assert_close(stats["is_weight_mean"], torch.tensor(1.25))
    torch.testing.assert_close(stats["is_capped_frac"], torch.tensor(0.5))
    assert not weights.requires_grad
    with pytest.raises(ValueError, match="cap"):
        truncated_importance_weights(trainer, engine, mask, cap=0.0)
