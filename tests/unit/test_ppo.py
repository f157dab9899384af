"""The RL stage: reward functions, PPOModule's reference/critic wiring, its checks, and learning.

The maths (KL estimators, GAE, clipped losses) are tested in test_advantages.py and test_losses.py.
"""

import json
import math
import warnings
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger

from lightning_rlhf.advantages import FixedKLController, GroupRelative, LeaveOneOut, kl_k3
from lightning_rlhf.critics import LoraCritic, ScalarModelCritic, ValueHead
from lightning_rlhf.data.collate import pad
from lightning_rlhf.data.prompts import PromptDataModule
from lightning_rlhf.kl import KLPenalty
from lightning_rlhf.losses import token_logprobs
from lightning_rlhf.models import (
    LoraOptions,
    ModelOptions,
    adapter_active,
    export_hf,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    sequence_scores,
)
from lightning_rlhf.modules.ppo import PPOModule, PPOOptions, RewardShaping
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.rewards import (
    RewardAdapter,
    RewardEnsemble,
    RewardFunction,
    RewardModel,
    TaskOracle,
    WeightedSum,
    check_scores,
)
from lightning_rlhf.rollout import SamplingOptions
from lightning_rlhf.types import Sequences

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------- helpers


class MemoryLogger(Logger):
    """Keeps every logged row; sample tables go to ``save_dir``."""

    def __init__(self, save_dir):
        super().__init__()
        self._save_dir = str(save_dir)
        self.rows: list[dict] = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    @property
    def save_dir(self):
        return self._save_dir

    @property
    def log_dir(self):
        return self._save_dir

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append({**metrics, "step": step})

    def series(self, key):
        return [row[key] for row in self.rows if key in row]


class AsciiFraction(RewardFunction):
    """Fraction of the 4 response characters that are ASCII. The untrained byte-level model puts
    about a third of its mass on the 128 ASCII byte ids (of 384): dense, learnable signal."""

    def __init__(self, max_chars=4):
        self.max_chars = max_chars
        self.calls: list[torch.Tensor] = []

    def __call__(self, prompts, responses):
        scores = torch.tensor([sum(c.isascii() for c in r) / self.max_chars for r in responses])
        self.calls.append(scores)
        return scores


class NaNOnCalls(RewardFunction):
    """NaN for every response (or one of them) on the listed calls, 0.5 otherwise."""

    def __init__(self, nan_calls, all_rows=True):
        self.nan_calls, self.all_rows, self.count = set(nan_calls), all_rows, 0

    def __call__(self, prompts, responses):
        self.count += 1
        scores = torch.full((len(responses),), 0.5)
        if self.count in self.nan_calls:
            scores[slice(None) if self.all_rows else 3] = float("nan")
        return scores


def prompt_data(task_dir, tokenizer_dir, batch_size=16, **kwargs):
    return PromptDataModule(
        train_path=str(task_dir / "prompts_train.jsonl"),
        val_path=None,
        val_fraction=0.0,
        tokenizer=tokenizer_dir,
        batch_size=batch_size,
        max_prompt_length=kwargs.pop("max_prompt_length", 32),
        **kwargs,
    )


def ppo_module(model_dir, reward, lr=1e-3, **kwargs):
    defaults = dict(
        critic=ValueHead(),
        optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.0),
        schedule=ScheduleOptions(warmup_steps=0, decay="constant"),
        sampling=SamplingOptions(max_new_tokens=4),
        ppo=PPOOptions(ppo_epochs=2, num_minibatches=2),
        log_samples_every_n_iterations=0,
    )
    return PPOModule(model_dir, reward=reward, **{**defaults, **kwargs})


