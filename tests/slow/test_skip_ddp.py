"""nan_policy: skip under 2-process DDP on CPU: a NaN loss on one rank skips the step on both."""

import json
import subprocess
import sys

import pytest

# Run as a script, so that strategy="ddp" can launch the second rank by re-running it.
SCRIPT = """
import json, sys
import lightning as L
import torch
from lightning_rlhf import SFTDataModule
from lightning_rlhf.modules.sft import SFTModule

model_dir, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
L.seed_everything(0)
module = SFTModule(model_dir, nan_policy="skip")
loss_fn, calls = module._loss, []


def poisoned(batch):  # rank 1's third loss is NaN; rank 0's are all finite
    loss, stats = loss_fn(batch)
    calls.append(1)
    if len(calls) == 3 and module.global_rank == 1:
        loss = loss * float("nan")
    return loss, stats


module._loss = poisoned


class Moved(L.Callback):
    def __init__(self):
        self.moved = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = list(pl_module.parameters())
        self.moved.append(any(not torch.equal(a, b) for a, b in zip(self.before, now)))


moved = Moved()
trainer = L.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_steps=5, logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    limit_val_batches=0, callbacks=[moved],
)
data_module = SFTDataModule(data, None, model_dir, val_fraction=0.0, batch_size=4, max_length=32)
trainer.fit(module, datamodule=data_module)
params = [p.detach().double() for p in module.parameters()]
with open(f"{out}.{trainer.global_rank}", "w") as f:
    json.dump({
        "moved": moved.moved,
        "sum": float(sum(p.sum() for p in params)),
        "finite": all(bool(torch.isfinite(p).all()) for p in params),
        "steps": trainer.global_step,
    }, f)
"""


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_skips_the_step_on_every_rank(tiny_model_dir, task_dir, tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    out = tmp_path / "rank"
    proc = subprocess.run(
        [sys.executable, str(script), tiny_model_dir, str(task_dir / "sft_train.jsonl"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    ranks = [json.loads((tmp_path / f"rank.{r}").read_text()) for r in (0, 1)]
    for r in ranks:
        # the third step changed no weight on either rank, and training went on
        assert r["moved"] == [True, True, False, True, True] and r["steps"] == 5 and r["finite"]
    assert ranks[0]["sum"] == ranks[1]["sum"]  # the ranks' weights did not drift apart
    assert "non-finite loss" in proc.stderr and "step skipped" in proc.stderr
