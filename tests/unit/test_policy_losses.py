"""The policy-loss components and their maths (policy_losses.py), against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.policy_losses import (
    GSPO,
    ClippedSurrogate,
    aggregate_token_losses,
    clipped_surrogate_losses,
    gspo_losses,
    ppo_policy_loss,
)

ATOL = 1e-6

# two micro-batches of one minibatch: 3 rows, 6 valid tokens; a NaN sits at a padded position
LOSSES = [
    torch.tensor([[1.0, 2.0, float("nan")], [3.0, 0.0, 0.0]]),
    torch.tensor([[4.0, 4.0, 4.0]]),
]
MASKS = [torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), torch.ones(1, 3)]


@pytest.mark.parametrize(
    "mode, shares",
    [
        # (1 + 2 + 3) / 3 tokens x 2 / 3 rows; 4 x 1 / 3
        ("micro_batch_token_mean", [4 / 3, 4 / 3]),
        # (1 + 2 + 3) / 6; 12 / 6: the minibatch's token mean is 18 / 6 = 3
        ("token_mean", [1.0, 2.0]),
        # (1.5 + 3) / 3 rows; 4 / 3
        ("seq_mean_token_mean", [1.5, 4 / 3]),
        # (3 + 3) / 3 rows; 12 / 3
        ("seq_mean_token_sum", [2.0, 4.0]),
    ],
)
def test_aggregations_split_the_minibatch_loss_over_its_micro_batches(mode, shares):
    tokens = torch.tensor(6.0)
    # today's mode goes through masked_mean, which multiplies by the mask: no NaN at its padding
    default = mode == "micro_batch_token_mean"
    losses = [LOSSES[0].nan_to_num(0.0), LOSSES[1]] if default else LOSSES
    got = [aggregate_token_losses(x, m, mode, 3, tokens) for x, m in zip(losses, MASKS)]
    for g, expected in zip(got, shares):
        assert g.item() == pytest.approx(expected, abs=ATOL)
    # the shares add up to the mode's loss of the whole minibatch in one piece (today's default
    # does not: its 8/3 is not the token mean 3, since the micro-batches' token counts differ)
    whole = aggregate_token_losses(
        torch.cat([losses[0], losses[1]]), torch.cat(MASKS), mode, 3, tokens
    )
    if mode != "micro_batch_token_mean":
        assert sum(got).item() == pytest.approx(whole.item(), abs=ATOL)
    else:
        assert whole.item() == pytest.approx(3.0, abs=ATOL) and sum(got).item() != pytest.approx(
            3.0
        )


def test_unknown_aggregation_is_refused_by_name():
    with pytest.raises(ValueError, match="policy_loss.loss_aggregation must be one of"):
        ClippedSurrogate(loss_aggregation="token-mean")


def test_default_clipped_surrogate_is_ppo_policy_loss():
    torch.manual_seed(0)
    logprobs, old = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5)
    adv, mask = torch.randn(4, 5), (torch.rand(4, 5) > 0.3).float()
    loss, stats = ClippedSurrogate()(logprobs, old, adv, mask, 4, mask.sum())
    expected, expected_stats = ppo_policy_loss(logprobs, old, adv, mask, clip_range=0.2)
    torch.testing.assert_close(loss, expected, atol=1e-7, rtol=1e-6)
    assert stats.keys() == expected_stats.keys()


def test_dual_clip_caps_the_loss_of_a_negative_advantage():
    # ratios e^1.5 (A = -1), 1 (A = +1), 0.5 (A = -1); eps 0.2, c 3
    old = torch.zeros(1, 3)
    logprobs = torch.tensor([[1.5, 0.0, math.log(0.5)]], requires_grad=True)
    adv, mask = torch.tensor([[-1.0, 1.0, -1.0]]), torch.ones(1, 3)
    plain, _ = clipped_surrogate_losses(logprobs, old, adv, mask, 0.2)
    assert plain.detach().tolist()[0] == pytest.approx([math.exp(1.5), -1.0, 0.8], abs=ATOL)
    losses, stats = clipped_surrogate_losses(logprobs, old, adv, mask, 0.2, clip_ratio_c=3.0)
    # min(e^1.5, -A·c = 3) = 3; the others as before
    assert losses.detach().tolist()[0] == pytest.approx([3.0, -1.0, 0.8], abs=ATOL)
    assert stats["dual_clipfrac"].item() == pytest.approx(1 / 3, abs=ATOL)
    loss, _ = ppo_policy_loss(logprobs, old, adv, mask, 0.2, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx((3.0 - 1.0 + 0.8) / 3, abs=ATOL)
    loss.backward()
    # capped and clipped tokens send no gradient; d(-A·r)/dlogp = -A·r = -1 for the middle one
    assert logprobs.grad.tolist()[0] == pytest.approx([0.0, -1 / 3, 0.0], abs=ATOL)


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_dual_clip_needs_c_above_one(c):
    with pytest.raises(ValueError, match="policy_loss.clip_ratio_c must be > 1"):
        ClippedSurrogate(clip_ratio_c=c)


@pytest.mark.parametrize("eps", [0.0, -0.1])
def test_clip_range_is_validated_naming_the_field(eps):
    with pytest.raises(ValueError, match=r"policy_loss\.clip_range must be > 0"):
        ClippedSurrogate(clip_range=eps)


def gspo_case():
    """Row 0: log-ratios 0.1, 0.3 (and a pad), A = +1; row 1: -0.2, 0, -0.1, A = -2."""
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    log_ratio = torch.tensor([[0.1, 0.3, 5.0], [-0.2, 0.0, -0.1]])  # the 5.0 is padding
    logprobs = (old + log_ratio).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    return logprobs, old, adv, mask


def test_gspo_clips_one_length_normalised_ratio_per_sequence():
    logprobs, old, adv, mask = gspo_case()
    loss, stats = GSPO(clip_low=0.1, clip_high=0.2)(logprobs, old, adv, mask, 2, mask.sum())
    s0, s1 = math.exp(0.2), math.exp(-0.1)  # exp of each row's mean log-ratio
    # row 0: max(-s0, -1.2) = -1.2 (clipped at 1 + 0.2); row 1: max(2·s1, 2·clip(s1)) = 2·s1
    assert loss.item() == pytest.approx((-1.2 + 2 * s1) / 2, abs=ATOL)
    assert stats["clipfrac"].item() == pytest.approx(0.5, abs=ATOL)
    assert stats["ratio_mean"].item() == pytest.approx((s0 + s1) / 2, abs=ATOL)
    loss.backward()
    # row 0 clipped: no gradient; row 1: d(2·s1)/dlogp_t / 2 rows = s1 / 3 at each of 3 tokens
    expected = [[0.0, 0.0, 0.0], [s1 / 3] * 3]
    torch.testing.assert_close(logprobs.grad, torch.tensor(expected), atol=ATOL, rtol=0)


def test_gspo_token_form_has_the_gradient_of_the_sequence_objective():
    torch.manual_seed(0)
    old = torch.randn(3, 4)
    logprobs = (old + 0.01 * torch.randn(3, 4)).requires_grad_(True)
    adv = torch.randn(3, 1).expand(3, 4)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    losses, _ = gspo_losses(logprobs, old, adv, mask, 1.0, 1.0)  # wide: nothing clipped
    loss = aggregate_token_losses(losses, mask, "seq_mean_token_mean", 3, mask.sum())
    (grad,) = torch.autograd.grad(loss, logprobs)
    direct = logprobs.detach().clone().requires_grad_(True)
    s = torch.exp(((direct - old) * mask).sum(1) / mask.sum(1))  # (B,)
    (-(adv[:, 0] * s).mean()).backward()
    torch.testing.assert_close(grad, direct.grad, atol=1e-6, rtol=1e-5)
    assert loss.item() == pytest.approx(-(adv[:, 0] * s.detach()).mean().item(), abs=ATOL)