def trainer(tmp_path, iterations=None, ppo=PPOOptions(ppo_epochs=2, num_minibatches=2), **kwargs):
    if iterations is not None:
        kwargs["max_steps"] = iterations * ppo.ppo_epochs * ppo.num_minibatches
    defaults = dict(
        accelerator="cpu",
        logger=False,
        log_every_n_steps=1,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    return L.Trainer(**{**defaults, **kwargs})


def params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def scalar_dir(tmp_path_factory, tiny_model_dir):
    """A scalar-head model from the tiny LM, exported with reward statistics, as the reward stage
    would write it."""
    torch.manual_seed(0)
    model = load_scalar_model(tiny_model_dir, pad_token_id=0)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # a head that spreads the scores out
    out = tmp_path_factory.mktemp("rm") / "rm"
    stats = {"reward_stats.json": {"mean": 0.25, "std": 2.0}}
    return str(export_hf(model, load_tokenizer(tiny_model_dir), out, extra_json=stats))


# ------------------------------------------------------------------------------- rewards
def test_task_oracle_scores_known_prompts():
    prompts = ["47+38=", "rev cbda=", "cnt b abbcb=", "47+38="]
    responses = ["85", "adbc\nmore", " 3 ", "86"]
    assert TaskOracle()(prompts, responses).tolist() == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="not a prompt of the bundled task suite"):
        TaskOracle()(["hello"], ["x"])


def test_task_oracle_on_other_data_names_the_option_to_turn_it_off():
    with pytest.raises(ValueError, match=r"'Human: hi'.*--model\.oracle null.*model\.reward"):
        TaskOracle()(["47+38=", "Human: hi"], ["85", "hello"])


class _Const(RewardFunction):
    def __init__(self, values):
        self.values, self.device = torch.tensor(values), None

    def __call__(self, prompts, responses):
        return self.values

    def to(self, device):
        self.device = device
        return self


def test_weighted_sum_combines_and_moves_its_parts():
    a, b = _Const([1.0, 0.0]), _Const([2.0, 4.0])
    assert WeightedSum([a, b], [0.5, -1.0])(["p", "q"], ["r", "s"]).tolist() == [-1.5, -4.0]
    assert WeightedSum([a, b])(["p", "q"], ["r", "s"]).tolist() == [3.0, 4.0]
    WeightedSum([a, b]).to("cpu")
    assert a.device == b.device == "cpu"


@pytest.mark.parametrize("weights", [[1.0], [1.0, 2.0, 3.0]])
def test_weighted_sum_needs_one_weight_per_reward(weights):
    with pytest.raises(ValueError, match=rf"2 rewards, {len(weights)} weights"):
        WeightedSum([_Const([1.0]), _Const([1.0])], weights)
    with pytest.raises(ValueError, match="one weight per reward"):
        WeightedSum([], [])


def test_reward_ensemble_penalises_disagreement():
    a, b = _Const([1.0, 3.0]), _Const([3.0, 3.0])
    p, r = ["p", "q"], ["r", "s"]
    ensemble = RewardEnsemble([a, b], disagreement_coef=0.5)
    # mean (2, 3), population std (1, 0): 2 - 0.5 * 1, 3 - 0
    assert ensemble(p, r).tolist() == pytest.approx([1.5, 3.0])
    assert ensemble.stats() == pytest.approx(
        {"disagreement": 0.5, "member_0": 2.0, "member_1": 3.0}
    )
    # weights 3:1 -> w = (0.75, 0.25): mean 1.5, std sqrt(0.75 * 0.25 + 0.25 * 1.5**2)
    weighted = RewardEnsemble([a, b], weights=[3.0, 1.0], disagreement_coef=1.0)
    assert weighted(p, r).tolist() == pytest.approx([1.5 - math.sqrt(0.75), 3.0])
    assert RewardEnsemble([a, b])(p, r).tolist() == pytest.approx([2.0, 3.0])  # plain mean
    with pytest.raises(ValueError, match="disagreement_coef must be >= 0"):
        RewardEnsemble([a, b], disagreement_coef=-1.0)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        RewardEnsemble([a, b], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"reward _Const returned shape \(3,\)"):
        RewardEnsemble([a, _Const([1.0, 2.0, 3.0])])(p, r)  # the faulty member is named


def test_check_scores_names_the_reward():
    source = _Const([0.0])
    assert check_scores([1, 2], 2, source).dtype == torch.float32
    with pytest.raises(ValueError, match=r"reward _Const returned shape \(2, 1\), expected \(2,\)"):
        check_scores(torch.zeros(2, 1), 2, source)
    with pytest.raises(ValueError, match=r"reward _Const returned shape \(3,\), expected \(2,\)"):
        check_scores(torch.zeros(3), 2, source)
    with pytest.raises(ValueError, match="reward _Const returned 1 non-finite scores"):
        check_scores(torch.tensor([0.0, float("nan")]), 2, source)
    with pytest.raises(ValueError, match="reward _Const returned 2 non-finite"):
        check_scores(torch.tensor([float("inf"), float("-inf")]), 2, source)


