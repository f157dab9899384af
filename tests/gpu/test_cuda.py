"""The shipped configs on one CUDA device through the real CLI (bf16-mixed, FSDP, bf16 weights),
chained SFT -> reward -> PPO/GRPO/DPO as in the demo, and the log-prob kernel's error on bf16
logits. Seven CLI runs of the tiny model: ~50 s in the dry run on 2 CPU cores (not yet timed on a GPU).

Without CUDA every test skips; LIGHTNING_RLHF_GPU_TESTS_ON_CPU=1 dry-runs them on the CPU.
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from cli_runner import read_metrics, run_cli
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()
ON_CPU = not CUDA and os.environ.get("LIGHTNING_RLHF_GPU_TESTS_ON_CPU") == "1"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (CUDA or ON_CPU), reason="needs CUDA (or LIGHTNING_RLHF_GPU_TESTS_ON_CPU=1)"
    ),
]
SFT_ARGS = ["--model.schedule.warmup_steps", "10", "--data.num_val_prompts", "16"]
RL_ARGS = ["--model.sampling.max_new_tokens", "6", "--model.eval_sampling.max_new_tokens", "6",
           "--data.num_val_prompts", "16", "--trainer.log_every_n_steps", "1"]  # fmt: skip


def accelerator() -> str:
    return "gpu" if CUDA else "cpu"


def plugin(class_path: str, **init_args) -> dict:
    return {"class_path": class_path, "init_args": init_args}


def fit(stage, out: Path, model, data: Path, max_steps: int, *overrides, val_every=0,
        precision="bf16-mixed"):  # fmt: skip
    """``configs/<stage>.yaml`` (GRPO's and RLOO's on top of configs/ppo.yaml) from ``model`` on
    ``<data>_{train,val}.jsonl``, ``max_steps`` long,
    validated at the end (or every ``val_every`` training batches). CSV logs only: the configs'
    WandbLogger needs wandb, which a GPU machine may lack. Returns ``({step: metrics}, export)``."""
    logger = plugin("lightning.pytorch.loggers.CSVLogger", save_dir=str(out))
    callbacks = [
        plugin("lightning_rlhf.HFExport", dirpath=str(out / "export")),
        plugin("lightning.pytorch.callbacks.ModelCheckpoint", dirpath=str(out / "ckpt"),
               every_n_train_steps=max_steps),
    ]  # fmt: skip
    base = ["--config", str(ROOT / "configs/ppo.yaml")] if stage in ("grpo", "rloo") else []
    run_cli(
        "fit", *base, "--config", str(ROOT / f"configs/{stage}.yaml"),
        "--trainer.accelerator", accelerator(), "--trainer.devices", "1",
        "--trainer.precision", precision, "--trainer.max_steps", str(max_steps),
        "--trainer.val_check_interval", str(val_every or max_steps),
        "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "5",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", json.dumps([logger]), "--trainer.callbacks", json.dumps(callbacks),
        "--model.model_name_or_path", str(model),
        "--data.train_path", f"{data}_train.jsonl", "--data.val_path", f"{data}_val.jsonl",
        *overrides, cwd=out, timeout=300,
    )  # fmt: skip
    assert list((out / "ckpt").glob("*.ckpt")), "no checkpoint written"
    return read_metrics(out), out / "export"


def series(metrics: dict, key: str) -> list[float]:
    return [row[key] for _, row in sorted(metrics.items()) if key in row]


def assert_all_finite(metrics: dict) -> None:
    bad = {(s, k): v for s, row in metrics.items() for k, v in row.items() if not math.isfinite(v)}
    assert metrics and not bad, bad


def assert_trained(export: Path, start) -> None:
    """The export loads as a causal LM of the starting model's shape, with different weights
    (beyond the rounding to the export's dtype)."""
    from transformers import AutoModelForCausalLM

    after = AutoModelForCausalLM.from_pretrained(export)
    before = AutoModelForCausalLM.from_pretrained(start)
    pairs = list(zip(after.state_dict().values(), before.state_dict().values()))
    assert [a.shape for a, _ in pairs] == [b.shape for _, b in pairs]
    assert all(torch.isfinite(a).all() for a, _ in pairs)
    assert any(not torch.equal(a, b.to(a.dtype)) for a, b in pairs)


@pytest.fixture(scope="module")
def sft(tmp_path_factory, tiny_model_dir, task_dir):
    out = tmp_path_factory.mktemp("sft")
    return fit("sft", out, tiny_model_dir, task_dir / "sft", 80, *SFT_ARGS)


@pytest.fixture(scope="module")
def rm(tmp_path_factory, sft, task_dir):
    out = tmp_path_factory.mktemp("rm")
    return fit("reward", out, sft[1], task_dir / "pref", 60, "--model.schedule.warmup_steps", "10")


def rl(stage, tmp_path_factory, sft, rm, task_dir, iterations, *extra, precision="bf16-mixed",
       reward_class="RewardModel"):  # fmt: skip
    """``iterations`` of the config's 4 PPO epochs x 1 minibatch: policy and reference the SFT
    export, reward (and, for PPO, critic) the reward model's export."""
    reward = plugin(f"lightning_rlhf.{reward_class}", name_or_path=str(rm[1]))
    critic = ["--model.critic.init_args.name_or_path", str(rm[1])] if stage == "ppo" else []
    out = tmp_path_factory.mktemp(stage)
    return fit(stage, out, sft[1], task_dir / "prompts", 4 * iterations, *RL_ARGS, *critic,
               "--model.reward", json.dumps(reward), *extra, val_every=iterations,
               precision=precision)  # fmt: skip


@pytest.fixture(scope="module")
def ppo(tmp_path_factory, sft, rm, task_dir):
    return rl("ppo", tmp_path_factory, sft, rm, task_dir, 3)


@pytest.fixture(scope="module")
def grpo(tmp_path_factory, sft, rm, task_dir):
    return rl("grpo", tmp_path_factory, sft, rm, task_dir, 3)


def test_sft_loss_falls_and_exports(sft, tiny_model_dir):
    metrics, export = sft
    assert_all_finite(metrics)
    losses = series(metrics, "train/loss")
    # about ln(vocab) at step 5; on the CPU 80 steps more than halve it (5.8 -> 2.6)
    assert len(losses) == 16 and losses[-1] < 0.7 * losses[0], losses
    assert "val/oracle_score" in metrics[max(metrics)]  # greedy generation under autocast
    assert_trained(export, tiny_model_dir)


def test_reward_model_learns_and_exports_its_stats(rm):
    metrics, export = rm
    assert_all_finite(metrics)
    losses = series(metrics, "train/loss")
    # the score head starts near 0, the BT loss near ln 2; on the CPU 0.693 -> 0.66 in 60 steps
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
    assert "val/accuracy" in metrics[max(metrics)]
    stats = json.loads((export / "reward_stats.json").read_text())
    assert math.isfinite(stats["mean"]) and stats["std"] > 0  # PPO's reward normalisation


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_rl_metrics_finite_and_policy_moves(stage, request, sft):
    metrics, export = request.getfixturevalue(stage)
    assert_all_finite(metrics)
    assert len(series(metrics, "train/reward")) == 3
    for key in ("train/kl_k1", "train/policy_loss", "val/reward"):
        assert series(metrics, key), key
    assert bool(series(metrics, "train/value_loss")) == (stage == "ppo")  # GRPO has no critic
    assert_trained(export, sft[1])


def test_dpo_loss_finite_and_exports(tmp_path, sft, task_dir):
    metrics, export = fit("dpo", tmp_path, sft[1], task_dir / "pref", 40,
                          "--model.eval_sampling.max_new_tokens", "6",
                          "--data.num_val_prompts", "16")  # fmt: skip
    assert_all_finite(metrics)
    assert len(series(metrics, "train/loss")) == 8 and series(metrics, "val/loss")
    assert (export / "dpo_stats.json").exists()
    assert_trained(export, sft[1])


# Lightning refuses FSDP with accelerator='cpu', and torch's FSDP itself needs an accelerator
@pytest.mark.skipif(
    not CUDA, reason="FSDP needs a CUDA device (Lightning and torch both refuse CPU)"
)
def test_sft_under_fsdp_on_one_device(tmp_path, tiny_model_dir, task_dir):
    metrics, export = fit("sft", tmp_path, tiny_model_dir, task_dir / "sft", 20, *SFT_ARGS,
                          "--trainer.strategy", "fsdp")  # fmt: skip
    assert_all_finite(metrics)
    assert len(series(metrics, "train/loss")) == 4
    assert_trained(export, tiny_model_dir)


def test_ppo_with_bf16_weights(tmp_path_factory, sft, rm, task_dir):
    metrics, export = rl("ppo", tmp_path_factory, sft, rm, task_dir, 2, precision="bf16-true")
    assert_all_finite(metrics)
    assert len(series(metrics, "train/reward")) == 2 and series(metrics, "train/policy_loss")
    weights = load_file(export / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}  # bf16-true took effect
    assert_trained(export, sft[1])  # Adam's steps were not all lost to bf16 rounding


@pytest.fixture(scope="module")
def rm_adapter(tmp_path_factory, sft, task_dir):
    """A reward model trained as a LoRA adapter of the SFT export, exported as the adapter."""
    out = tmp_path_factory.mktemp("rm_adapter")
    lora = json.dumps({"r": 8, "merge_on_export": False})
    return fit("reward", out, sft[1], task_dir / "pref", 40, "--model.model.lora", lora)


def test_ppo_with_policy_reference_critic_and_reward_on_one_base(
    tmp_path_factory, sft, rm_adapter, task_dir
):
    """A LoRA policy, πref its adapters off, the critic a second adapter, the reward model a
    frozen third (RewardAdapter), and a fused AdamW under bf16-mixed (the stages clip gradients
    themselves: Lightning's own clipping refuses fused optimisers there)."""
    assert (rm_adapter[1] / "adapter_config.json").exists()
    lora = json.dumps({"r": 8})
    critic = json.dumps(
        {"class_path": "lightning_rlhf.LoraCritic", "init_args": {"lora": {"r": 8}}}
    )
    metrics, export = rl("ppo", tmp_path_factory, sft, rm_adapter, task_dir, 2,
                         "--model.model.lora", lora, "--model.critic", critic,
                         "--model.optimizer.init_args.fused", "true",
                         reward_class="RewardAdapter")  # fmt: skip
    assert_all_finite(metrics)
    assert len(series(metrics, "train/value_loss")) == 2 and series(metrics, "train/policy_loss")
    assert_trained(export, sft[1])  # the policy's adapter merged; the others left out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_match_fp32_log_softmax(dtype):
    from lightning_rlhf.losses import sequence_logprobs, token_logprobs

    device = "cuda" if CUDA else "cpu"
    gen = torch.Generator(device).manual_seed(0)
    logits = torch.randn(4, 64, 32000, device=device, generator=gen) * 2
    labels = torch.randint(0, 32000, (4, 64), device=device, generator=gen)
    mask = torch.zeros(4, 64, device=device)
    mask[:, 20:] = 1
    logp = torch.log_softmax(logits, -1)
    ref = logp.gather(-1, labels[..., None]).squeeze(-1)
    # as a sequence: logits[:, t] predicts token t + 1
    ref_seq = (logp[:, :-1].gather(-1, labels[:, 1:, None]).squeeze(-1) * mask[:, 1:]).sum(-1)
    got = token_logprobs(logits.to(dtype), labels)
    seq = sequence_logprobs(logits.to(dtype), labels, mask)
    assert got.dtype == seq.dtype == torch.float32
    # fp32 through another kernel (fused cross-entropy): a few ulps apart, and the ulp of
    # |log p| <= 18 is 2e-6; the sums (|sum| <= 560) add 43 such terms
    exact = {"rtol": 1e-6, "atol": 1e-5}
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, **exact)
        torch.testing.assert_close(seq, ref_seq, **exact)
        return
    # bf16 keeps 8 significant bits: each logit is off by at most |z| 2^-9, so z_y and logsumexp(z)
    # each move by at most max|z| 2^-9 and log p = z_y - logsumexp(z) by twice that (0.04 here;
    # a log-softmax in bf16 misses it, 0.07). On the rounded logits the answer is fp32-exact.
    bound = 2 * logits.abs().max().item() * 2**-9
    torch.testing.assert_close(got, ref, rtol=0, atol=bound)
    rounded = torch.log_softmax(logits.to(dtype).float(), -1).gather(-1, labels[..., None])
    torch.testing.assert_close(got, rounded.squeeze(-1), **exact)
    torch.testing.assert_close(seq, ref_seq, rtol=0, atol=43 * bound)
    assert (got - ref).abs().max() > 1e-4  # the rounding really happened: this tested bf16
