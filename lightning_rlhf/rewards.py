"""The reward interface: anything that maps (prompts, responses) to one score per response.

A reward is chosen in YAML by ``class_path``: the bundled task's oracle, a reward-model directory,
a weighted sum of several, an ensemble penalised for disagreement, or a user's own
``RewardFunction`` subclass. Rewards see text, so a reward model with another tokenizer than the
policy's just works (it re-tokenises).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor

from lightning_rlhf.reward_stats import read_reward_stats

log = logging.getLogger(__name__)


class RewardFunction:
    """Base class: ``reward(prompts, responses) -> (B,) float tensor``; subclass and implement.

    ``to(device)`` is called once before training with the policy's device; ``stats()`` may
    return numbers about the last call, which the RL stage logs as ``train/reward/<name>``.
    """

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> RewardFunction:
        return self

    def stats(self) -> dict[str, float]:
        return {}


class CallableReward(RewardFunction):
    """A plain function ``fn(prompts, responses) -> scores`` (a tensor or a list of floats) as
    a RewardFunction: what a notebook passes as ``reward=`` is wrapped in this."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        scores = self.fn(prompts, responses)
        return scores if isinstance(scores, Tensor) else torch.tensor(scores, dtype=torch.float32)

    def __repr__(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


def as_reward(reward: object, field: str = "reward") -> RewardFunction:
    """``reward`` itself when it is a RewardFunction, a plain callable wrapped; else a TypeError
    naming ``field``."""
    if isinstance(reward, RewardFunction):
        return reward
    if callable(reward):
        return CallableReward(reward)
    raise TypeError(
        f"{field}: expected a RewardFunction or a callable (prompts, responses) -> scores, got "
        f"{type(reward).__name__} {reward!r}"
    )


def _name(source: object) -> str:
    return repr(source) if isinstance(source, CallableReward) else type(source).__name__


class TaskOracle(RewardFunction):
    """The bundled task's exact oracle: 1.0 for a correct response, 0.0 otherwise.

    The shipped configs set it as ``model.oracle`` (and ``grpo_verifiable.yaml`` as
    ``model.reward``); on a prompt of any other data it raises an error that names the option
    to change."""

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        from lightning_rlhf.tasks import score, solve

        for p in prompts:
            if solve(p) is None:
                raise ValueError(
                    f"TaskOracle: not a prompt of the bundled task suite: {p!r:.80}. The oracle "
                    "knows only the bundled task's answers: on your own data set "
                    "--model.oracle null (oracle: null under model: in the YAML) to skip the "
                    "oracle metrics, and as model.reward give a RewardModel or a RewardFunction "
                    "of your own"
                )
        return torch.tensor([score(p, r) for p, r in zip(prompts, responses)], dtype=torch.float32)


class _ScalarHeadReward(RewardFunction):
    """What the reward-model rewards share: their tokenizer, the normalisation read from
    ``reward_stats.json``, and scoring (prompt, response) texts in chunks, EOS appended as in
    training; subclasses give ``_scores(ids, mask)``, (b,) at the last real token."""

    def _setup(
        self, name_or_path: str, tokenizer, normalize: bool, batch_size: int, multiple: int
    ) -> None:
        if multiple < 1:
            raise ValueError(
                f"{type(self).__name__}: pad_to_multiple_of must be at least 1, got {multiple}"
            )
        self.name_or_path, self.tokenizer, self.batch_size = name_or_path, tokenizer, batch_size
        self.multiple = multiple
        self.mean, self.std = 0.0, 1.0
        stats = Path(name_or_path) / "reward_stats.json"
        if normalize and stats.exists():
            self.mean, self.std = read_reward_stats(stats)
        self.max_length: int | None = None  # longest sequence scored; None: no limit
        self._truncated, self._warned = 0, False

    def _device(self) -> torch.device:
        raise NotImplementedError

    def _scores(self, ids: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def _fit(self, joined: list[list[int]], parts: list[tuple[list[int], list[int]]]) -> list:
        """Sequences longer than ``max_length`` cut as the reward stage cut its training pairs
        (``fit_pair``: the response's end, where the score is read, then the prompt's end); a
        warning the first time, and the count of each call in ``stats()["truncated"]``."""
        from lightning_rlhf.data.preference import fit_pair

        limit = self.max_length
        if limit is None or all(len(s) <= limit for s in joined):
            self._truncated = 0
            return joined
        long = [len(s) > limit for s in joined]
        self._truncated = sum(long)
        if not self._warned:
            self._warned = True
            log.warning(
                "%s('%s'): %d of %d (prompt, response) texts are longer than its %d tokens and "
                "were cut to their end (counted every call in train/reward/truncated)",
                type(self).__name__, self.name_or_path, self._truncated, len(joined), limit,
            )  # fmt: skip
        return [fit_pair(p, r, limit) if cut else s for s, (p, r), cut in zip(joined, parts, long)]

    def stats(self) -> dict[str, float]:
        return {"truncated": float(self._truncated)} if self.max_length is not None else {}

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        from lightning_rlhf.data.collate import pad
        from lightning_rlhf.data.text import encode_completion, encode_prompt

        device, tok = self._device(), self.tokenizer
        seqs = [
            (encode_prompt(tok, p), encode_completion(tok, r)) for p, r in zip(prompts, responses)
        ]
        seqs = self._fit([p + r for p, r in seqs], seqs)
        out = []
        for i in range(0, len(seqs), self.batch_size):
            chunk = seqs[i : i + self.batch_size]
            ids = pad(chunk, tok.pad_token_id, multiple=self.multiple).to(device)
            mask = pad([[1] * len(s) for s in chunk], 0, multiple=self.multiple).to(device)
            out.append(self._scores(ids, mask))
        return ((torch.cat(out) - self.mean) / self.std).float().cpu()


class RewardModel(_ScalarHeadReward):
    """A reward model exported by the reward stage (or any sequence-classification model).

    The prompt and response texts are tokenised with the reward model's own tokenizer, EOS appended
    as in training, and scored at the last token.

    Args:
        name_or_path: the reward model's directory or hub name.
        normalize: subtract the mean and divide by the std stored in ``reward_stats.json`` at
            export (ignored when the file is absent).
        batch_size: sequences per forward pass.
        pad_to_multiple_of: pad each forward's width up to a multiple of this (1: its longest
            sequence). The texts are tokenised anew, so their widths change every rollout: on a
            GPU each new width costs attention a new kernel plan, and 16 or 64 keeps them few.
        dtype: weight dtype ("auto" keeps the checkpoint's).
        trust_remote_code: allow the model's own code from the hub.
        max_length: longest (prompt, response) sequence scored, in tokens; longer ones keep
            their end, as the reward stage's training pairs did, and are counted (a warning,
            then ``train/reward/truncated``). None: the model's ``max_position_embeddings``.
    """

    def __init__(
        self,
        name_or_path: str = "artifacts/rm",
        normalize: bool = True,
        batch_size: int = 256,
        pad_to_multiple_of: int = 1,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        max_length: int | None = None,
    ) -> None:
        from lightning_rlhf.models import ModelOptions, load_scalar_model, load_tokenizer

        tokenizer = load_tokenizer(name_or_path, trust_remote_code)
        self._setup(name_or_path, tokenizer, normalize, batch_size, pad_to_multiple_of)
        options = ModelOptions(dtype=dtype, trust_remote_code=trust_remote_code)
        self.model = load_scalar_model(
            name_or_path, options, self.tokenizer.pad_token_id, trained_head=True
        ).eval()
        self.model.requires_grad_(False)
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", None)
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"RewardModel: max_length must be at least 2, got {max_length}")

    def to(self, device: torch.device | str) -> RewardModel:
        self.model.to(device)
        return self

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _scores(self, ids: Tensor, mask: Tensor) -> Tensor:
        from lightning_rlhf.models import sequence_scores

        return sequence_scores(self.model, ids, mask)


class RewardAdapter(_ScalarHeadReward):
    """A reward model trained as a LoRA adapter of the policy's own base model, run on that base:
    with a LoRA policy, the policy, πref, the critic (``LoraCritic``) and the reward share one
    base model in memory.

    The directory is what the reward stage exports with ``model.lora.merge_on_export: false``
    (``adapter_config.json``, the adapter's and the score head's weights, the tokenizer,
    ``reward_stats.json``), trained from the same base directory as the policy. The RL stage loads
    the adapter into its policy under the name ``reward`` (frozen) before training; each call
    runs the policy's LoRA layers with it, scores at the last token as ``RewardModel`` does, and
    switches back.

    Args:
        name_or_path: the reward model's adapter directory.
        normalize: subtract the mean and divide by the std stored in ``reward_stats.json``.
        batch_size: sequences per forward pass.
        pad_to_multiple_of: as ``RewardModel``'s.
    """

    NAME = "reward"

    def __init__(
        self,
        name_or_path: str = "artifacts/rm",
        normalize: bool = True,
        batch_size: int = 256,
        pad_to_multiple_of: int = 1,
    ) -> None:
        from lightning_rlhf.models import load_tokenizer

        path = Path(name_or_path)
        if not (path / "adapter_config.json").exists():
            raise ValueError(
                f"RewardAdapter needs a LoRA adapter directory (adapter_config.json) at "
                f"'{name_or_path}': export the reward model with model.lora.merge_on_export: "
                "false, or use RewardModel for a full model"
            )
        tokenizer = load_tokenizer(name_or_path)
        self._setup(name_or_path, tokenizer, normalize, batch_size, pad_to_multiple_of)
        config = json.loads((path / "adapter_config.json").read_text())
        self.base = config["base_model_name_or_path"]
        self.policy: torch.nn.Module | None = None
        self.head: torch.nn.Linear | None = None

    def attach(self, policy: torch.nn.Module, policy_base: str) -> None:
        """Load the adapter into ``policy`` (a peft model of base ``policy_base``), frozen."""
        from peft import LoraConfig, PeftModel, set_peft_model_state_dict
        from safetensors.torch import load_file

        if not isinstance(policy, PeftModel):
            raise ValueError(
                f"RewardAdapter('{self.name_or_path}') runs on the policy's base model: it needs "
                "a LoRA policy (model.model.lora); use RewardModel otherwise"
            )
        if _same_place(self.base) != _same_place(policy_base):
            raise ValueError(
                f"RewardAdapter('{self.name_or_path}') was trained on base '{self.base}', the "
                f"policy's base is '{policy_base}': an adapter only means something on its own base"
            )
        config = LoraConfig.from_pretrained(self.name_or_path)
        config.task_type, config.modules_to_save = "CAUSAL_LM", None
        policy.add_adapter(self.NAME, config)
        state = load_file(str(Path(self.name_or_path) / "adapter_model.safetensors"))
        head = [k for k in state if k.endswith("score.weight")]
        if len(head) != 1:
            raise ValueError(f"'{self.name_or_path}' holds no single score head ({head})")
        weight = state.pop(head[0])  # (1, H)
        loaded = set_peft_model_state_dict(policy, state, adapter_name=self.NAME)
        missing = [k for k in loaded.missing_keys if f".{self.NAME}." in k]
        if loaded.unexpected_keys or missing:
            raise ValueError(
                f"'{self.name_or_path}' does not fit the policy's modules: "
                f"{(loaded.unexpected_keys or missing)[:3]}"
            )
        self.head = torch.nn.Linear(weight.shape[1], 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(weight.float())
        self.head.requires_grad_(False)
        self.policy = policy
        self.max_length = getattr(policy.config, "max_position_embeddings", None)

    def to(self, device: torch.device | str) -> RewardAdapter:
        if self.head is not None:
            self.head.to(device)
        return self

    def _device(self) -> torch.device:
        return self.head.weight.device

    def _scores(self, ids: Tensor, mask: Tensor) -> Tensor:
        from lightning_rlhf.models import last_token_index

        base = self.policy.get_base_model()  # the causal LM, the adapters injected
        trunk = getattr(base, base.base_model_prefix)
        hidden = trunk(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        values = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()  # (b, T)
        return values.gather(1, last_token_index(mask)[:, None]).squeeze(1)

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        from lightning_rlhf.models import adapter_active

        if self.policy is None or self.head is None:
            raise RuntimeError(f"RewardAdapter('{self.name_or_path}') is not attached to a policy")
        was_training = self.policy.training
        try:
            with adapter_active(self.policy.eval(), self.NAME):
                return super().__call__(prompts, responses)
        finally:
            self.policy.train(was_training)


def _same_place(name_or_path: str) -> str:
    """A local directory by its resolved path, a hub name as written."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def reward_functions(reward: RewardFunction):
    """``reward`` and, for a sum or an ensemble, its members (recursively)."""
    yield reward
    for member in getattr(reward, "rewards", []):
        yield from reward_functions(member)


class _Combination(RewardFunction):
    """Several reward functions, one weight each, scored together."""

    def __init__(self, rewards: list[RewardFunction], weights: list[float] | None) -> None:
        weights = [1.0] * len(rewards) if weights is None else weights
        if not rewards or len(weights) != len(rewards):
            raise ValueError(
                f"{type(self).__name__} needs one weight per reward: {len(rewards)} rewards, "
                f"{len(weights)} weights"
            )
        self.rewards = [
            as_reward(r, f"{type(self).__name__}.rewards[{i}]") for i, r in enumerate(rewards)
        ]
        self.weights = weights
        self._stats: dict[str, float] = {}

    def to(self, device: torch.device | str) -> _Combination:
        for r in self.rewards:
            r.to(device)
        return self

    def member_scores(self, prompts: list[str], responses: list[str]) -> Tensor:
        """(n_rewards, B) on the CPU: each member's scores, their shape checked and named if wrong
        (non-finite scores pass through to the caller's check, which knows the NaN policy)."""
        n = len(responses)
        return torch.stack(
            [
                check_scores(r(prompts, responses), n, r, allow_nonfinite=True).cpu()
                for r in self.rewards
            ]
        )

    def stats(self) -> dict[str, float]:
        return self._stats


class WeightedSum(_Combination):
    """Σ_i weight_i · reward_i(prompts, responses): several objectives added up (e.g. a reward
    model and a format bonus).

    Args:
        rewards: the reward functions.
        weights: one weight per reward function (default: all 1).
    """

    def __init__(self, rewards: list[RewardFunction], weights: list[float] | None = None) -> None:
        super().__init__(rewards, weights)

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        scores = self.member_scores(prompts, responses)  # (n, B)
        return (torch.tensor(self.weights).unsqueeze(1) * scores).sum(0)


class RewardEnsemble(_Combination):
    """Several estimates of one reward, combined as ``mean_w − k · std``: a guard against reward
    hacking, since a response that fools one reward model rarely fools all of them.

    With members' scores ``s_i`` (n, B) and weights normalised to ``w_i = weight_i / Σ weight``:
    ``mean = Σ_i w_i s_i``, ``std = sqrt(Σ_i w_i (s_i − mean)²)`` (per response), and the score is
    ``mean − disagreement_coef · std``. Members should share a scale (``RewardModel`` with
    ``normalize: true`` gives each mean 0 and std 1 on its validation pairs). ``stats()`` reports
    each member's mean score and the mean disagreement of the last call (logged by the RL stage).

    Args:
        rewards: the members: reward models or functions.
        weights: one non-negative weight per member (default: equal).
        disagreement_coef: k, the penalty per unit of disagreement (0: the weighted mean).
    """

    def __init__(
        self,
        rewards: list[RewardFunction],
        weights: list[float] | None = None,
        disagreement_coef: float = 0.0,
    ) -> None:
        super().__init__(rewards, weights)
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(
                f"RewardEnsemble weights must be >= 0 with a positive sum, got {self.weights}"
            )
        if disagreement_coef < 0:
            raise ValueError(f"disagreement_coef must be >= 0, got {disagreement_coef}")
        self.disagreement_coef = disagreement_coef

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        scores = self.member_scores(prompts, responses)  # (n, B)
        w = torch.tensor(self.weights) / sum(self.weights)  # (n,)
        mean = (w.unsqueeze(1) * scores).sum(0)  # (B,)
        std = (w.unsqueeze(1) * (scores - mean) ** 2).sum(0).sqrt()  # (B,)
        self._stats = {
            "disagreement": std.mean().item(),
            **{f"member_{i}": s.mean().item() for i, s in enumerate(scores)},
        }
        return mean - self.disagreement_coef * std


def check_scores(scores: Tensor, n: int, source: object, allow_nonfinite: bool = False) -> Tensor:
    """A reward must return n finite numbers; say which reward did not.

    ``allow_nonfinite`` lets NaN/Inf through for a caller that skips such a batch itself."""
    scores = (
        torch.as_tensor(scores, dtype=torch.float32).flatten()
        if not isinstance(scores, Tensor)
        else scores
    )
    if scores.shape != (n,):
        raise ValueError(
            f"reward {_name(source)} returned shape {tuple(scores.shape)}, expected ({n},)"
        )
    if not allow_nonfinite and not torch.isfinite(scores).all():
        bad = (~torch.isfinite(scores)).sum().item()
        raise ValueError(f"reward {_name(source)} returned {bad} non-finite scores (NaN or Inf)")
    return scores.float()