class _Counting(RewardFunction):
    def __init__(self):
        self.calls = 0

    def __call__(self, prompts, responses):
        self.calls += 1
        return torch.full((len(responses),), 0.5)


def length_score(prompts, responses):  # a plain function, as a notebook would pass it
    return [float(len(r)) for r in responses]


def test_a_plain_function_is_a_reward(tiny_model_dir, task_dir, tmp_path):
    module = ppo_module(tiny_model_dir, reward=length_score)
    trainer(tmp_path, iterations=1).fit(module, datamodule=prompt_data(task_dir, tiny_model_dir))
    assert module.global_step == 4 and math.isfinite(module.last_metrics["train/reward"])
    scores = module.reward(["p", "q"], ["ab", "c"])  # the list comes back a float tensor
    assert scores.dtype == torch.float32 and scores.tolist() == [2.0, 1.0]
    summed = WeightedSum([length_score, _Const([1.0, 2.0])], [2.0, 1.0])
    assert summed(["p", "q"], ["abc", "d"]).tolist() == [7.0, 4.0]
    with pytest.raises(ValueError, match=r"reward length_score returned shape \(2,\), expected"):
        check_scores(torch.zeros(2), 3, module.reward)


def test_max_steps_is_exact_when_it_falls_inside_an_iteration(tiny_model_dir, task_dir, tmp_path):
    reward = _Counting()
    module = ppo_module(tiny_model_dir, reward=reward)  # 2 epochs x 2 minibatches per iteration
    trainer(tmp_path, max_steps=6).fit(module, datamodule=prompt_data(task_dir, tiny_model_dir))
    assert module.global_step == 6 and reward.calls == 2  # the second iteration stops half-way


def test_a_reward_that_is_not_callable_is_refused_by_name(tiny_model_dir):
    with pytest.raises(TypeError, match=r"^reward: expected a RewardFunction or a callable.*int 3"):
        ppo_module(tiny_model_dir, reward=3)
    with pytest.raises(TypeError, match=r"WeightedSum.rewards\[1\]: expected .* got str 'x'"):
        WeightedSum([length_score, "x"])


def test_reward_model_normalises_with_its_stats(scalar_dir):
    prompts = ["12+34=", "rev abc=", "cnt a aab="]
    responses = ["46", "cba", "a longer answer"]
    raw = RewardModel(scalar_dir, normalize=False)(prompts, responses)
    norm = RewardModel(scalar_dir)(prompts, responses)
    assert raw.shape == (3,) and raw.dtype == torch.float32
    assert raw.std() > 0.01  # the scores differ, so the check below means something
    torch.testing.assert_close(norm, (raw - 0.25) / 2.0)


def test_reward_model_scores_the_prompt_and_response_with_eos_and_ignore_padding(scalar_dir):
    prompts, responses = ["12+34=", "rev abcdefgh="], ["46", "hgfedcba"]
    rm = RewardModel(scalar_dir, normalize=False)
    batched = rm(prompts, responses)
    one_by_one = RewardModel(scalar_dir, normalize=False, batch_size=1)(prompts, responses)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    wide = RewardModel(scalar_dir, normalize=False, pad_to_multiple_of=64)
    torch.testing.assert_close(wide(prompts, responses), batched, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="RewardModel: pad_to_multiple_of must be at least 1"):
        RewardModel(scalar_dir, pad_to_multiple_of=0)
    tok = rm.tokenizer
    ids = tok("12+34=46")["input_ids"]  # the byte tokenizer appends EOS, as the reward stage trains
    assert ids[-1] == tok.eos_token_id
    expected = sequence_scores(
        rm.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)
    )
    torch.testing.assert_close(batched[:1], expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"clip_range_value": 0.0}, "ppo.clip_range_value"),
        ({"ppo_epochs": 0}, "ppo.ppo_epochs"),
        ({"num_minibatches": 0}, "ppo.num_minibatches"),
        ({"samples_per_prompt": 0}, "ppo.samples_per_prompt"),
        ({"micro_batch_size": 0}, "ppo.micro_batch_size"),
    ],
)
def test_ppo_options_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        PPOOptions(**kwargs)
    PPOOptions(clip_range_value=None)  # no value clipping is allowed


