"""PPOModule's components: the KL penalty, the critics' shared pieces, and defaults that no two
modules share."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lightning_rlhf.advantages import AdaptiveKLController, FixedKLController, GroupRelative
from lightning_rlhf.critics import ScalarModelCritic, ValueHead, response_states, zero_value_head
from lightning_rlhf.kl import KLPenalty, sequence_kl
from lightning_rlhf.modules.ppo import PPOModule

ATOL = 1e-6
LOGPROBS = torch.tensor([[0.2, 0.1]])
REF = torch.tensor([[0.0, 0.3]])
MASK = torch.ones(1, 2)


def test_kl_in_the_reward_is_minus_beta_kl_per_token_plus_the_score():
    kl = KLPenalty(FixedKLController(0.5), "k1", "reward")
    rewards = kl.rewards(torch.tensor([1.0]), LOGPROBS, REF, MASK)
    # k1 = [0.2, -0.2]: rewards = [-0.5·0.2, +0.5·0.2 + 1]
    torch.testing.assert_close(rewards, torch.tensor([[-0.1, 1.1]]), atol=ATOL, rtol=0)
    assert kl.loss(LOGPROBS, REF, MASK) == (None, {})


def test_kl_in_the_loss_is_beta_times_the_mean_kl_and_not_in_the_reward():
    kl = KLPenalty(FixedKLController(0.5), "k3", "loss")
    rewards = kl.rewards(torch.tensor([1.0]), LOGPROBS, REF, MASK)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, 1.0]]))
    # k3 = (r - 1) - log r with log r = ref - logprobs = -0.2, +0.2
    k3 = [math.expm1(-0.2) + 0.2, math.expm1(0.2) - 0.2]
    loss, stats = kl.loss(LOGPROBS, REF, MASK)
    assert stats["kl_loss"].item() == pytest.approx(sum(k3) / 2, abs=ATOL)
    assert loss.item() == pytest.approx(0.5 * sum(k3) / 2, abs=ATOL)


def test_kl_update_moves_the_adaptive_beta_and_state_round_trips():
    kl = KLPenalty(AdaptiveKLController(init_beta=0.1, target=1.0, horizon=10))
    kl.update(2.0, n_steps=5)  # error clip(2 / 1 - 1) = 0.2: β ·= 1 + 0.2 · 5 / 10
    assert kl.beta == pytest.approx(0.11)
    other = KLPenalty(AdaptiveKLController(init_beta=0.1, target=1.0, horizon=10))
    other.load_state_dict(kl.state_dict())
    assert other.beta == pytest.approx(0.11)


@pytest.mark.parametrize(
    "kwargs, field", [({"estimator": "k4"}, "kl.estimator"), ({"placement": "x"}, "kl.placement")]
)
def test_kl_options_are_refused_by_name(kwargs, field):
    with pytest.raises(ValueError, match=field):
        KLPenalty(**kwargs)


def test_sequence_kl_sums_over_tokens_and_averages_over_rows():
    logprobs, ref = torch.tensor([[0.2, 0.1], [0.5, 9.0]]), torch.tensor([[0.0, 0.3], [0.0, 0.0]])
    kl = sequence_kl(logprobs, ref, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))  # 9.0 is padding
    assert kl["k1"].item() == pytest.approx((0.0 + 0.5) / 2, abs=ATOL)
    assert kl["k2"].item() == pytest.approx((0.02 + 0.02 + 0.125) / 2, abs=ATOL)


def test_response_states_are_the_positions_before_each_response_token():
    x = torch.arange(6).view(1, 6)  # prompt 0..3, response tokens at 4, 5
    assert response_states(x, 2).tolist() == [[3, 4]]
    head = zero_value_head(4)
    assert head(torch.randn(2, 3, 4)).abs().max() == 0


def constant_reward(prompts, responses):
    return torch.zeros(len(responses))


def test_two_modules_built_with_defaults_share_no_component(tiny_model_dir):
    a = PPOModule(tiny_model_dir, reward=constant_reward)
    b = PPOModule(tiny_model_dir, reward=constant_reward)
    for name in ("kl", "advantage", "policy_loss", "value_model"):
        assert getattr(a, name) is not getattr(b, name), name
    assert a.kl.controller is not b.kl.controller
    a.on_load_checkpoint({"kl_controller": {"beta": 0.3}})  # a checkpoint of before or after
    assert a.kl.beta == 0.3 and b.kl.beta == 0.05
    assert isinstance(a.value_model, ScalarModelCritic)  # GAE's default critic, as before
    with pytest.raises(dataclasses.FrozenInstanceError):  # option groups cannot be changed
        a.ppo.ppo_epochs = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.sampling.temperature = 0.5  # type: ignore[misc]


def test_critic_free_estimators_read_no_critic(tiny_model_dir):
    from lightning_rlhf.modules.ppo_options import PPOOptions

    module = PPOModule(
        tiny_model_dir, reward=constant_reward, critic=ValueHead(), advantage=GroupRelative(),
        ppo=PPOOptions(samples_per_prompt=2),
    )  # fmt: skip
    assert module.value_model is None


def test_group_relative_sample_std_divides_by_g_minus_one():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])  # one group of 3 one-token responses
    mask = torch.ones(3, 1)
    population, _ = GroupRelative()(rewards, torch.zeros(3, 1), mask, 3)
    sample, _ = GroupRelative(std="sample")(rewards, torch.zeros(3, 1), mask, 3)
    std_p, std_s = math.sqrt(2 / 3), 1.0  # of (1, 2, 3)
    expected_p = [[-1 / (std_p + 1e-6)], [0.0], [1 / (std_p + 1e-6)]]
    expected_s = [[-1 / (std_s + 1e-6)], [0.0], [1 / (std_s + 1e-6)]]
    torch.testing.assert_close(population, torch.tensor(expected_p), atol=ATOL, rtol=0)
    torch.testing.assert_close(sample, torch.tensor(expected_s), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="advantage.std must be"):
        GroupRelative(std="unbiased")


def test_hyperparameters_of_a_checkpoint_from_before_the_components_are_upgraded():
    """What a PPO checkpoint saved before the components holds (--ckpt_path parses it)."""
    from lightning_rlhf.modules.ppo_options import upgrade_hparams

    old = {
        "_class_path": "lightning_rlhf.PPOModule", "critic_name_or_path": "artifacts/rm",
        "critic_lora": None, "kl_estimator": "k1", "kl_penalty": "reward",
        "log_samples_every_n_steps": 50, "ppo": {"ppo_epochs": 2, "clip_range": 0.2},
    }  # fmt: skip
    assert upgrade_hparams(old) == {
        "_class_path": "lightning_rlhf.PPOModule",
        "log_samples_every_n_iterations": 50,
        "ppo": {"ppo_epochs": 2},
    }
    sft = {"_class_path": "lightning_rlhf.SFTModule", "kl_estimator": "kept"}
    assert upgrade_hparams(sft) is sft  # other modules' are left alone
