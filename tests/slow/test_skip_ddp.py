"""nan_policy: skip under 2-process DDP on CPU: a NaN loss on one rank skips the step on both."""

import json
import os
import signal
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


def run_two_ranks(tmp_path, script: str, *args: str) -> tuple[list[dict], str]:
    """Runs ``script`` (which launches its second rank itself) with ``args`` and the output
    prefix; returns each rank's JSON and the stderr. Both ranks are killed if they hang."""
    path = tmp_path / "fit.py"
    path.write_text(script)
    proc = subprocess.Popen(
        [sys.executable, str(path), *args, str(tmp_path / "rank")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # both ranks in one process group, to stop them if they hang
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the ranks hung: {stderr[-3000:]}")
    assert proc.returncode == 0, f"{stdout[-3000:]}\n{stderr[-3000:]}"
    return [json.loads((tmp_path / f"rank.{r}").read_text()) for r in (0, 1)], stderr


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_skips_the_step_on_every_rank(tiny_model_dir, task_dir, tmp_path):
    ranks, stderr = run_two_ranks(
        tmp_path, SCRIPT, tiny_model_dir, str(task_dir / "sft_train.jsonl")
    )
    for r in ranks:
        # the third step changed no weight on either rank, and training went on
        assert r["moved"] == [True, True, False, True, True] and r["steps"] == 5 and r["finite"]
    assert ranks[0]["sum"] == ranks[1]["sum"]  # the ranks' weights did not drift apart
    assert "non-finite loss" in stderr and "step skipped" in stderr


# PPO under manual optimisation: rank 1's loss is NaN in one minibatch, rank 0's rewards are NaN
# in one rollout. A rank that skipped alone would leave the other waiting in DDP's gradient
# all-reduce (a hang) or its weights apart.
PPO_SCRIPT = """
import json, sys
from functools import partial
import lightning as L
import torch
from lightning_rlhf import PromptDataModule, ValueHead
from lightning_rlhf.modules.ppo import PPOModule, PPOOptions
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.rollout import SamplingOptions

model_dir, prompts, out = sys.argv[1], sys.argv[2], sys.argv[3]
L.seed_everything(0)
rollouts = []


def reward(prompts, responses):  # rank 0's second rollout scores NaN
    rollouts.append(1)
    nan = len(rollouts) == 2 and torch.distributed.get_rank() == 0
    return torch.full((len(responses),), float("nan") if nan else 0.5)


module = PPOModule(
    model_dir, reward=reward, critic=ValueHead(), nan_policy="skip",
    optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0),
    schedule=ScheduleOptions(warmup_steps=0, decay="constant"),
    sampling=SamplingOptions(max_new_tokens=4),
    ppo=PPOOptions(ppo_epochs=1, num_minibatches=2), log_samples_every_n_iterations=0,
)
loss_fn, calls = module._loss, []


def poisoned(r, idx, *minibatch):  # rank 1's third minibatch loss is NaN
    loss, stats = loss_fn(r, idx, *minibatch)
    calls.append(1)
    if len(calls) == 3 and module.global_rank == 1:
        loss = loss * float("nan")
    return loss, stats


module._loss = poisoned
data_module = PromptDataModule(
    prompts, None, model_dir, val_fraction=0.0, batch_size=4, max_prompt_length=32
)
trainer = L.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_steps=6, logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    limit_val_batches=0,
)
trainer.fit(module, datamodule=data_module)
params = [p.detach().double() for p in module.parameters()]
with open(f"{out}.{trainer.global_rank}", "w") as f:
    json.dump({
        "sum": float(sum(p.sum() for p in params)),
        "finite": all(bool(torch.isfinite(p).all()) for p in params),
        "steps": trainer.global_step,
        "rollouts": len(rollouts),
        "minibatches": len(calls),
    }, f)
"""


@pytest.mark.slow
def test_ppo_skips_a_minibatch_and_a_rollout_on_every_rank(tiny_model_dir, task_dir, tmp_path):
    ranks, stderr = run_two_ranks(
        tmp_path, PPO_SCRIPT, tiny_model_dir, str(task_dir / "prompts_train.jsonl")
    )
    for r in ranks:
        # 2 optimizer steps per rollout; on both ranks rollout 2 was skipped whole (rank 0's
        # rewards) and one minibatch of rollout 3 (rank 1's loss): 5 steps after 4 rollouts, and
        # the fifth stops at max_steps 6 after one minibatch: 7 minibatches
        assert (r["steps"], r["rollouts"], r["minibatches"], r["finite"]) == (6, 5, 7, True), r
    assert ranks[0]["sum"] == ranks[1]["sum"]  # the ranks' weights did not drift apart
    assert "non-finite rewards" in stderr and "non-finite loss" in stderr


# Non-finite weights on rank 1 alone (as a sharded optimizer step could leave them): at the next
# checkpoint both ranks must stop together, rank 0 told "on another rank", and nothing written.
WEIGHTS_SCRIPT = """
import json, sys
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_rlhf import SFTDataModule
from lightning_rlhf.modules.sft import SFTModule

model_dir, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
L.seed_everything(0)


class InfOnRankOne(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2 and trainer.global_rank == 1:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("inf"))


module = SFTModule(model_dir)
ckpt = ModelCheckpoint(dirpath=out + ".ckpt", every_n_train_steps=1, save_last=True)
trainer = L.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_steps=5, logger=False,
    enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    callbacks=[InfOnRankOne(), ckpt],  # the poison runs before the checkpoint of its step
)
data_module = SFTDataModule(data, None, model_dir, val_fraction=0.0, batch_size=4, max_length=32)
try:
    trainer.fit(module, datamodule=data_module)
    message = None
except FloatingPointError as err:
    message = str(err)
with open(f"{out}.{trainer.global_rank}", "w") as f:
    json.dump({"message": message, "steps": trainer.global_step}, f)
"""


@pytest.mark.slow
def test_non_finite_weights_on_one_rank_stop_every_rank_before_the_checkpoint(
    tiny_model_dir, task_dir, tmp_path
):
    """Inf weights on one DDP rank -> every rank stops at the checkpoint, none written from them"""
    import torch

    ranks, _ = run_two_ranks(
        tmp_path, WEIGHTS_SCRIPT, tiny_model_dir, str(task_dir / "sft_train.jsonl")
    )
    assert "non-finite weights (on another rank) after step 2" in ranks[0]["message"]
    assert "non-finite weights (1 of " in ranks[1]["message"]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2
    from lightning_rlhf.models import ModelOptions
    from lightning_rlhf.optim import ScheduleOptions
    from lightning_rlhf.rollout import SamplingOptions

    with torch.serialization.safe_globals([ModelOptions, ScheduleOptions, SamplingOptions]):
        saved = torch.load(tmp_path / "rank.ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 1  # step 2's checkpoint was refused on both ranks