def test_shaping_clips_then_penalises_missing_eos(tiny_model_dir):
    module = ppo_module(
        tiny_model_dir,
        _Const([2.0, -3.0, 0.2]),
        shaping=RewardShaping(clip=0.5, missing_eos_penalty=1.0),
    )
    eos, pad = module.tokenizer.eos_token_id, module.tokenizer.pad_token_id
    ids = torch.tensor([[50, eos, pad], [50, 51, 52], [eos, pad, pad]])
    raw, scores = module._score(["a", "b", "c"], ["x", "y", ""], ids)
    assert raw.tolist() == pytest.approx([2.0, -3.0, 0.2])
    assert scores.tolist() == pytest.approx([0.5, -1.5, 0.2])


# ------------------------------------------------------------------------------- reference
def _partial_rollout(module, prompts, responses):
    tok = module.tokenizer
    q = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    r = [tok(x, add_special_tokens=False)["input_ids"] for x in responses]
    qi, ri = pad(q, 0, side="left"), pad(r, 0)
    qm, rm = pad([[1] * len(s) for s in q], 0, side="left"), pad([[1] * len(s) for s in r], 0)
    return Sequences(qi, qm, ri, rm)


def test_lora_reference_is_the_base_model_with_adapters_off(tiny_model_dir):
    module = ppo_module(tiny_model_dir, _Const([0.0]), model=ModelOptions(lora=LoraOptions(r=4)))
    module.configure_model()
    assert module._ref == []  # no second copy of the model
    torch.manual_seed(0)
    with torch.no_grad():  # trained adapters: the policy is no longer the base model
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    r = _partial_rollout(module, ["12+34=", "rev abcd="], ["46", "dcba"])
    base = load_causal_lm(tiny_model_dir).eval()
    module.model.eval()
    with torch.no_grad():
        ref = module._ref_logits(r, slice(None))
        expected = module._policy_outputs(base, r, slice(None))[0]
        policy = module._policy_outputs(module.model, r, slice(None))[0]
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=1e-5)
    assert (policy - expected).abs().max() > 1e-2  # the adapters are on again for the policy
    assert ref.shape == (2, r.response_ids.shape[1], 384)


def test_full_policy_keeps_a_frozen_reference_outside_its_state(tiny_model_dir, tmp_path):
    module = ppo_module(tiny_model_dir, _Const([0.0]))
    module.configure_model()
    assert len(module._ref) == 1
    ref = module._ref[0]
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert not any(k.startswith("_ref") for k in module.state_dict())
    ids = {id(p) for p in module.parameters()}
    assert not any(id(p) in ids for p in ref.parameters())
    assert module.value_head is not None and module.critic is None


# ------------------------------------------------------------------------------- learning
ITERATIONS, WINDOW = 20, 4


@pytest.fixture(scope="module")
def learning_run(tiny_model_dir, task_dir, tmp_path_factory):
    """20 PPO iterations of 16 prompts x 4 new tokens on the untrained tiny model (~10 s)."""
    tmp = tmp_path_factory.mktemp("ppo_learn")
    L.seed_everything(0)
    reward = AsciiFraction()
    module = ppo_module(tiny_model_dir, reward, lr=1e-2)  # a 50k-parameter model takes big steps
    logger = MemoryLogger(tmp)
    t = trainer(tmp, ITERATIONS, logger=logger)
    t.fit(module, prompt_data(task_dir, tiny_model_dir))
    return module, reward, logger, t


def test_ppo_raises_the_reward(learning_run):
    module, reward, logger, t = learning_run
    assert t.global_step == ITERATIONS * 2 * 2  # max_steps counts optimizer steps
    logged = logger.series("train/reward")
    assert len(logged) == len(reward.calls) == ITERATIONS
    # the logged reward is the mean of what the reward function returned
    assert logged == pytest.approx([c.mean().item() for c in reward.calls], abs=1e-6)
    first = torch.cat(reward.calls[:WINDOW])  # 64 responses of the (nearly) untrained policy
    last = torch.cat(reward.calls[-WINDOW:])  # 64 responses at the end
    # the margin is measured: 5 standard errors of the difference of the two means
    se = math.sqrt(first.var() / len(first) + last.var() / len(last))
    assert last.mean() - first.mean() > 5 * se, (first.mean(), last.mean(), se)


