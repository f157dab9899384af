"""PagedRollout: transformers' continuous batching (``generate_batch``, paged attention).

The library schedules the requests itself: a row that ends frees its KV-cache pages at once and
the forward carries only live rows, prefill chunks and decode tokens mixed (on CUDA with CUDA
graphs and, where installed, flash attention). What it returns is turned into our tensors:

- the draw: temperature, top-k, top-p and EOS map onto its generation config (its processors
  run in our order: the ban, then temperature, top-k, top-p). ``min_new_tokens`` has no
  continuous-batching processor, so such a rollout runs in two calls: ``min_new_tokens`` tokens
  with EOS suppressed and no stop, then the rest from the extended prompts.
- the log-probs: the library's are those of the truncated distribution it drew from (after
  top-k/top-p, the policy's only without them), so they are recomputed as ours are defined, by one
  teacher-forced forward of prompts + responses under no_grad, in row chunks of bounded size.

The manager (its thread, cache and static tensors) is built for each call and sized to the call's
rows and lengths: on CPU an unsized one fills gigabytes of static tensors (seconds per call).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_rlhf.losses import token_logprobs
from lightning_rlhf.model_outputs import padded_positions
from lightning_rlhf.rollout.base import RolloutEngine
from lightning_rlhf.rollout.sampling import Generation, SamplingOptions, response_mask, tempered


class PagedRollout(RolloutEngine):
    """Continuous batching with paged attention, from the live policy module.

    Args:
        page_size: KV-cache positions per page.
        max_batch_tokens: most tokens one forward carries (prefill chunks and decode tokens
            together); larger prefills fewer chunks, at the cost of larger static buffers.
        attention: the attention the library runs: "sdpa", "paged|eager", or "flash" (its
            flash-attention switch, used where the kernels are installed).
        logprob_chunk_entries: the log-prob forward runs in row chunks whose (rows, R, V) float32
            logits hold at most this many entries (2**26: 256 MiB), at least one row.
    """

    def __init__(
        self,
        page_size: int = 32,
        max_batch_tokens: int = 512,
        attention: Literal["sdpa", "paged|eager", "flash"] = "sdpa",
        logprob_chunk_entries: int = 2**26,
    ) -> None:
        super().__init__()
        self.page_size = page_size
        self.max_batch_tokens = max_batch_tokens
        self.attention = attention
        self.logprob_chunk_entries = logprob_chunk_entries

    @torch.no_grad()
    def generate(
        self, prompt_ids: Tensor, prompt_mask: Tensor, options: SamplingOptions
    ) -> Generation:
        model = self._bound()
        if self.synced:
            raise ValueError(
                "PagedRollout cannot keep FSDP/DeepSpeed ranks in step (its forwards run on a "
                "background thread of their own); set model.rollout to "
                "lightning_rlhf.rollout.HFRollout for sharded training"
            )
        was_training = model.training
        model.eval()  # the library's thread forwards the module as it finds it
        try:
            rows = [ids[keep.bool()].tolist() for ids, keep in zip(prompt_ids, prompt_mask)]
            responses = self._sample(model, rows, options)
            R = max(1, max(map(len, responses)))
            response = prompt_ids.new_full((len(rows), R), self.pad_token_id)
            for i, r in enumerate(responses):
                response[i, : len(r)] = torch.tensor(r, dtype=response.dtype)
            mask = response_mask(response, self.eos_token_id)
            mask = mask * (torch.arange(R, device=mask.device) < _lengths(responses, mask)).long()
            logprobs = self.policy_logprobs(model, prompt_ids, prompt_mask, response, mask, options)
        finally:
            model.train(was_training)
        return Generation(response.masked_fill(mask == 0, self.pad_token_id), mask, logprobs)

    def _sample(self, model: nn.Module, rows: list[list[int]], options: SamplingOptions):
        """Token lists, one per row: the response up to its EOS or ``max_new_tokens``."""
        first = options.min_new_tokens
        if first == 0:
            return self._generate_batch(model, rows, options, first_phase=False)
        head = self._generate_batch(model, rows, options, first_phase=True)
        if first == options.max_new_tokens:
            return head
        rest = self._generate_batch(model, [p + h for p, h in zip(rows, head)], options, False)
        return [h + r for h, r in zip(head, rest)]

    def _generate_batch(self, model, rows: list[list[int]], options: SamplingOptions, first_phase):
        from transformers import ContinuousBatchingConfig, GenerationConfig

        new = options.min_new_tokens if first_phase else options.max_new_tokens
        new -= 0 if first_phase else options.min_new_tokens
        sample = options.temperature > 0
        config = GenerationConfig(
            max_new_tokens=new,
            do_sample=sample,
            temperature=options.temperature if sample else None,
            top_k=options.top_k if sample and options.top_k else None,
            top_p=options.top_p if sample and options.top_p < 1.0 else None,
            # before min_new_tokens: EOS cannot be drawn (suppressed) and nothing stops a row
            eos_token_id=-1 if first_phase else self.eos_token_id,
            suppress_tokens=[self.eos_token_id] if first_phase else None,
            pad_token_id=self.pad_token_id,
        )
        width = max(map(len, rows)) + new
        on_cuda = _device(model).type == "cuda"
        try:
            cb = ContinuousBatchingConfig(
                page_size=self.page_size,
                num_blocks=len(rows) * math.ceil(width / self.page_size) + 1,
                max_batch_tokens=self.max_batch_tokens,
                max_requests_per_batch=len(rows),
                use_cuda_graph=None if on_cuda else False,
                auto_switch_to_flash=self.attention == "flash",
                seed=int(torch.randint(0, 2**31 - 1, (1,))),  # from the caller's seeded stream
            )
        except TypeError as error:  # releases before ~5.20 name and seed it otherwise
            import transformers

            raise RuntimeError(
                "PagedRollout needs a transformers whose ContinuousBatchingConfig takes "
                f"page_size, auto_switch_to_flash and seed (5.24 and 5.25 are tested); "
                f"transformers {transformers.__version__} is installed ({error})"
            ) from error
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        impl = base.config._attn_implementation
        if self.attention == "paged|eager" and impl != "paged|eager":
            base.set_attn_implementation("paged|eager")
        try:
            out = base.generate_batch(
                inputs=rows, generation_config=config, continuous_batching_config=cb,
                progress_bar=False,
            )  # fmt: skip
        finally:
            if base.config._attn_implementation != impl:
                base.set_attn_implementation(impl)
        results = list(out.values())  # in the inputs' order
        failed = [r.request_id for r in results if r.error is not None]
        if len(results) != len(rows) or failed:
            raise RuntimeError(
                f"PagedRollout: transformers' generate_batch returned {len(results)} of "
                f"{len(rows)} requests (failed: {failed}); see its log above"
            )
        return [list(r.generated_tokens)[:new] for r in results]

    def policy_logprobs(self, model, prompt_ids, prompt_mask, response, mask, options) -> Tensor:
        """(B, R) float32 log softmax(logits / T) at the response tokens, 0 off ``mask``: one
        teacher-forced forward of prompt + response, in row chunks."""
        ids = torch.cat([prompt_ids, response], dim=1)  # (B, P + R)
        full_mask = torch.cat([prompt_mask.long(), mask], dim=1)
        positions = padded_positions(full_mask)
        R = response.shape[1]
        vocab = model.get_output_embeddings().weight.shape[0]
        chunk = max(1, self.logprob_chunk_entries // (R * vocab))
        out = []
        for s in range(0, ids.shape[0], chunk):
            logits = model(
                input_ids=ids[s : s + chunk],
                attention_mask=full_mask[s : s + chunk],
                position_ids=positions[s : s + chunk],
                use_cache=False,
                logits_to_keep=R + 1,
            ).logits[:, :-1]  # (b, R, V): position P - 1 + t scores response token t
            out.append(
                token_logprobs(tempered(logits, options.temperature), response[s : s + chunk])
            )
        return torch.cat(out) * mask


def _lengths(responses: list[list[int]], like: Tensor) -> Tensor:
    return torch.tensor([len(r) for r in responses], device=like.device)[:, None]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
