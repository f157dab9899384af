"""The real CLI in a subprocess: SFT trains, exports a loadable model, and beats the untrained one."""

import json
from pathlib import Path

import pytest
import yaml
from cli_runner import run_cli

from lightning_rlhf.evaluate import evaluate_policy

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd, check=True):
    return run_cli(*args, cwd=cwd, check=check)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """Default-size model, 300 steps of the shipped config with a CSV logger (~40 s on 2 cores)."""
    d = tmp_path_factory.mktemp("sft_cli")
    cli("init-model", str(d / "base"), cwd=d)
    cli("make-data", str(d / "task"), "--scale", "0.25", cwd=d)
    args = [
        "fit", "--config", str(ROOT / "configs/sft.yaml"),
        "--model.model_name_or_path", str(d / "base"),
        "--data.train_path", str(d / "task/sft_train.jsonl"),
        "--data.val_path", str(d / "task/sft_val.jsonl"),
        "--data.num_val_prompts", "64",
        "--trainer.max_steps", "300", "--trainer.val_check_interval", "150",
        "--trainer.log_every_n_steps", "10",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(d / "logs"),
        # a list replaces the shipped config's callbacks
        "--trainer.callbacks", json.dumps([{"class_path": "lightning_rlhf.callbacks.HFExport",
                                            "init_args": {"dirpath": str(d / "sft")}}]),
        "--trainer.enable_checkpointing", "false",
    ]  # fmt: skip
    proc = cli(*args, cwd=d)
    return d, proc


def test_loss_falls_and_export_loads(sft_run):
    from transformers import AutoModelForCausalLM

    d, proc = sft_run
    metrics = next((d / "logs").rglob("metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    col = header.index("train/loss")
    losses = [float(r.split(",")[col]) for r in metrics[1:] if r.split(",")[col]]
    assert len(losses) >= 20
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:2]) / 2
    assert "exported to" in proc.stderr + proc.stdout
    model = AutoModelForCausalLM.from_pretrained(d / "sft")
    assert sum(p.numel() for p in model.parameters()) == 1_098_880


def test_exported_policy_beats_untrained_on_held_out_prompts(sft_run):
    d, _ = sft_run
    prompts = str(d / "task/prompts_val.jsonl")
    before = evaluate_policy(str(d / "base"), prompts, limit=200)["all"]
    after = evaluate_policy(str(d / "sft"), prompts, limit=200)["all"]
    # 200 prompts: the standard error of a rate is at most 0.035, so +0.1 is ~3 standard errors
    assert after > before + 0.1, (before, after)


def test_print_config_help_and_validate(sft_run, tmp_path):
    d, _ = sft_run
    out = cli("fit", "--config", str(ROOT / "configs/sft.yaml"), "--print_config", cwd=ROOT).stdout
    cfg = yaml.safe_load(out)
    assert cfg["model"]["class_path"] == "lightning_rlhf.SFTModule"
    assert cfg["data"]["init_args"]["max_length"] == 32
    helptext = " ".join(
        cli("fit", "--model.help", "lightning_rlhf.SFTModule", cwd=ROOT).stdout.split()
    )
    assert "hub name or local directory of the pretrained causal LM" in helptext
    val = cli(
        "validate", "--config", str(ROOT / "configs/sft.yaml"),
        "--model.model_name_or_path", str(d / "sft"),
        "--data.val_path", str(d / "task/sft_val.jsonl"), "--data.num_val_prompts", "32",
        "--trainer.logger", "false", "--trainer.callbacks", "[]",
        cwd=tmp_path,
    )  # fmt: skip
    assert "val/oracle_score" in val.stdout
    # the shipped callbacks list RunProgressBar: `enable_progress_bar false` still turns bars off
    quiet = cli(
        "validate", "--config", str(ROOT / "configs/sft.yaml"),
        "--model.model_name_or_path", str(d / "sft"),
        "--data.val_path", str(d / "task/sft_val.jsonl"), "--data.num_val_prompts", "32",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        cwd=tmp_path,
    )  # fmt: skip
    assert "val/oracle_score" in quiet.stdout  # Lightning refuses a bar callback with bars off


def test_missing_model_path_fails_before_training(tmp_path):
    proc = cli(
        "fit", "--config", str(ROOT / "configs/sft.yaml"),
        "--model.model_name_or_path", str(tmp_path / "missing"), "--trainer.logger", "false",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "missing' is neither a local directory nor a hub model" in proc.stderr
    assert "init-model" in proc.stderr


def test_every_shipped_config_parses(monkeypatch, capsys):
    """Each config (an overlay on top of what it overlays) through the CLI's own parser, in this
    process: one import of the package for all of them, not one subprocess each."""
    from lightning_rlhf.cli import main

    monkeypatch.chdir(ROOT)
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert configs, "no configs found"
    # what they are read on top of
    overlays = {
        name: "configs/ppo.yaml"
        for name in (
            "ppo_ensemble.yaml",
            "grpo.yaml",
            "rloo.yaml",
            "grpo_verifiable.yaml",
            "gspo.yaml",
        )
    }
    for path in configs:
        base = ["--config", str(ROOT / overlays[path.name])] if path.name in overlays else []
        with pytest.raises(SystemExit) as exit_:  # --print_config prints, then exits 0
            main(["fit", *base, "--config", str(path), "--print_config"])
        out, err = capsys.readouterr()
        assert exit_.value.code in (0, None), f"{path}: {exit_.value.code} {err[-2000:]}"
        json.dumps(yaml.safe_load(out))