def test_kl_starts_at_zero_and_k3_is_never_negative(learning_run):
    _, _, logger, _ = learning_run
    k1, k3 = (logger.series(k) for k in ("train/kl_k1", "train/kl_k3"))
    assert len(k1) == len(k3) == ITERATIONS
    assert not logger.series("train/kl")  # it repeated train/kl_k1
    assert abs(k1[0]) < 1e-5 and abs(k3[0]) < 1e-5  # policy == reference
    assert all(v >= 0 for v in k3)
    assert max(k3[-WINDOW:]) > 1e-3  # the policy moved away from the reference
    assert logger.series("train/beta") == [pytest.approx(0.05)] * ITERATIONS
    for key in ("train/policy_loss", "train/value_loss", "train/entropy", "train/clipfrac"):
        values = logger.series(key)
        assert len(values) == ITERATIONS and all(math.isfinite(v) for v in values), key


@pytest.mark.parametrize(
    "estimator, kl_penalty", [(GroupRelative(), "loss"), (LeaveOneOut(), "reward")]
)
def test_critic_free_estimators_raise_the_reward(
    tiny_model_dir, task_dir, tmp_path, estimator, kl_penalty
):
    """GRPO (KL as a loss term) and RLOO (KL in the reward): same module, no critic, learning."""
    L.seed_everything(0)
    reward = AsciiFraction()
    ppo = PPOOptions(ppo_epochs=2, num_minibatches=2, samples_per_prompt=4)
    module = ppo_module(
        tiny_model_dir, reward, lr=1e-2, ppo=ppo, advantage=estimator,
        kl=KLPenalty(estimator="k3", placement=kl_penalty),
        critic=ScalarModelCritic("no/critic/is/read"),
    )  # fmt: skip
    module.configure_model()
    assert module.critic is None and module.value_head is None
    logger = MemoryLogger(tmp_path)
    t = trainer(tmp_path, ITERATIONS, ppo=ppo, logger=logger)
    t.fit(module, prompt_data(task_dir, tiny_model_dir, batch_size=8))  # 8 prompts x 4 samples
    assert len(reward.calls) == ITERATIONS and len(reward.calls[0]) == 32
    first, last = torch.cat(reward.calls[:WINDOW]), torch.cat(reward.calls[-WINDOW:])
    se = math.sqrt(first.var() / len(first) + last.var() / len(last))
    assert last.mean() - first.mean() > 5 * se, (first.mean(), last.mean(), se)
    assert logger.series("train/value_loss") == [] and not logger.series("train/explained_variance")
    assert len(logger.series("train/kl_loss")) == (ITERATIONS if kl_penalty == "loss" else 0)


def test_kl_as_a_loss_term_adds_beta_times_the_policy_kl(tiny_model_dir, task_dir):
    module = ppo_module(
        tiny_model_dir, AsciiFraction(), ppo=PPOOptions(samples_per_prompt=2),
        advantage=GroupRelative(),
        kl=KLPenalty(FixedKLController(0.5), estimator="k3", placement="loss"),
    )  # fmt: skip
    module.configure_model()
    data = prompt_data(task_dir, tiny_model_dir, batch_size=4)
    data.setup("fit")
    torch.manual_seed(0)
    rollout, _ = module.make_rollout(next(iter(data.train_dataloader())))
    # the KL is not in the rewards: each row's rewards sum to its score
    torch.testing.assert_close(rollout.rewards.sum(1), rollout.scores)
    with torch.no_grad():  # move the policy away from the reference
        for p in module.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    idx = torch.arange(rollout.response_ids.shape[0])
    loss, stats = module._loss(rollout, idx)
    module.kl.controller.beta = 0.0
    loss_no_kl, _ = module._loss(rollout, idx)
    with torch.no_grad():
        logits, _ = module._policy_outputs(module.model, rollout, idx)
        new = token_logprobs(logits, rollout.response_ids)
        mask = rollout.response_mask.float()
        kl = (kl_k3(new, rollout.ref_logprobs) * mask).sum() / mask.sum()
    assert kl > 1e-3
    torch.testing.assert_close(stats["kl_loss"], kl)
    torch.testing.assert_close(loss - loss_no_kl, 0.5 * kl, atol=1e-6, rtol=1e-5)


