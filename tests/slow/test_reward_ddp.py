"""The reward model's validation metrics under 2-process DDP on CPU equal the single-process ones."""

import json
import subprocess
import sys

import pytest

# Run as a script, so that strategy="ddp" can launch the second rank by re-running it.
SCRIPT = """
import json, sys
import lightning as L
import torch
from lightning_rlhf import PreferenceDataModule, RewardModule
from lightning_rlhf.models import sequence_scores

model_dir, pairs, devices, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
L.seed_everything(0)
module = RewardModule(model_dir)
module.configure_model()  # before the Trainer: the same seeded score head on every rank
dm = PreferenceDataModule(train_path=pairs, val_path=pairs, tokenizer=model_dir, batch_size=4)
trainer = L.Trainer(
    accelerator="cpu",
    devices=devices,
    strategy="ddp" if devices > 1 else "auto",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
metrics = trainer.validate(module, dm, verbose=False)[0]
if trainer.is_global_zero:
    wins = []
    with torch.no_grad():
        for e in dm.val_set:
            c, r = (
                sequence_scores(module.model, torch.tensor([s]), torch.ones(1, len(s), dtype=int))
                for s in (e["chosen_ids"], e["rejected_ids"])
            )
            wins.append(bool(c > r))
    result = {"world_size": trainer.world_size, "metrics": metrics, "wins": wins}
    result["stats"] = module.reward_stats
    with open(out, "w") as f:
        json.dump(result, f)
"""


def run(script, model_dir, pairs, devices, out):
    proc = subprocess.run(
        [sys.executable, str(script), model_dir, pairs, str(devices), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_ddp_validation_accuracy_equals_single_process(tiny_model_dir, task_dir, tmp_path):
    # 16 pairs, batch 4: each of 2 ranks gets 8 pairs in 2 full batches, so the DistributedSampler
    # pads nothing (a repeated row would count twice) and the two runs see exactly the same pairs.
    rows = (task_dir / "pref_val.jsonl").read_text().splitlines()[:16]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(rows) + "\n")
    script = tmp_path / "validate.py"
    script.write_text(SCRIPT)
    one = run(script, tiny_model_dir, str(pairs), 1, tmp_path / "one.json")
    two = run(script, tiny_model_dir, str(pairs), 2, tmp_path / "two.json")
    assert (one["world_size"], two["world_size"]) == (1, 2)

    wins = one["wins"]
    assert len(wins) == 16
    accuracy = sum(wins) / 16
    rank0 = sum(wins[0::2]) / 8  # rank 0's shard: the sampler deals rows out in turn
    assert rank0 != accuracy  # an unsynced metric (rank 0's alone) would be caught
    assert one["metrics"]["val/accuracy"] == pytest.approx(accuracy, abs=1e-7)
    assert two["metrics"]["val/accuracy"] == one["metrics"]["val/accuracy"]
    for key in ("val/chosen_reward", "val/rejected_reward", "val/margin"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], abs=1e-6), key
    assert one["stats"]["count"] == two["stats"]["count"] == 32  # every rank's rewards gathered
    for key in ("mean", "std"):
        assert two["stats"][key] == pytest.approx(one["stats"][key], abs=1e-6), key
