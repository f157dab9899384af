"""Operations per SFT training step: ours under a Lightning Trainer against a raw PyTorch loop.

    .venv/bin/python benchmarks/step_ops.py                      # llama-5m, fp32 (~30 s)
    .venv/bin/python benchmarks/step_ops.py --precision bf16-mixed

On a GPU a model of a few hundred million parameters is launch-bound at modest batch sizes (the
CPU issues the kernels more slowly than the GPU runs them), so every operation a framework adds to
a step costs time there, and so does each read of a device value on the host (``.item()``, an
``if`` on a tensor, boolean indexing), which waits for the queued kernels. This counts the aten
operations that would launch work (views and allocations left out) and the host reads in the
third training step of each side, on the CPU, and lists where the operations differ: fused
optimiser and clipping on both sides, completion-only loss on ours, full-sequence cross-entropy
on the raw loop.
"""

from __future__ import annotations

import argparse
import collections
import functools
from pathlib import Path

import assets  # benchmarks/ is on sys.path: it holds this script
import lightning as L
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

NO_WORK = {  # views, metadata and allocations: no kernel on a GPU
    "view", "t", "transpose", "as_strided", "reshape", "expand", "unsqueeze", "squeeze", "permute",
    "slice", "select", "empty", "empty_strided", "_unsafe_view", "alias", "detach", "lift_fresh",
    "resolve_conj", "resolve_neg", "split", "unbind", "split_with_sizes", "_reshape_alias",
    "new_empty", "empty_like", "new_empty_strided", "set_", "is_same_size", "_local_scalar_dense",
}  # fmt: skip
# operations that read a device value on the host (a scalar, or a result's data-dependent size):
# on a GPU each one waits for every kernel queued before it
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2"}


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.host_reads: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name not in NO_WORK:
            self.ops[name] += 1
        if name in HOST_READS or (name.startswith(("index", "_index_put")) and _bool_index(args)):
            self.host_reads[name] += 1  # boolean indexing: the result's size is the mask's sum
        return func(*args, **(kwargs or {}))


def ours(model_dir: str, data: str, precision: str, steps: int) -> Count:
    from lightning_rlhf.data.sft import SFTDataModule
    from lightning_rlhf.models import ModelOptions
    from lightning_rlhf.modules.sft import SFTModule
    from lightning_rlhf.optim import ScheduleOptions

    counts: list[Count] = []

    class CountSteps(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            self.mode = Count()
            self.mode.__enter__()

        def on_train_batch_end(self, *args) -> None:
            self.mode.__exit__(None, None, None)
            counts.append(self.mode)

    module = SFTModule(
        model_dir,
        model=ModelOptions(dtype="float32", attn_implementation="sdpa"),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.0, fused=True),
        schedule=ScheduleOptions(warmup_steps=0, decay="constant"),
        oracle=None,
    )
    data_module = SFTDataModule(
        data, None, model_dir, val_fraction=0.0, max_length=256, batch_size=4, seed=0
    )
    L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[CountSteps()],
    ).fit(module, datamodule=data_module)
    return counts[-1]


def raw(model_dir: str, precision: str, steps: int) -> Count:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    ids = torch.randint(3, 1000, (4, 128))
    labels = ids.masked_fill(torch.arange(128) < 64, -100)  # loss on the second half
    for _ in range(steps):
        mode = Count()
        with mode:
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed"):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-5m", choices=sorted(assets.MODELS))
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = assets.build(Path(__file__).parent / ".cache", args.model, assets.DataSpec())
    model_dir, data = str(root / "lm"), str(root / "data" / "sft_fixed.jsonl")
    ours_step, raw_step = (
        ours(model_dir, data, args.precision, 3),
        raw(model_dir, args.precision, 3),
    )
    reads = {side: dict(step.host_reads) for side, step in (("ours", ours_step), ("raw", raw_step))}
    a, b = ours_step.ops, raw_step.ops
    print(
        f"\n{args.model}, {args.precision}: operations per step, ours {a.total()}, raw {b.total()}"
        f"; host reads of device values {reads}"
    )
    for name in sorted(a.keys() | b.keys(), key=lambda k: -abs(a[k] - b[k])):
        if a[name] != b[name]:
            print(f"  {name:24s} ours {a[name]:5d}  raw {b[name]:5d}  ({a[name] - b[name]:+d})")


if __name__ == "__main__":
    main()
