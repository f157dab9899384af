"""Rewards read from a reward model's scalar head: ``RewardModel`` (a model of its own) and
``RewardAdapter`` (a LoRA adapter run on the policy's own base model). Both see text and
re-tokenise it, so a reward model with another tokenizer than the policy's just works."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor

from lightning_rlhf.reward_stats import read_reward_stats
from lightning_rlhf.rewards.base import RewardFunction

log = logging.getLogger(__name__)


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
        from lightning_rlhf.model_outputs import sequence_scores

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
        from lightning_rlhf.model_outputs import last_token_index

        base = self.policy.get_base_model()  # the causal LM, the adapters injected
        trunk = getattr(base, base.base_model_prefix)
        hidden = trunk(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        values = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()  # (b, T)
        return values.gather(1, last_token_index(mask)[:, None]).squeeze(1)

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        from lightning_rlhf.lora import adapter_active

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