def test_group_estimators_need_groups(tiny_model_dir):
    with pytest.raises(ValueError, match=r"LeaveOneOut needs ppo.samples_per_prompt >= 2"):
        ppo_module(tiny_model_dir, _Const([0.0]), advantage=LeaveOneOut())


def test_critic_from_a_scalar_model_trains_and_context_fits_exactly(
    tiny_model_dir, task_dir, scalar_dir, tmp_path
):
    """A separate critic (no value head) gets gradients; 124 + 4 tokens fill the 128 window."""
    L.seed_everything(0)
    module = ppo_module(
        tiny_model_dir,
        AsciiFraction(),
        critic=ScalarModelCritic(scalar_dir),
        log_samples_every_n_iterations=1,
    )
    module.configure_model()
    assert module.value_head is None and module.critic is not None
    before = params(module)
    logger = MemoryLogger(tmp_path)
    t = trainer(tmp_path, 2, logger=logger)
    t.fit(module, prompt_data(task_dir, tiny_model_dir, batch_size=8, max_prompt_length=124))
    after = params(module)
    for prefix in ("critic.", "model."):
        changed = [
            k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])
        ]
        assert changed, prefix
    assert len(logger.series("train/value_loss")) == 2
    samples = tmp_path / "samples" / "train_samples.jsonl"  # log_samples_every_n_iterations=1
    assert samples.exists()
    row = json.loads(samples.read_text().splitlines()[0])
    assert row.keys() >= {"step", "prompt", "response", "reward"}


def test_context_window_is_checked_before_training(tiny_model_dir, task_dir, tmp_path):
    reward = AsciiFraction()
    module = ppo_module(tiny_model_dir, reward)
    t = trainer(tmp_path, 1)
    with pytest.raises(ValueError) as err:
        t.fit(module, prompt_data(task_dir, tiny_model_dir, max_prompt_length=125))
    msg = str(err.value)
    assert "data.max_prompt_length (125)" in msg and "model.sampling.max_new_tokens (4)" in msg
    assert "(128)" in msg
    assert reward.calls == [] and t.global_step == 0


# ------------------------------------------------------------------------------- non-finite
def test_nan_reward_raises_naming_the_reward(tiny_model_dir, task_dir, tmp_path):
    module = ppo_module(tiny_model_dir, NaNOnCalls({1}, all_rows=False), nan_policy="raise")
    t = trainer(tmp_path, 1)
    with pytest.raises(ValueError, match="reward NaNOnCalls returned 1 non-finite scores"):
        t.fit(module, prompt_data(task_dir, tiny_model_dir, batch_size=8))
    assert t.global_step == 0


