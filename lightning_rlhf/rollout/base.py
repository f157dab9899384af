"""The rollout engine interface: what samples responses for every stage that samples.

A module binds its engine to the policy before each rollout, then asks for responses::

    engine.bind(model, eos_token_id, pad_token_id, synced=..., sharded=...)
    engine.load_weights(model, version)   # version: the module's optimizer step count
    generation = engine.generate(prompt_ids, prompt_mask, options)

``bind`` is cheap and repeated at every call (the trainer's strategy, hence ``synced``, is only
known once the module is attached). ``load_weights`` is how an engine that holds its own copy of
the policy (a separate inference server) learns that the weights changed: it reloads when the
version differs from the one it holds. Engines that read the live module, as both engines here
do, are always fresh and only record the version.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

from lightning_rlhf.rollout.sampling import Generation, SamplingOptions


class RolloutEngine(ABC):
    """Samples responses to left-padded prompts from a bound policy.

    Every engine returns the same tensors for the same options (see ``Generation``) and draws
    from the same distribution: softmax(logits / temperature) restricted to top-k then top-p,
    EOS banned before ``min_new_tokens``, rows cut at ``max_new_tokens``; the log-probs are the
    policy's at the sampling temperature, before top-k, top-p and the ban shaped the draw.
    The conformance suite (tests/unit/test_rollout_conformance.py) holds each engine to this.
    """

    # the log-probs come from the trainer's own module (equal to its forward up to rounding);
    # False for an engine with its own copy and kernels: PPO then takes π_old from its forward
    live_logprobs = True

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.eos_token_id = -1
        self.pad_token_id = 0
        self.synced = False
        self.sharded: nn.Module | None = None
        self.weight_version: int | None = None

    def bind(
        self,
        model: nn.Module,
        eos_token_id: int,
        pad_token_id: int,
        synced: bool = False,
        sharded: nn.Module | None = None,
    ) -> RolloutEngine:
        """Sample from ``model`` from now on.

        Args:
            synced: every rank keeps forwarding until all ranks' rows are done (FSDP/ZeRO-3:
                each forward is a collective, a rank that stopped early would hang the others).
            sharded: the module whose parameters FSDP/DeepSpeed shard (the strategy's wrapper),
                for engines that gather them once per rollout; None when nothing is sharded.
        """
        self.model = model
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.synced, self.sharded = synced, sharded
        return self

    def load_weights(self, model: nn.Module, version: int) -> None:
        """Make the engine sample from ``model``'s current weights, labelled ``version``.

        The module calls it before each rollout with a number that changes exactly when the
        weights do (its optimizer step count); ``refresh`` runs only when it changed.
        """
        if version != self.weight_version:
            self.refresh(model)
            self.weight_version = version

    def refresh(self, model: nn.Module) -> None:  # noqa: B027 (a no-op unless the engine copies)
        """Copy ``model``'s weights into the engine's own copy; nothing for engines that read
        the live module."""

    @abstractmethod
    def generate(
        self, prompt_ids: Tensor, prompt_mask: Tensor, options: SamplingOptions
    ) -> Generation:
        """Responses to ``prompt_ids`` (B, P), left-padded, with ``prompt_mask`` (B, P)."""

    def _bound(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError(
                f"{type(self).__name__}.generate: no policy bound; call bind(model, eos_token_id, "
                "pad_token_id) first (PolicyModule.sample does)"
            )
        return self.model
