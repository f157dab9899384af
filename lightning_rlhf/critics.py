"""The critic of the RL stage, a component: V(state before each response token), for ``GAE``.

Three forms, chosen by ``class_path`` in ``model.critic``:

- ``ValueHead``: a linear head on the policy's own trunk; its states come from the policy's
  forward, so the values cost no second forward;
- ``ScalarModelCritic``: a separate scalar-head model (by default the reward model's export);
- ``LoraCritic``: a second LoRA adapter on a LoRA policy's base model, with its own head: policy,
  reference and critic share one base model in memory.

Estimators without a critic (``GroupRelative``, ``LeaveOneOut``) load none. A critic builds its
networks onto the module (``module.value_head`` or ``module.critic``, the names its checkpoint keys
have always had) and computes the values from the forward inputs ``PPOModule`` hands it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from torch import Tensor, nn

from lightning_rlhf.lora import adapter_active, lora_config
from lightning_rlhf.model_outputs import token_scalars
from lightning_rlhf.models import LoraOptions, check_same_tokenizer, load_scalar_model

if TYPE_CHECKING:
    from lightning_rlhf.modules.ppo import PPOModule


def response_states(x: Tensor, response_length: int) -> Tensor:
    """(b, R, ...) of a (b, P + R, ...) sequence tensor: position t of the result is the state
    before response token t (the last prompt token for t = 0; the last response token is never
    a state: nothing follows it)."""
    return x[:, -response_length - 1 : -1]


def zero_value_head(hidden_size: int) -> nn.Linear:
    """A (hidden_size → 1) head that predicts 0 everywhere: the first advantages are the returns."""
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class Critic:
    """Base of the critics. Subclasses implement ``build`` and ``values``.

    Attributes:
        policy_states: the values are read from the policy forward's last hidden states (the
            module asks that forward for them and passes them to ``values``).
        adapter: the name of a LoRA adapter the critic trains on the policy's model, or None.
    """

    policy_states: bool = False
    adapter: str | None = None

    def build(self, module: PPOModule) -> None:
        """Create the critic's networks on ``module`` (called once, in ``configure_model``)."""
        raise NotImplementedError

    def values(
        self, module: PPOModule, ids: Tensor, mask: Tensor, positions: Tensor,
        response_length: int, states: Tensor | None,
    ) -> Tensor:  # fmt: skip
        """(b, R) float32 values of the states before each response token.

        ``ids``, ``mask``, ``positions``: (b, P + R) prompt-and-response forward inputs;
        ``states``: (b, R, H) policy states when ``policy_states``, else None."""
        raise NotImplementedError


class ValueHead(Critic):
    """A value head on the policy's trunk, zero-initialised (the policy's forward gives its states;
    the policy's trunk learns from the value loss too)."""

    policy_states = True

    def build(self, module: PPOModule) -> None:
        module.value_head = zero_value_head(module.model.config.hidden_size)

    def values(self, module, ids, mask, positions, response_length, states) -> Tensor:
        return module.value_head(states).squeeze(-1).float()


class ScalarModelCritic(Critic):
    """A separate scalar-head model, trained with the policy.

    Args:
        name_or_path: its initialisation: the reward model export (``artifacts/rm``) or any
            model of the policy's tokenizer (a causal LM gets a new head).
    """

    def __init__(self, name_or_path: str = "artifacts/rm") -> None:
        self.name_or_path = name_or_path

    def build(self, module: PPOModule) -> None:
        options = module.model_options
        # the critic reads the policy's token ids: the same tokenizer, or a refusal
        check_same_tokenizer(
            module.model_name_or_path, self.name_or_path, "critic", options.trust_remote_code
        )
        options = replace(options, extra={})  # extra kwargs are the causal LM's
        module.critic = load_scalar_model(self.name_or_path, options, module.tokenizer.pad_token_id)
        module.critic.train()

    def values(self, module, ids, mask, positions, response_length, states) -> Tensor:
        return response_states(token_scalars(module.critic, ids, mask, positions), response_length)


class LoraCritic(Critic):
    """A second LoRA adapter on a LoRA policy's base model, with its own zero-initialised value
    head; its gradients do not touch the policy's adapter. Needs ``model.model.lora``.

    Args:
        lora: the adapter's options; None: ``LoraOptions()`` (rank 8, all linear layers).
    """

    adapter = "critic"

    def __init__(self, lora: LoraOptions | None = None) -> None:
        self.lora = lora if lora is not None else LoraOptions()

    def build(self, module: PPOModule) -> None:
        from peft import PeftModel

        if not isinstance(module.model, PeftModel):
            raise ValueError(
                "model.critic LoraCritic puts the critic on the policy's base model as a second "
                "LoRA adapter: it needs a LoRA policy (set model.model.lora), or choose "
                "lightning_rlhf.ScalarModelCritic or lightning_rlhf.ValueHead for model.critic"
            )
        module.model.add_adapter(self.adapter, lora_config(self.lora, "CAUSAL_LM"))
        module.value_head = zero_value_head(module.model.config.hidden_size)

    def values(self, module, ids, mask, positions, response_length, states) -> Tensor:
        with adapter_active(module.model, self.adapter):
            base = module.model.get_base_model()  # the causal LM, the adapters injected
            trunk = getattr(base, base.base_model_prefix)
            hidden = trunk(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            ).last_hidden_state  # (b, P + R, H); the LM head is not run
        return module.value_head(response_states(hidden, response_length)).squeeze(-1).float()