@pytest.mark.parametrize("all_rows", [True, False])
def test_nan_reward_skips_the_iteration_under_skip(tiny_model_dir, task_dir, tmp_path, all_rows):
    """The first rollout's reward is NaN: that iteration changes nothing; the second trains."""
    module = ppo_module(
        tiny_model_dir,
        NaNOnCalls({1}, all_rows=all_rows),
        nan_policy="skip",
        kl=KLPenalty(FixedKLController(0.1)),
    )
    snapshots = []

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            snapshots.append((trainer.global_step, params(pl_module)))

    module.configure_model()
    initial = params(module)
    logger = MemoryLogger(tmp_path)
    t = trainer(
        tmp_path, max_steps=-1, max_epochs=1, limit_train_batches=2, logger=logger,
        callbacks=[Snapshot()],
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(module, prompt_data(task_dir, tiny_model_dir, batch_size=8))
    assert any(
        "non-finite rewards" in str(w.message) and "skipped" in str(w.message) for w in caught
    )
    (step0, after_skip), (step1, after_train) = snapshots
    assert step0 == 0 and all(torch.equal(initial[k], after_skip[k]) for k in initial)
    assert step1 == 4 and any(not torch.equal(initial[k], after_train[k]) for k in initial)
    assert logger.series("train/reward") == [pytest.approx(0.5)]  # only the trained iteration


# ------------------------------------------------------------------------------- critic adapter
def lora_critic_module(tiny_model_dir, **kwargs):
    lora = LoraOptions(r=4)
    return ppo_module(
        tiny_model_dir,
        AsciiFraction(),
        model=ModelOptions(lora=lora),
        critic=LoraCritic(lora),
        **kwargs,
    )


def test_critic_adapter_needs_a_lora_policy(tiny_model_dir):
    module = ppo_module(tiny_model_dir, _Const([0.0]), critic=LoraCritic(LoraOptions(r=4)))
    with pytest.raises(ValueError, match="LoraCritic .* needs a LoRA policy"):
        module.configure_model()


def test_critic_adapter_shares_the_base_and_both_adapters_learn(tiny_model_dir, task_dir, tmp_path):
    """Policy, reference and critic on one base model: the base stays frozen, the policy's and
    the critic's adapters and the value head all move, and the value loss falls."""
    L.seed_everything(0)
    module = lora_critic_module(tiny_model_dir, lr=1e-2)
    module.configure_model()
    plain = ppo_module(tiny_model_dir, _Const([0.0]), model=ModelOptions(lora=LoraOptions(r=4)))
    plain.configure_model()
    base = {k for k in module.state_dict() if "lora_" not in k and k.startswith("model.")}
    assert module.critic is None and module._ref == [] and module.value_head is not None
    assert base == {k for k in plain.state_dict() if "lora_" not in k and k.startswith("model.")}
    before = params(module)
    logger = MemoryLogger(tmp_path)
    trainer(tmp_path, 12, logger=logger).fit(module, prompt_data(task_dir, tiny_model_dir))
    after = params(module)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert not moved & base  # the shared base model is frozen
    for part in (".lora_B.default.", ".lora_B.critic.", "value_head."):
        assert any(part in k for k in moved), part
    value_loss = logger.series("train/value_loss")
    assert len(value_loss) == 12 and sum(value_loss[-3:]) < sum(value_loss[:3]), value_loss
    assert module.model.active_adapter == "default"


def test_critic_adapter_leaves_the_policy_and_its_export_alone(tiny_model_dir, tmp_path):
    """The critic's adapter runs only inside the value forward; the export is the policy alone."""
    module = lora_critic_module(tiny_model_dir)
    module.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():  # trained adapters, different for policy and critic
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    r = _partial_rollout(module, ["12+34=", "rev abcd="], ["46", "dcba"])
    module.model.eval()
    with torch.no_grad():
        policy = module._policy_outputs(module.model, r, slice(None))[0]
        module._values(r, slice(None), None)  # switches to the critic's adapter and back
        again = module._policy_outputs(module.model, r, slice(None))[0]
        with adapter_active(module.model, "critic"):
            as_critic = module._policy_outputs(module.model, r, slice(None))[0]
    torch.testing.assert_close(again, policy)
    assert (as_critic - policy).abs().max() > 1e-2
    assert all(p.requires_grad for n, p in module.model.named_parameters() if "lora_" in n)
    module.export(tmp_path / "policy")
    exported = load_causal_lm(str(tmp_path / "policy")).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            module._policy_outputs(exported, r, slice(None))[0], policy, atol=1e-4, rtol=1e-4
        )


