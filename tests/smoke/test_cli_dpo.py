"""The real CLI in a subprocess: configs/dpo.yaml trains, validates with the oracle and exports."""

import csv
import json
from pathlib import Path

import torch
from cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_dpo_config_trains_logs_and_exports(tmp_path, tiny_model_dir, task_dir):
    """The tiny model, 20 steps of 16 pairs, two validations on 64 pairs and 16 prompts."""
    from safetensors.torch import load_file

    d, base = tmp_path, Path(tiny_model_dir)
    export = {"class_path": "lightning_rlhf.HFExport", "init_args": {"dirpath": str(d / "dpo")}}
    run_cli(
        "fit", "--config", str(ROOT / "configs/dpo.yaml"),
        "--model.model_name_or_path", str(base),
        "--model.optimizer.init_args.lr", "0.005",
        "--model.eval_sampling.max_new_tokens", "4",
        "--data.train_path", str(task_dir / "pref_train.jsonl"),
        "--data.val_path", str(task_dir / "pref_val.jsonl"),
        "--data.batch_size", "16", "--data.num_val_prompts", "16",
        "--trainer.max_steps", "20", "--trainer.val_check_interval", "10",
        "--trainer.limit_val_batches", "4", "--trainer.log_every_n_steps", "5",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(d / "logs"),
        "--trainer.callbacks", json.dumps([export]),
        "--trainer.enable_checkpointing", "false",
        cwd=d, threads=1, timeout=300,
    )  # fmt: skip
    with next((d / "logs").rglob("metrics.csv")).open() as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    for key in ("loss", "accuracy", "policy_accuracy", "chosen_reward", "chosen_logratio"):
        assert f"train/{key}" in logged and f"val/{key}" in logged, key
    assert "val/oracle_score" in logged
    val_steps = [int(r["step"]) for r in rows if r.get("val/policy_accuracy")]
    assert val_steps == [9, 19]  # every 10 training steps
    stats = json.loads((d / "dpo" / "dpo_stats.json").read_text())
    assert stats["step"] == 20 and 0 <= stats["val/policy_accuracy"] <= 1
    before, after = load_file(base / "model.safetensors"), load_file(d / "dpo/model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
