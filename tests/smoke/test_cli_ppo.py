"""The real CLI in a subprocess: PPO trains and exports, and a run killed after a checkpoint and
resumed logs exactly what the uninterrupted run logged."""

import json
import os
from pathlib import Path

import pytest
import torch
from cli_runner import read_metrics, run_cli

ROOT = Path(__file__).resolve().parents[2]

# importable by the CLI subprocess (PYTHONPATH): a callback that SIGKILLs its own process
HELPERS = '''
import os, signal
from lightning import Callback

class KillAt(Callback):
    """SIGKILL at the start of the training batch after optimizer step ``step``: a crash right
    after the checkpoint of that step was written, with the next batch already fetched."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
'''

ITERATIONS, KILL_AFTER = 4, 2  # iterations of run A; run B dies after this many
STEPS_PER_ITERATION = 2  # ppo_epochs 1 x num_minibatches 2


def cli(*args, cwd, env=None, check=True):
    # one thread: the tiny model's ops are too small for more, and every run must use the same
    return run_cli(*args, cwd=cwd, env=env, check=check, threads=1, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny policy through ``init-model``, and a reward model exported from it (with stats)."""
    from lightning_rlhf.models import export_hf, load_scalar_model, load_tokenizer

    d = tmp_path_factory.mktemp("ppo_cli")
    cli("init-model", str(d / "policy"), "--hidden-size", "32", "--num-layers", "2", cwd=d)
    torch.manual_seed(0)
    rm = load_scalar_model(str(d / "policy"), pad_token_id=0)
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)
    stats = {"reward_stats.json": {"mean": 0.1, "std": 0.5}}
    export_hf(rm, load_tokenizer(str(d / "policy")), d / "rm", extra_json=stats)
    (d / "helpers").mkdir()
    (d / "helpers" / "ppo_test_helpers.py").write_text(HELPERS)
    return d


VALIDATE_AT_START = {
    "class_path": "lightning_rlhf.callbacks.ValidateAtStart"
}  # as configs/ppo.yaml


def fit_args(d, task_dir, name, callbacks, max_steps=ITERATIONS * STEPS_PER_ITERATION):
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": str(d / name / "ckpt"),
            "save_last": True,
            "every_n_train_steps": STEPS_PER_ITERATION,
            "save_top_k": -1,
        },
    }
    export = {
        "class_path": "lightning_rlhf.HFExport",
        "init_args": {"dirpath": str(d / name / "export")},
    }
    reward = {
        "class_path": "lightning_rlhf.RewardModel",
        "init_args": {"name_or_path": str(d / "rm")},
    }
    kl = {
        "class_path": "lightning_rlhf.AdaptiveKLController",
        "init_args": {"init_beta": 0.1, "target": 0.05, "horizon": 50},
    }  # β moves every iteration: its state must survive the resume
    return [
        "fit", "--config", str(ROOT / "configs/ppo.yaml"),
        "--model.model_name_or_path", str(d / "policy"),
        "--model.reward", json.dumps(reward),
        "--model.critic.init_args.name_or_path", str(d / "rm"),
        "--model.kl.init_args.controller", json.dumps(kl),
        "--model.optimizer.init_args.lr", "0.003",
        "--model.schedule.warmup_steps", "5",  # the warm-up spans the resume point
        "--model.sampling.max_new_tokens", "4",
        "--model.eval_sampling.max_new_tokens", "4",
        "--model.ppo.ppo_epochs", "1", "--model.ppo.num_minibatches", "2",
        "--data.train_path", str(task_dir / "prompts_train.jsonl"),
        "--data.val_path", str(task_dir / "prompts_val.jsonl"),
        "--data.num_val_prompts", "8",
        "--data.batch_size", "8",
        "--trainer.max_steps", str(max_steps),
        "--trainer.val_check_interval", "2",  # iterations: a validation before the kill
        "--trainer.log_every_n_steps", "1",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(d / name / "logs"),
        "--trainer.callbacks", json.dumps([checkpoint, export, VALIDATE_AT_START, *callbacks]),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run_a(models, task_dir):
    proc = cli(*fit_args(models, task_dir, "a", []), cwd=models)
    return models / "a", proc


def test_ppo_cli_trains_and_exports_a_loadable_policy(run_a, models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a, proc = run_a
    assert "exported to" in proc.stderr + proc.stdout
    metrics = read_metrics(a / "logs")
    rewards = [m["train/reward"] for m in metrics.values() if "train/reward" in m]
    assert len(rewards) == ITERATIONS
    val = sorted(s for s, m in metrics.items() if "val/reward" in m)
    assert val[0] == 0 and len(val) == 1 + ITERATIONS // 2  # the start's, then every 2 iterations
    assert any("train/oracle_score" in m for m in metrics.values())  # the config's TaskOracle
    policy = AutoModelForCausalLM.from_pretrained(a / "export")
    initial = AutoModelForCausalLM.from_pretrained(models / "policy")
    assert sum(p.numel() for p in policy.parameters()) == sum(
        p.numel() for p in initial.parameters()
    )
    moved = [
        n
        for (n, p), q in zip(policy.named_parameters(), initial.parameters())
        if not torch.equal(p, q)
    ]
    assert moved  # trained weights were exported
    tok = AutoTokenizer.from_pretrained(a / "export")
    inputs = tok(["12+34="], return_tensors="pt")
    out = policy.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] > inputs.input_ids.shape[1]
    ckpts = sorted(p.name for p in (a / "ckpt").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and len(ckpts) == ITERATIONS + 1


def test_killed_and_resumed_run_logs_what_the_uninterrupted_run_logged(run_a, models, task_dir):
    d = models
    path = [str(d / "helpers"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    kill = {
        "class_path": "ppo_test_helpers.KillAt",
        "init_args": {"step": KILL_AFTER * STEPS_PER_ITERATION},
    }
    killed = cli(*fit_args(d, task_dir, "b", [kill]), cwd=d, env=env, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, not a clean exit
    last = d / "b" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == KILL_AFTER * STEPS_PER_ITERATION
    assert not (d / "b" / "export").exists()
    resume = fit_args(d, task_dir, "b_resumed", [])
    cli(*resume, "--ckpt_path", str(last), cwd=d)
    assert (d / "b_resumed" / "export").exists()

    a = read_metrics(run_a[0] / "logs")
    b = read_metrics(d / "b" / "logs")
    resumed = read_metrics(d / "b_resumed" / "logs")
    train_steps = lambda m: sorted(s for s, row in m.items() if "train/reward" in row)  # noqa: E731
    assert len(train_steps(a)) == ITERATIONS
    assert len({a[s]["train/beta"] for s in train_steps(a)}) == ITERATIONS  # β moved each time
    assert train_steps(b) == train_steps(a)[:KILL_AFTER]
    assert train_steps(resumed) == train_steps(a)[KILL_AFTER:]
    compared = 0
    for steps, run in ((train_steps(b), b), (train_steps(resumed), resumed)):
        for step in steps:
            for key, value in run[step].items():
                if key.startswith("time/") or key in ("epoch", "rollout/tokens_per_s"):
                    continue
                assert key in a[step], (step, key)
                assert value == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key)
                compared += 1
    assert compared >= 20 * ITERATIONS  # reward, KL estimators, β, losses, entropy, ...
    # validation after the resume point scored the same greedy answers
    val = [s for s, row in resumed.items() if "val/reward" in row]
    assert val and all(
        resumed[s]["val/reward"] == pytest.approx(a[s]["val/reward"], rel=1e-5) for s in val
    )


# the method overlays of configs/ppo.yaml, and what their logs must show
OVERLAYS = {
    "grpo.yaml": {"train/kl_loss"},
    "rloo.yaml": set(),
    "grpo_verifiable.yaml": {"train/kl_loss"},
    "gspo.yaml": {"train/kl_loss"},
}


# about 40 s each on 2 CPU cores: GRPO's runs by default, all of them under -m slow
@pytest.mark.parametrize(
    "overlay",
    [o if o == "grpo.yaml" else pytest.param(o, marks=pytest.mark.slow) for o in OVERLAYS],
)
def test_method_overlay_on_the_ppo_config_trains_two_steps(overlay, models, task_dir):
    """``--config configs/ppo.yaml --config configs/<method>.yaml``: two optimizer steps of the
    method, no critic, its own metrics, an export."""
    d, name = models, overlay.removesuffix(".yaml")
    reward = {
        "class_path": "lightning_rlhf.RewardModel",
        "init_args": {"name_or_path": str(d / "rm")},
    }
    keep_reward = overlay == "grpo_verifiable.yaml"  # its reward is the task's checker
    export = {"class_path": "lightning_rlhf.HFExport", "init_args": {"dirpath": str(d / name)}}
    cli(
        "fit", "--config", str(ROOT / "configs/ppo.yaml"), "--config", str(ROOT / "configs" / overlay),
        "--model.model_name_or_path", str(d / "policy"),
        *([] if keep_reward else ["--model.reward", json.dumps(reward)]),
        "--model.sampling.max_new_tokens", "4", "--model.eval_sampling.max_new_tokens", "4",
        "--model.ppo.ppo_epochs", "1", "--model.ppo.num_minibatches", "1",
        "--data.train_path", str(task_dir / "prompts_train.jsonl"), "--data.val_path", "null",
        "--data.batch_size", "2",  # x 8 samples per prompt
        "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(d / f"{name}_logs"),
        "--trainer.callbacks", json.dumps([export]),
        cwd=d,
    )  # fmt: skip
    rows = [m for m in read_metrics(d / f"{name}_logs").values() if "train/reward" in m]
    assert len(rows) == 2
    for key in {"train/policy_loss", "train/kl_k3", *OVERLAYS[overlay]}:
        assert all(key in m and m[key] == m[key] for m in rows), key  # logged, not NaN
    assert not any("train/value_loss" in m for m in rows)  # no critic
    if not OVERLAYS[overlay]:  # the KL in the reward
        assert not any("train/kl_loss" in m for m in rows)
    assert (d / name / "model.safetensors").exists()
