"""Methods added to every vLLM worker (``worker_extension_cls``), called through
``LLM.collective_rpc``: how ``VLLMRollout`` pushes weights and sets the sampling temperature.

They run inside the worker. A worker in another process gets file paths and numbers, never
tensors (``collective_rpc`` then turns tensors into lists); one in the trainer's process is
handed the tensors themselves.

Weights go through the worker's public ``reload_weights`` with an iterator: over the trainer's
tensors in-process, over safetensors files (one bucket in memory at a time) otherwise.
``model.load_weights`` alone is not enough: the CPU backend repacks linear weights for oneDNN
after loading, and ``reload_weights`` redoes that processing layer by layer. A tied output layer
is re-tied to the new input embeddings and re-processed: left alone, it keeps serving the old
embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch import Tensor


class WeightSync:
    """Mixed into vLLM's worker class; ``self.model_runner`` is the worker's."""

    def lightning_rlhf_load(self, paths: list[str], retie: bool) -> int:
        """Load the (name, tensor) pairs of the safetensors files ``paths``, in order, one file
        in memory at a time; re-tie the output layer when ``retie``. Returns the tensor count."""
        from safetensors.torch import load_file

        def weights() -> Iterator[tuple[str, Tensor]]:
            for path in paths:
                yield from load_file(path).items()

        return self.lightning_rlhf_load_tensors(weights(), retie)

    def lightning_rlhf_load_tensors(
        self, weights: Iterable[tuple[str, Tensor]], retie: bool
    ) -> int:
        """Load (name, tensor) pairs as they come. Only for a worker in the trainer's process
        (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), where ``collective_rpc`` passes objects as they
        are: the trainer's tensors then go in without a copy to the host or to files."""
        count = 0

        def counted() -> Iterator[tuple[str, Tensor]]:
            nonlocal count
            for item in weights:
                count += 1
                yield item

        self.model_runner.reload_weights(weights_iterator=counted())
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
