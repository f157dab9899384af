"""VLLMRollout: sampling with a vLLM engine colocated in each trainer process.

The engine is created at the first rollout from the policy's exported weights (a temporary
directory: config.json and safetensors of the effective weights, LoRA merged) and holds its own
copy of the policy. Before each rollout the module tells it the weights' version; when that
changed, the effective weights are pushed through the worker's ``reload_weights``
(``vllm_worker.WeightSync``): tensor by tensor to a worker in this process, in bucket files to
one in another; then the prefix cache is reset.

Distribution: the engine samples at temperature 1 from logits scaled by 1/T in the model's own
logits processor, so top-k, top-p and the EOS ban act on softmax(logits / T) and the sampled
tokens' raw log-probs are log softmax(logits / T): the policy's at the sampling temperature,
before top-k/top-p shaped the draw, as every engine returns. Temperature 0 decodes greedily
with the scale 1e6 (``tempered``'s 1e-6 floor).

vLLM is an optional dependency (``pip install "lightning_rlhf[vllm]"``): this module imports
without it, and the engine raises with the install hint at its first use.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_rlhf.rollout.base import RolloutEngine
from lightning_rlhf.rollout.cache import full_parameters
from lightning_rlhf.rollout.sampling import Generation, SamplingOptions, response_mask
from lightning_rlhf.rollout.weights import base_causal_lm, buckets, effective_weights

log = logging.getLogger(__name__)

INSTALL_HINT = 'VLLMRollout needs vLLM: pip install "lightning_rlhf[vllm]" (docs/rollout.md)'
_GREEDY_SCALE = 1e6  # tempered(): temperature 0 counts as 1e-6


def import_vllm():
    """The ``vllm`` module, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    if not hasattr(vllm, "LLM"):  # a directory named vllm on sys.path, not the package
        raise ImportError(f"{INSTALL_HINT} ('vllm' is {list(getattr(vllm, '__path__', []))})")
    return vllm