# ------------------------------------------------------------------------------- reward adapter
@pytest.fixture(scope="module")
def reward_adapter(tmp_path_factory, tiny_model_dir):
    """A reward model trained as a LoRA adapter of the tiny base (random adapter and head),
    exported as an adapter (as the reward stage does with merge_on_export: false) and merged."""
    torch.manual_seed(0)
    model = load_scalar_model(tiny_model_dir, ModelOptions(lora=LoraOptions(r=4)), pad_token_id=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "score" in name:
                p.normal_(0, 0.5)
    out, tok = tmp_path_factory.mktemp("rm_adapter"), load_tokenizer(tiny_model_dir)
    stats = {"reward_stats.json": {"mean": 0.1, "std": 0.5}}
    export_hf(model, tok, out / "adapter", merge_lora=False, extra_json=stats)
    export_hf(model, tok, out / "merged", merge_lora=True, extra_json=stats)
    return out


def test_reward_adapter_scores_on_the_policys_base_as_the_merged_reward_model(
    tiny_model_dir, reward_adapter
):
    """Policy, πref, critic and reward on one base model: the reward, run as a frozen adapter of
    the policy, scores as the same reward model merged and loaded apart; nothing else changes."""
    lora = LoraOptions(r=4)
    module = ppo_module(
        tiny_model_dir, RewardAdapter(str(reward_adapter / "adapter")),
        model=ModelOptions(lora=lora), critic=LoraCritic(lora),
    )  # fmt: skip
    module.configure_model()
    assert module._ref == [] and module.critic is None
    prompts, responses = ["12+34=", "rev abcd=", "cnt a in banana="], ["46", "dcba", "3"]
    expected = RewardModel(str(reward_adapter / "merged"))(prompts, responses)
    r = _partial_rollout(module, prompts[:2], responses[:2])
    module.model.eval()
    with torch.no_grad():
        before = module._policy_outputs(module.model, r, slice(None))[0]
        got = module.reward(prompts, responses)
        after = module._policy_outputs(module.model, r, slice(None))[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.std() > 1e-3  # distinct scores: not a constant
    torch.testing.assert_close(after, before)  # the policy's adapter is active again
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    lora_names = {n for n, _ in module.model.named_parameters() if "lora_" in n}
    assert trainable == {n for n in lora_names if ".reward." not in n}
    assert any(".reward." in n for n in lora_names)


def test_reward_adapter_stays_frozen_while_the_policy_trains(
    tiny_model_dir, task_dir, reward_adapter, tmp_path
):
    lora = LoraOptions(r=4)
    module = ppo_module(
        tiny_model_dir, RewardAdapter(str(reward_adapter / "adapter")),
        model=ModelOptions(lora=lora), critic=LoraCritic(lora), lr=1e-2,
    )  # fmt: skip
    module.configure_model()
    before = params(module)
    trainer(tmp_path, 2).fit(module, prompt_data(task_dir, tiny_model_dir))
    after = params(module)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".lora_B.default." in k for k in moved) and any(".critic." in k for k in moved)
    assert not any(".reward." in k for k in moved)


def test_reward_adapter_needs_its_own_base_and_an_adapter_directory(
    tiny_model_dir, reward_adapter, tmp_path
):
    import shutil

    other = tmp_path / "copy_of_the_base"
    shutil.copytree(tiny_model_dir, other)
    module = ppo_module(
        str(other), RewardAdapter(str(reward_adapter / "adapter")),
        model=ModelOptions(lora=LoraOptions(r=4)),
    )  # fmt: skip
    with pytest.raises(ValueError, match="was trained on base .* the policy's base is"):
        module.configure_model()
    with pytest.raises(ValueError, match="merge_on_export: false"):
        RewardAdapter(str(reward_adapter / "merged"))


@pytest.mark.parametrize("reuse", [False, True])
def test_pi_old_from_the_sampler_skips_a_forward_and_equals_it(tiny_model_dir, task_dir, reuse):
    """``reuse_sampling_logprobs``: no policy forward for π_old, and the sampler's log-probs equal
    the full forward's to rounding, so the first update's ratio starts at 1."""
    module = ppo_module(
        tiny_model_dir, AsciiFraction(), advantage=GroupRelative(),
        ppo=PPOOptions(samples_per_prompt=2, reuse_sampling_logprobs=reuse),
        sampling=SamplingOptions(max_new_tokens=6, temperature=0.8, top_k=20),
    )  # fmt: skip
    module.configure_model()
    data = prompt_data(task_dir, tiny_model_dir, batch_size=4)
    data.setup("fit")
    policy_forwards = []
    outputs = module._policy_outputs

    def counted(model, *args, **kwargs):
        policy_forwards.append(model is module.model)
        return outputs(model, *args, **kwargs)

    module._policy_outputs = counted
    torch.manual_seed(0)
    rollout, info = module.make_rollout(next(iter(data.train_dataloader())))
    assert policy_forwards.count(True) == (0 if reuse else 1)  # the reference's forward stays
    # the engine/trainer mismatch is logged: rounding apart here (HFRollout is the trainer's model)
    mismatch = info.engine["rollout/logprob_diff_max"]
    assert (mismatch == 0) if reuse else (0 <= mismatch < 1e-5)
    assert info.engine["rollout/logprob_diff_frac"] == 0
    module.model.eval()
    with torch.no_grad():
        idx = torch.arange(rollout.response_ids.shape[0])
        logits, _ = outputs(module.model, rollout, idx)
        full = token_logprobs(logits, rollout.response_ids) * rollout.response_mask
    torch.testing.assert_close(rollout.logprobs, full, atol=1e-5, rtol=1e-5)
