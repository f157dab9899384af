"""Unit tests for lightning_rlhf.advantages, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.advantages import (
    GAE,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    GroupRelative,
    LeaveOneOut,
    gae,
    group_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    leave_one_out_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
    penalized_rewards,
    zero_spread,
)

ATOL = 1e-6


def close(actual: torch.Tensor, expected: list | float) -> None:
    expected_t = torch.tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected_t, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# masked statistics
# ---------------------------------------------------------------------------------------------

X = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, -50.0, 7.0, 9.0]])
M = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]])  # valid: 1, 2, 3, 5, 7, 9


def test_masked_mean_all_and_dim() -> None:
    close(masked_mean(X, M), 27.0 / 6)
    close(masked_mean(X, M.bool(), dim=1), [2.0, 7.0])
    close(masked_mean(X, M.float(), dim=0), [3.0, 2.0, 5.0, 9.0])


def test_masked_var_biased_and_unbiased() -> None:
    mean = 27.0 / 6
    sq = sum((v - mean) ** 2 for v in [1, 2, 3, 5, 7, 9])
    close(masked_var(X, M, unbiased=False), sq / 6)
    close(masked_var(X, M, unbiased=True), sq / 5)


def test_masked_var_single_element_has_no_bessel() -> None:
    mask = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]])
    assert masked_var(X, mask, unbiased=True).item() == 0.0


def test_masked_whiten() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, unbiased var ((1 + 0 + 1) / 2) = 1
    scale = 1.0 / math.sqrt(1.0 + 1e-8)
    close(masked_whiten(x, mask), [[-scale, 0.0, scale, 0.0]])
    close(masked_whiten(x, mask, shift_mean=False), [[2 - scale, 2.0, 2 + scale, 0.0]])


def test_masked_stats_empty_mask_no_nan() -> None:
    mask = torch.zeros_like(X)
    assert masked_mean(X, mask).item() == 0.0
    assert masked_var(X, mask).item() == 0.0
    assert torch.equal(masked_whiten(X, mask), torch.zeros_like(X))
    assert torch.equal(masked_mean(X, mask, dim=1), torch.zeros(2))


def test_masked_stats_ignore_nan_and_inf_at_masked_positions() -> None:
    # the valid values of X, with NaN, inf and -inf where the mask is 0
    poisoned = X.clone()
    poisoned[0, 3], poisoned[1, 1] = float("nan"), float("inf")
    close(masked_mean(poisoned, M), 27.0 / 6)
    close(masked_mean(poisoned, M, dim=1), [2.0, 7.0])
    torch.testing.assert_close(masked_var(poisoned, M), masked_var(X, M))
    torch.testing.assert_close(masked_whiten(poisoned, M), masked_whiten(X, M))
    rewards, kl = penalized_rewards(
        torch.tensor([1.0, 2.0]), poisoned, torch.zeros_like(X), M, beta=0.5
    )
    assert torch.isfinite(rewards).all() and torch.isfinite(kl).all()
    adv, ret = gae(poisoned, poisoned, M, gamma=1.0, lam=1.0)
    exp_adv, exp_ret = gae(X, X, M, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, exp_adv)
    torch.testing.assert_close(ret, exp_ret)


def test_whiten_of_identical_values_is_exactly_zero() -> None:
    x = torch.full((2, 4), 12.7)
    mask = torch.ones(2, 4)
    assert torch.equal(masked_whiten(x, mask), torch.zeros(2, 4))
    assert torch.equal(masked_whiten(x, mask, shift_mean=False), x)


# ---------------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------------


def test_kl_estimators_known_values() -> None:
    # token 0: pi = 0.5, pi_ref = 0.25 -> r = 0.5; token 1: pi = 0.25, pi_ref = 0.5 -> r = 2
    logp = torch.tensor([math.log(0.5), math.log(0.25)])
    ref = torch.tensor([math.log(0.25), math.log(0.5)])
    ln2 = math.log(2.0)
    close(kl_k1(logp, ref), [ln2, -ln2])
    close(kl_k2(logp, ref), [0.5 * ln2**2, 0.5 * ln2**2])
    close(kl_k3(logp, ref), [(0.5 - 1) + ln2, (2 - 1) - ln2])
    assert KL_ESTIMATORS["k1"] is kl_k1 and KL_ESTIMATORS["k2"] is kl_k2
    assert KL_ESTIMATORS["k3"] is kl_k3 and len(KL_ESTIMATORS) == 3


def test_k3_nonnegative_and_zero_when_equal() -> None:
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(1000, generator=g) * 3
    ref = torch.randn(1000, generator=g) * 3
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k2(logp, ref) >= 0).all()
    assert torch.equal(kl_k3(logp, logp), torch.zeros(1000))


def test_k1_k3_unbiased_k2_biased() -> None:
    # exact expectation under pi of each estimator vs the true KL(pi || pi_ref)
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    kl = (p * (p / q).log()).sum()
    for name in ("k1", "k3"):
        expectation = (p * KL_ESTIMATORS[name](p.log(), q.log())).sum()
        torch.testing.assert_close(expectation, kl, atol=1e-12, rtol=0)
    assert abs((p * kl_k2(p.log(), q.log())).sum() - kl) > 1e-2


# ---------------------------------------------------------------------------------------------
# penalized rewards
# ---------------------------------------------------------------------------------------------


def test_penalized_rewards_left_right_hole_and_empty_rows() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0, -4.0]]).repeat(4, 1)
    ref = torch.tensor([[-1.5, -1.0, -3.5, -2.0]]).repeat(4, 1)
    k1 = [0.5, -1.0, 0.5, -2.0]
    mask = torch.tensor(
        [
            [1, 1, 1, 0],  # right padded: last valid = 2
            [0, 1, 1, 1],  # left padded: last valid = 3
            [1, 0, 1, 0],  # hole: last valid = 2
            [0, 0, 0, 0],  # empty: no score
        ]
    )
    scores = torch.tensor([10.0, 20.0, 30.0, 40.0])
    beta = 0.1
    rewards, kl = penalized_rewards(scores, logp, ref, mask, beta=beta)
    expected_kl = [[k * m for k, m in zip(k1, row, strict=True)] for row in mask.tolist()]
    close(kl, expected_kl)
    expected = [[-beta * k for k in row] for row in expected_kl]
    expected[0][2] += 10.0
    expected[1][3] += 20.0
    expected[2][2] += 30.0
    close(rewards, expected)


def test_penalized_rewards_estimator_and_error() -> None:
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    mask = torch.tensor([[True, True]])
    rewards, kl = penalized_rewards(torch.tensor([1.0]), logp, ref, mask, 0.5, estimator="k3")
    ln2 = math.log(2.0)
    close(kl, [[ln2 - 0.5, 1 - ln2]])
    close(rewards, [[-0.5 * (ln2 - 0.5), 1.0 - 0.5 * (1 - ln2)]])
    with pytest.raises(ValueError, match="estimator must be one of"):
        penalized_rewards(torch.tensor([1.0]), logp, ref, mask, 0.5, estimator="k4")


# ---------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------

GAMMA, LAM = 0.9, 0.8
GL = GAMMA * LAM


def test_gae_sparse_terminal_reward() -> None:
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.zeros(1, 4)
    adv, ret = gae(rewards, values, torch.ones(1, 4), GAMMA, LAM)
    close(adv, [[GL**3, GL**2, GL, 1.0]])
    close(ret, [[GL**3, GL**2, GL, 1.0]])


R4 = [0.5, -1.0, 2.0, 1.5]
V4 = [1.0, 0.5, -0.5, 2.0]
# deltas with the value after the last token = 0 (terminal)
D4 = [
    R4[0] + GAMMA * V4[1] - V4[0],
    R4[1] + GAMMA * V4[2] - V4[1],
    R4[2] + GAMMA * V4[3] - V4[2],
    R4[3] - V4[3],
]
A4 = [
    D4[0] + GL * D4[1] + GL**2 * D4[2] + GL**3 * D4[3],
    D4[1] + GL * D4[2] + GL**2 * D4[3],
    D4[2] + GL * D4[3],
    D4[3],
]


def test_gae_four_steps_with_values() -> None:
    adv, ret = gae(torch.tensor([R4]), torch.tensor([V4]), torch.ones(1, 4), GAMMA, LAM)
    close(adv, [A4])
    close(ret, [[a + v for a, v in zip(A4, V4, strict=True)]])


# three valid steps r = R4[:3], v = V4[:3], terminal after the third
D3 = [D4[0], D4[1], R4[2] - V4[2]]
A3 = [D3[0] + GL * D3[1] + GL**2 * D3[2], D3[1] + GL * D3[2], D3[2]]
RET3 = [a + v for a, v in zip(A3, V4[:3], strict=True)]


def test_gae_right_padding_does_not_leak() -> None:
    rewards = torch.tensor([R4[:3] + [100.0, -7.0]])
    values = torch.tensor([V4[:3] + [50.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, GAMMA, LAM)
    close(adv, [A3 + [0.0, 0.0]])
    close(ret, [RET3 + [0.0, 0.0]])


def test_gae_left_padding_and_batch() -> None:
    rewards = torch.tensor([[9.0, 9.0] + R4[:3], R4[:3] + [9.0, 9.0]])
    values = torch.tensor([[-4.0, 4.0] + V4[:3], V4[:3] + [4.0, -4.0]])
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    adv, ret = gae(rewards, values, mask, GAMMA, LAM)
    close(adv, [[0.0, 0.0] + A3, A3 + [0.0, 0.0]])
    close(ret, [[0.0, 0.0] + RET3, RET3 + [0.0, 0.0]])


def test_gae_outputs_detached() -> None:
    values = torch.tensor([V4], requires_grad=True)
    adv, ret = gae(torch.tensor([R4]), values, torch.ones(1, 4), GAMMA, LAM)
    assert not adv.requires_grad and not ret.requires_grad


# ---------------------------------------------------------------------------------------------
# group baselines
# ---------------------------------------------------------------------------------------------


def test_group_advantages_population_std() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    std = math.sqrt(2.0 / 3.0)  # population std of (1, 2, 3); sample std would be 1
    eps = 1e-6
    close(
        group_advantages(scores, 3),
        [-1 / (std + eps), 0.0, 1 / (std + eps), 0.0, 0.0, 0.0],
    )
    close(group_advantages(scores, 3, normalize_std=False), [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    # groups of 2: (0, 2) has population std 1, (5, 1) has 2
    pairs = torch.tensor([0.0, 2.0, 5.0, 1.0])
    close(group_advantages(pairs, 2, eps=0.5), [-2 / 3, 2 / 3, 0.8, -0.8])


def test_identical_scores_have_exactly_zero_advantage() -> None:
    # float32 12.7 has no exact mean in float32 arithmetic: the residue over std + eps was +0.488
    for value, g in [(12.7, 8), (0.3, 7), (-3.1e4, 4)]:
        scores = torch.full((2 * g,), value)
        assert torch.equal(group_advantages(scores, g), torch.zeros(2 * g))
        assert torch.equal(group_advantages(scores, g, normalize_std=False), torch.zeros(2 * g))
        assert torch.equal(leave_one_out_advantages(scores, g), torch.zeros(2 * g))
    rewards = torch.zeros(8, 3)
    rewards[:, 2] = 12.7
    for estimator in (GroupRelative(), LeaveOneOut()):
        adv, _ = estimator(rewards, torch.zeros(8, 3), torch.ones(8, 3), 8)
        assert torch.equal(adv, torch.zeros(8, 3))


def test_zero_spread_tolerance_is_a_few_ulps() -> None:
    # float32 eps = 2**-23: 2 * eps * 1e6 = 0.238; a real difference of 1 at 1e6 stays one
    close(group_advantages(torch.tensor([1e6, 1e6 + 1]), 2), [-0.5 / (0.5 + 1e-6), 0.5 / 0.500001])
    big = torch.tensor([[1e6, 1e6 + 1]])
    assert not zero_spread(torch.tensor([[0.5]]), big, dim=1).item()
    assert zero_spread(torch.tensor([[0.2]]), big, dim=1).item()
    assert zero_spread(torch.tensor(0.0), torch.zeros(3)).item()


def test_leave_one_out_advantages() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    close(leave_one_out_advantages(scores, 3), [1 - 2.5, 2 - 2.0, 3 - 1.5, -3.0, -3.0, 6.0])
    close(leave_one_out_advantages(torch.tensor([4.0, 1.0]), 2), [3.0, -3.0])


# per-token rewards as penalized_rewards writes them: the score at the last valid token
EST_REWARDS = torch.tensor([[0.0, -0.1, 1.0], [0.3, 0.0, 9.0], [2.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
EST_MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]])
# returns (masked sums): 0.9, 0.3 | 2.0, 2.0  -> groups of 2


def test_group_relative_estimator_broadcasts_the_group_advantage() -> None:
    adv, returns = GroupRelative()(EST_REWARDS, torch.zeros(4, 3), EST_MASK, 2)
    a = 0.3 / (0.3 + 1e-6)  # (0.9 - 0.6) / population std 0.3
    close(adv, [[a, a, a], [-a, -a, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    close(returns, [[0.9] * 3, [0.3, 0.3, 0.0], [2.0] * 3, [2.0] * 3])
    adv, _ = GroupRelative(scale_by_std=False)(EST_REWARDS, torch.zeros(4, 3), EST_MASK, 2)
    close(adv, [[0.3] * 3, [-0.3, -0.3, 0.0], [0.0] * 3, [0.0] * 3])
    assert not GroupRelative.needs_critic and GroupRelative.min_samples_per_prompt == 2


def test_leave_one_out_estimator() -> None:
    adv, _ = LeaveOneOut()(EST_REWARDS, torch.zeros(4, 3), EST_MASK, 2)
    close(adv, [[0.6] * 3, [-0.6, -0.6, 0.0], [0.0] * 3, [0.0] * 3])  # 0.9 - 0.3, 0.3 - 0.9


def test_gae_estimator_is_gae_with_its_options() -> None:
    values = torch.tensor([[0.5, 0.2, 0.1], [0.4, 0.3, 0.0], [0.0] * 3, [1.0] * 3])
    adv, ret = GAE(gamma=0.9, lam=0.8)(EST_REWARDS, values, EST_MASK, 2)
    exp_adv, exp_ret = gae(EST_REWARDS, values, EST_MASK, 0.9, 0.8)
    torch.testing.assert_close(adv, exp_adv)
    torch.testing.assert_close(ret, exp_ret)
    # last row by hand, gamma 0.9, lam 0.8: deltas 1 + 0.9 - 1, 1 + 0.9 - 1, 0 - 1
    d = [0.9, 0.9, -1.0]
    a2 = d[2]
    a1 = d[1] + 0.72 * a2
    a0 = d[0] + 0.72 * a1
    close(adv[3], [a0, a1, a2])
    assert GAE.needs_critic
    with pytest.raises(ValueError, match="gamma and lam must be in"):
        GAE(gamma=1.5)
    with pytest.raises(ValueError, match="gamma and lam must be in"):
        GAE(lam=-0.1)


def test_group_errors() -> None:
    with pytest.raises(ValueError, match="not divisible by group_size 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="not divisible by group_size 4"):
        leave_one_out_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        leave_one_out_advantages(torch.zeros(6), 1)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        group_advantages(torch.zeros(6), 0)


# ---------------------------------------------------------------------------------------------
# KL controllers
# ---------------------------------------------------------------------------------------------


def test_fixed_controller_unchanged() -> None:
    ctl = FixedKLController(beta=0.2)
    ctl.update(current_kl=100.0, n_steps=1000)
    assert ctl.beta == 0.2
    assert FixedKLController().beta == 0.05


def test_adaptive_controller_updates() -> None:
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=6.6, n_steps=100)  # error 0.1, unclipped
    assert ctl.beta == pytest.approx(0.1 * (1 + 0.1 * 100 / 10000), rel=1e-12)
    ctl.update(current_kl=60.0, n_steps=200)  # error 9 clipped to 0.2
    assert ctl.beta == pytest.approx(0.1 * 1.001 * (1 + 0.2 * 200 / 10000), rel=1e-12)
    ctl = AdaptiveKLController()
    ctl.update(current_kl=0.0, n_steps=500)  # error -1 clipped to -0.2
    assert ctl.beta == pytest.approx(0.1 * (1 - 0.2 * 500 / 10000), rel=1e-12)


def test_controller_state_dict_round_trip() -> None:
    ctl = AdaptiveKLController(init_beta=0.3, target=2.0, horizon=100)
    ctl.update(current_kl=3.0, n_steps=10)
    restored = AdaptiveKLController(init_beta=0.3, target=2.0, horizon=100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.beta == ctl.beta != 0.3
    fixed = FixedKLController(0.5)
    fixed_restored = FixedKLController()
    fixed_restored.load_state_dict(fixed.state_dict())
    assert fixed_restored.beta == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"init_beta": -0.1}, "init_beta"),
        ({"target": 0.0}, "target"),
        ({"horizon": 0}, "horizon"),
    ],
)
def test_adaptive_controller_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdaptiveKLController(**kwargs)


def test_fixed_controller_validation() -> None:
    with pytest.raises(ValueError, match="beta must be"):
        FixedKLController(beta=-1.0)