class VLLMRollout(RolloutEngine):
    """Sampling with vLLM, one engine per trainer process (each DDP rank its own, over its
    own prompts), weights pushed after every policy update.

    Args:
        gpu_memory_utilization: share of the GPU vLLM takes for its weights and KV cache; the
            rest is training's (colocated: both live on the same card, docs/rollout.md).
        max_model_len: longest prompt + response the engine serves (None: the model's
            ``max_position_embeddings``).
        dtype: the engine's weights and activations ("auto": the policy's parameter dtype).
        enable_prefix_caching: reuse the KV cache of shared prompt prefixes (a GRPO group's
            prompt is computed once); reset after every weight push.
        seed: the engine's sampling seed; rank r of a distributed run uses ``seed + r``.
        tensor_parallel_size: GPUs one engine spans (a rank that owns several).
        sleep_mode: on CUDA, the engine sleeps between rollouts (level 2: KV cache and weights
            freed, as the weights are pushed again on waking) and wakes before the next one,
            weights first, then the KV cache. On CPU it is a no-op (logged once).
        enforce_eager: no CUDA graphs / torch.compile in the engine: a faster start, a slower
            decode (on CPU the compile takes ~30 s of start-up).
        bucket_mb: to a worker in another process, the weights go in files of at most this
            many MiB; a push holds one bucket of host tensors at a time, and its files (in
            /dev/shm where there is one) add up to the model's size until the engine read them.
        engine_kwargs: further ``vllm.LLM`` arguments, passed as they are.
    """

    live_logprobs = False  # its own copy and kernels: π_old comes from the trainer's forward

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        enable_prefix_caching: bool = True,
        seed: int = 0,
        tensor_parallel_size: int = 1,
        sleep_mode: bool = False,
        enforce_eager: bool = False,
        bucket_mb: int = 512,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"VLLMRollout.gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if tensor_parallel_size < 1 or bucket_mb < 1:
            raise ValueError(
                "VLLMRollout.tensor_parallel_size and bucket_mb must be >= 1, got "
                f"{tensor_parallel_size} and {bucket_mb}"
            )
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.enable_prefix_caching = enable_prefix_caching
        self.seed = seed
        self.tensor_parallel_size = tensor_parallel_size
        self.sleep_mode = sleep_mode
        self.enforce_eager = enforce_eager
        self.bucket_mb = bucket_mb
        self.engine_kwargs = dict(engine_kwargs or {})
        self.llm = None  # the vllm.LLM, created at the first refresh
        self.pushes = 0  # weight pushes into a running engine (the first load is not one)
        self._tied = False
        self._in_process = False  # pushes hand the worker tensors (True) or files (False)
        self._scale: float | None = None  # the logit scale factor the engine holds
        self._asleep = False
        self._sleep_noted = False

    # ------------------------------------------------------------------------ weights
    def refresh(self, model: nn.Module) -> None:
        """Start the engine from ``model``'s weights, or push them into the running one."""
        import_vllm()
        if self.llm is None:
            self._start(model)
        elif self._asleep:
            self._wake()  # pushes the weights
        else:
            self._push(model)

    def _push(self, model: nn.Module) -> None:
        if self._in_process:  # the worker takes the live tensors, one at a time
            with full_parameters(self.sharded):
                weights = effective_weights(model)
                self.llm.collective_rpc("lightning_rlhf_load_tensors", args=(weights, self._tied))
        else:
            with tempfile.TemporaryDirectory(prefix="lightning_rlhf_push_", dir=_scratch()) as tmp:
                paths = self._export(model, Path(tmp))
                self.llm.collective_rpc("lightning_rlhf_load", args=(paths, self._tied))
        self.llm.reset_prefix_cache()  # cached prefixes hold the old weights' keys and values
        self.pushes += 1

    def _export(self, model: nn.Module, out: Path) -> list[str]:
        # FSDP / ZeRO-3: the full tensors, gathered once for the push (every rank holds the
        # whole policy meanwhile, as HFRollout.gather_full_params does; docs/vllm.md)
        with full_parameters(self.sharded):
            return _write_buckets(model, out, self.bucket_mb << 20)

    def _start(self, model: nn.Module) -> None:
        vllm = import_vllm()
        base = base_causal_lm(model)
        self._tied = bool(getattr(base.config, "tie_word_embeddings", False))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: in-process
        rank, world = _rank_world()
        kwargs = dict(
            dtype=_dtype_name(model) if self.dtype == "auto" else self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            enable_prefix_caching=self.enable_prefix_caching,
            seed=self.seed + rank // self.tensor_parallel_size,
            tensor_parallel_size=self.tensor_parallel_size,
            enforce_eager=self.enforce_eager,
            enable_sleep_mode=self.sleep_mode and torch.cuda.is_available(),
            skip_tokenizer_init=True,  # prompts and responses are token ids
            logprobs_mode="raw_logprobs",  # log softmax of the (scaled) logits, before top-k/p
            worker_extension_cls="lightning_rlhf.rollout.vllm_worker.WeightSync",
        )
        if world > 1:  # every rank is one engine of a torchrun-style launch, as TRL colocates
            kwargs["distributed_executor_backend"] = "external_launcher"
        kwargs.update(self.engine_kwargs)
        # workers in this process: the engine core in-process, and one worker or one per rank
        self._in_process = os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and (
            kwargs["tensor_parallel_size"] == 1
            or kwargs.get("distributed_executor_backend") == "external_launcher"
        )
        with tempfile.TemporaryDirectory(prefix="lightning_rlhf_policy_", dir=_scratch()) as tmp:
            base.config.save_pretrained(tmp)
            self._export(model, Path(tmp))
            self.llm = vllm.LLM(model=tmp, **kwargs)  # weights are read here; tmp can go
        self._scale = None

    # ------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self, prompt_ids: Tensor, prompt_mask: Tensor, options: SamplingOptions
    ) -> Generation:
        vllm = import_vllm()
        model = self._bound()
        if self.llm is None:  # sampled without load_weights: start from the bound policy
            self.load_weights(model, self.weight_version or 0)
        self._wake()
        self._set_scale(_GREEDY_SCALE if options.temperature == 0 else 1.0 / options.temperature)
        from vllm.inputs import TokensPrompt

        keep = prompt_mask.bool().cpu()
        prompts = [
            TokensPrompt(prompt_token_ids=row[m].tolist()) for row, m in zip(prompt_ids.cpu(), keep)
        ]
        outputs = self.llm.generate(prompts, self._params(vllm, options), use_tqdm=False)
        self._sleep()
        return self._generation(outputs, prompt_ids.device)

    def _params(self, vllm, options: SamplingOptions):
        return vllm.SamplingParams(
            n=1,
            temperature=0.0 if options.temperature == 0 else 1.0,  # 1/T is in the logit scale
            top_k=options.top_k if options.top_k > 0 else -1,
            top_p=options.top_p,
            min_tokens=options.min_new_tokens,
            max_tokens=options.max_new_tokens,
            stop_token_ids=[self.eos_token_id],
            logprobs=0,  # the sampled token's only
            detokenize=False,
        )

    def _generation(self, outputs, device: torch.device) -> Generation:
        rows = [out.outputs[0] for out in outputs]
        width = max(1, max(len(c.token_ids) for c in rows))
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros(len(rows), width, dtype=torch.float32)
        for i, c in enumerate(rows):
            tokens = list(c.token_ids)
            ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            logprobs[i, : len(tokens)] = torch.tensor(
                [step[t].logprob for step, t in zip(c.logprobs, tokens)], dtype=torch.float32
            )
        lengths = torch.tensor([len(c.token_ids) for c in rows])  # (B,) EOS included
        mask = (torch.arange(width) < lengths[:, None]).long() * response_mask(
            ids, self.eos_token_id
        )
        return Generation(
            ids.masked_fill(mask == 0, self.pad_token_id).to(device),
            mask.long().to(device),
            (logprobs * mask).to(device),
        )

    def _set_scale(self, factor: float) -> None:
        if factor != self._scale:
            self.llm.collective_rpc("lightning_rlhf_logit_scale", args=(factor,))
            self._scale = factor

    # ------------------------------------------------------------------------ sleep mode
    def _sleep(self) -> None:
        if not self.sleep_mode:
            return
        if not torch.cuda.is_available():
            if not self._sleep_noted:
                log.info("VLLMRollout.sleep_mode: vLLM cannot sleep on CPU; the engine stays up")
                self._sleep_noted = True
            return
        self.llm.sleep(level=2)  # weights too: the next rollout pushes them again
        self._asleep = True

    def _wake(self) -> None:
        if not self._asleep:
            return
        self.llm.wake_up(tags=["weights"])  # room for the weights before the KV cache
        self._asleep = False
        self._push(self._bound())  # level 2 discarded the weights: push them whatever the version
        self.llm.wake_up(tags=["kv_cache"])


def _write_buckets(model: nn.Module, out: Path, bucket_bytes: int) -> list[str]:
    from safetensors.torch import save_file

    paths = []
    for i, bucket in enumerate(buckets(effective_weights(model), bucket_bytes)):
        path = out / f"model-{i:05d}.safetensors"
        save_file(bucket, str(path), metadata={"format": "pt"})
        paths.append(str(path))
        del bucket  # one bucket on the host at a time
    return paths


def _scratch() -> str | None:
    """A RAM-backed directory for the weight files where there is one (Linux /dev/shm)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _dtype_name(model: nn.Module) -> str:
    dtype = next(model.parameters()).dtype
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(
        dtype, "auto"
    )
