"""Every engine runs the shipped RL configs through the real CLI: ``model.rollout`` by class_path
on configs/ppo.yaml (GAE, a critic) and configs/grpo.yaml (groups of 4), 2 iterations on CPU."""

import json
from pathlib import Path

import pytest
import torch
from cli_runner import read_metrics, run_cli

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny policy through ``init-model``, and a reward model exported from it."""
    from lightning_rlhf.models import export_hf, load_scalar_model, load_tokenizer

    d = tmp_path_factory.mktemp("rollout_cli")
    run_cli("init-model", str(d / "policy"), "--hidden-size", "32", "--num-layers", "2", cwd=d)
    torch.manual_seed(0)
    rm = load_scalar_model(str(d / "policy"), pad_token_id=0)
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)
    export_hf(rm, load_tokenizer(str(d / "policy")), d / "rm")
    return d


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["HFRollout", "PagedRollout"])
@pytest.mark.parametrize("config", ["ppo", "grpo"])
def test_rl_configs_run_with_each_engine(models, task_dir, config, engine):
    d, name = models, f"{config}-{engine}"
    reward = {
        "class_path": "lightning_rlhf.RewardModel",
        "init_args": {"name_or_path": str(d / "rm")},
    }
    steps_per_iteration = 1  # ppo_epochs 1 x num_minibatches 1
    group = 4 if config == "grpo" else 1
    run_cli(
        "fit", "--config", str(ROOT / "configs/ppo.yaml"),
        *([] if config == "ppo" else ["--config", str(ROOT / f"configs/{config}.yaml")]),
        "--model.model_name_or_path", str(d / "policy"),
        "--model.reward", json.dumps(reward),
        *(["--model.critic.init_args.name_or_path", str(d / "rm")] if config == "ppo" else []),
        "--model.ppo.samples_per_prompt", str(group),
        "--model.rollout", json.dumps({"class_path": f"lightning_rlhf.rollout.{engine}"}),
        "--model.sampling.max_new_tokens", "6",
        "--model.eval_sampling.max_new_tokens", "4",
        "--model.ppo.ppo_epochs", "1", "--model.ppo.num_minibatches", "1",
        "--data.train_path", str(task_dir / "prompts_train.jsonl"),
        "--data.val_path", str(task_dir / "prompts_val.jsonl"),
        "--data.num_val_prompts", "4",
        "--data.batch_size", "4",
        "--trainer.max_steps", str(ITERATIONS * steps_per_iteration),
        "--trainer.val_check_interval", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(d / name / "logs"),
        "--trainer.callbacks", json.dumps([
            {"class_path": "lightning_rlhf.HFExport", "init_args": {"dirpath": str(d / name / "x")}}
        ]),
        cwd=d, threads=1, timeout=300,
    )  # fmt: skip
    metrics = [m for m in read_metrics(d / name / "logs").values() if "rollout/tokens" in m]
    assert len(metrics) == ITERATIONS
    rows = 4 * group
    for m in metrics:
        assert 1 <= m["rollout/response_length_mean"] <= m["rollout/response_length_max"] <= 6
        assert m["rollout/tokens"] == pytest.approx(rows * m["rollout/response_length_mean"])
        assert m["rollout/tokens_per_s"] > 0 and 0 <= m["rollout/truncated"] <= 1
    assert (d / name / "x" / "model.safetensors").exists()
