"""Methods added to every vLLM worker (``worker_extension_cls``), called through
``LLM.collective_rpc``: how ``VLLMRollout`` pushes weights and sets the sampling temperature.

They run inside the worker, which may be another process: arguments are file paths and numbers,
never tensors (``collective_rpc`` turns tensors into lists).

Weights go through the worker's public ``reload_weights`` with an iterator over safetensors
files, one file (bucket) in memory at a time. ``model.load_weights`` alone is not enough: the
CPU backend repacks linear weights for oneDNN after loading, and ``reload_weights`` redoes that
processing layer by layer. A tied output layer is re-tied to the new input embeddings and
re-processed: left alone, it keeps serving the old embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor


class WeightSync:
    """Mixed into vLLM's worker class; ``self.model_runner`` is the worker's."""

    def lightning_rlhf_load(self, paths: list[str], retie: bool) -> int:
        """Load the (name, tensor) pairs of the safetensors files ``paths``, in order, into the
        model; re-tie the output layer to the input embeddings when ``retie``. Returns the
        number of tensors loaded."""
        from safetensors.torch import load_file

        count = 0

        def weights() -> Iterator[tuple[str, Tensor]]:
            nonlocal count
            for path in paths:
                bucket = load_file(path)
                count += len(bucket)
                yield from bucket.items()

        self.model_runner.reload_weights(weights_iterator=weights())
        if retie:
            _retie(self.model_runner.get_model())
        return count

    def lightning_rlhf_logit_scale(self, factor: float) -> float:
        """Multiply the model's own logit scale by ``factor`` (1/temperature), relative to the
        scale it was built with; returns the scale now in use."""
        processor = self.model_runner.get_model().logits_processor
        if not hasattr(processor, "lightning_rlhf_base_scale"):
            processor.lightning_rlhf_base_scale = processor.scale
        processor.scale = processor.lightning_rlhf_base_scale * factor
        return processor.scale


def _retie(model) -> None:
    head, inner = getattr(model, "lm_head", None), getattr(model, "model", None)
    embed = getattr(inner, "embed_tokens", None)
    if head is None or embed is None:
        raise RuntimeError(
            f"VLLMRollout: cannot re-tie the output layer of {type(model).__name__} (no lm_head "
            "or model.embed_tokens); set tie_word_embeddings false in the policy's config.json "
            "or use HFRollout"
        )
    head.weight = embed.weight
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)  # the CPU backend's packed copy of the head
