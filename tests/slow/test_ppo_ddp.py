"""PPO under 2-process DDP on CPU through the CLI: it completes, exports, and the ranks sample
different prompts."""

import json
import os
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[2]

# importable by both ranks (PYTHONPATH): the task oracle, recording which prompts each rank scored
HELPERS = """
import json, os
import torch
from lightning_rlhf.rewards import TaskOracle

class RecordingOracle(TaskOracle):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def __call__(self, prompts, responses):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else -1
        with open(os.path.join(self.out_dir, f"rank{rank}.jsonl"), "a") as f:
            f.write(json.dumps(prompts) + "\\n")
        return super().__call__(prompts, responses)
"""

ITERATIONS = 3


@pytest.mark.slow
def test_ddp_two_ranks_train_on_different_prompts_and_export(tmp_path, task_dir):
    from transformers import AutoModelForCausalLM

    from lightning_rlhf.tiny import init_tiny_model

    d = tmp_path
    init_tiny_model(d / "policy", hidden_size=32, num_layers=2)
    (d / "helpers").mkdir()
    (d / "helpers" / "ddp_test_helpers.py").write_text(HELPERS)
    (d / "seen").mkdir()
    reward = {
        "class_path": "ddp_test_helpers.RecordingOracle",
        "init_args": {"out_dir": str(d / "seen")},
    }
    export = {"class_path": "lightning_rlhf.HFExport", "init_args": {"dirpath": str(d / "export")}}
    args = [
        "fit", "--config", str(ROOT / "configs/ppo.yaml"),
        "--model.model_name_or_path", str(d / "policy"),
        "--model.reward", json.dumps(reward),
        "--model.critic", "lightning_rlhf.ValueHead",  # a value head on the policy's trunk
        "--model.sampling.max_new_tokens", "4",
        "--model.eval_sampling.max_new_tokens", "4",
        "--model.ppo.ppo_epochs", "1", "--model.ppo.num_minibatches", "2",
        "--model.ppo.samples_per_prompt", "1",
        "--data.train_path", str(task_dir / "prompts_train.jsonl"),
        "--data.val_path", str(task_dir / "prompts_val.jsonl"),
        "--data.num_val_prompts", "8",
        "--data.batch_size", "8",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_steps", str(ITERATIONS * 2),
        "--trainer.val_check_interval", "2",  # iterations: validation under DDP too
        "--trainer.log_every_n_steps", "1",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(d / "logs"),
        "--trainer.callbacks", json.dumps([export]),
        "--trainer.enable_checkpointing", "false",
    ]  # fmt: skip
    path = [str(d / "helpers"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = run_cli(*args, cwd=d, env=env, check=False, threads=1, timeout=500)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "exported to" in proc.stdout + proc.stderr

    lines = (task_dir / "prompts_train.jsonl").read_text().splitlines()
    train_prompts = {json.loads(line)["prompt"] for line in lines}
    seen = {}  # the training rollouts each rank scored (the reward also scores validation answers)
    for rank in (0, 1):
        calls = (d / "seen" / f"rank{rank}.jsonl").read_text().splitlines()
        batches = [json.loads(line) for line in calls]
        seen[rank] = [b for b in batches if set(b) <= train_prompts]
        assert len(seen[rank]) < len(batches)  # validation was scored on this rank too
    assert len(seen[0]) == len(seen[1]) == ITERATIONS  # one rollout of 8 prompts per iteration
    for it in range(ITERATIONS):
        assert len(seen[0][it]) == len(seen[1][it]) == 8
        assert not set(seen[0][it]) & set(seen[1][it]), it  # each rank its own shard
    all_prompts = [p for rank in (0, 1) for batch in seen[rank] for p in batch]
    assert len(set(all_prompts)) == len(all_prompts)  # no prompt twice within the epoch

    model = AutoModelForCausalLM.from_pretrained(d / "export")
    initial = AutoModelForCausalLM.from_pretrained(d / "policy")
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), initial.parameters()))
    metrics = next((d / "logs").rglob("metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    rows = [dict(zip(header, r.split(","))) for r in metrics[1:]]
    assert sum(1 for r in rows if r.get("train/reward")) == ITERATIONS
    assert any(r.get("val/reward") for r in rows)
