"""Rollout engines: what samples responses for every stage that samples (PPO/GRPO/RLOO rollouts,
validation answers, ``evaluate``), chosen by ``class_path`` (``model.rollout``).

- ``HFRollout`` (the default): the policy's own forward in a KV-cached loop.
- ``PagedRollout``: transformers' continuous batching (paged attention).
- ``VLLMRollout``: a colocated vLLM engine holding its own copy of the policy, pushed the
  weights after every update (optional extra ``lightning_rlhf[vllm]``; imported lazily).

All return the same ``Generation`` and pass the conformance suite; the first two read the live
module.
"""

from lightning_rlhf.rollout.base import RolloutEngine
from lightning_rlhf.rollout.hf import HFRollout, generate
from lightning_rlhf.rollout.metrics import rollout_metrics
from lightning_rlhf.rollout.paged import PagedRollout
from lightning_rlhf.rollout.sampling import (
    Generation,
    SamplingOptions,
    decode_responses,
    response_mask,
    sample_tokens,
    tempered,
    uniforms,
)
from lightning_rlhf.rollout.vllm_engine import VLLMRollout

__all__ = [
    "Generation",
    "HFRollout",
    "PagedRollout",
    "RolloutEngine",
    "VLLMRollout",
    "SamplingOptions",
    "decode_responses",
    "generate",
    "response_mask",
    "rollout_metrics",
    "sample_tokens",
    "tempered",
    "uniforms",
]
