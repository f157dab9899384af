"""configs/grpo.yaml and configs/ppo.yaml through the real CLI with ``model.rollout:
VLLMRollout``: two iterations train, and the engine/trainer mismatch is logged every iteration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import read_metrics, run_cli

from tests.vllm_rollout.conftest import NEEDS_VLLM

pytest.importorskip("vllm.entrypoints.llm", reason=NEEDS_VLLM)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~40 s each on 2 cores: the engine starts, two iterations, a validation
@pytest.mark.parametrize("stage, group", [("grpo", 4), ("ppo", 2)])  # ppo: GAE with a critic
def test_rl_cli_trains_with_the_vllm_engine(tmp_path, task_dir, stage, group):
    from lightning_rlhf.models import export_hf, load_scalar_model, load_tokenizer

    # hidden 128, 4 heads: vLLM's CPU attention needs heads of at least 32
    run_cli("init-model", str(tmp_path / "policy"), "--num-layers", "2", cwd=tmp_path)
    torch.manual_seed(0)
    rm = load_scalar_model(str(tmp_path / "policy"), pad_token_id=0)
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)
    stats = {"reward_stats.json": {"mean": 0.1, "std": 0.5}}
    export_hf(rm, load_tokenizer(str(tmp_path / "policy")), tmp_path / "rm", extra_json=stats)
    reward = {"class_path": "lightning_rlhf.RewardModel", "init_args": {"name_or_path": "rm"}}
    engine = {
        "class_path": "lightning_rlhf.rollout.VLLMRollout",
        "init_args": {"dtype": "float32", "enforce_eager": True},
    }
    run_cli(
        "fit", "--config", str(ROOT / "configs/ppo.yaml"),
        *([] if stage == "ppo" else ["--config", str(ROOT / f"configs/{stage}.yaml")]),
        "--model.model_name_or_path", "policy",
        *(["--model.critic.init_args.name_or_path", "rm"] if stage == "ppo" else []),
        "--model.reward", json.dumps(reward),
        "--model.rollout", json.dumps(engine),
        "--model.sampling.max_new_tokens", "4", "--model.eval_sampling.max_new_tokens", "4",
        "--model.ppo.ppo_epochs", "1", "--model.ppo.num_minibatches", "1",
        "--model.ppo.samples_per_prompt", str(group),
        "--data.train_path", str(task_dir / "prompts_train.jsonl"),
        "--data.val_path", str(task_dir / "prompts_val.jsonl"),
        "--data.num_val_prompts", "4", "--data.batch_size", "4",
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", "logs", "--trainer.callbacks", "[]",
        cwd=tmp_path, threads=1, timeout=600,
    )  # fmt: skip
    metrics = read_metrics(tmp_path / "logs")
    steps = [m for m in metrics.values() if "rollout/logprob_diff_max" in m]
    assert len(steps) == 2  # both iterations sampled with the engine and compared it
    for m in steps:
        # π_old is the trainer's forward, not the engine's: a real, fp32-small difference
        assert 0 < m["rollout/logprob_diff_max"] < 1e-4, m  # ~5e-7 measured
        assert m["rollout/logprob_diff_frac"] == 0
        assert m["rollout/tokens"] == 4 * group * 4  # prompts x group x max_new_tokens
