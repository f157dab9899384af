"""PPO with a LoRA policy: memory with the critic as a model of its own against the critic as a
second LoRA adapter on the policy's base (``PPOModule(critic_lora=...)``).

    .venv/bin/python benchmarks/ppo_memory.py      # llama-25m, 2 iterations per layout (~2 min)

Each layout runs in its own process (``--layout``): the policy is LoRA (r 8, all linear layers),
the reference is the policy with its adapters off, the reward is the reward-model directory. Reported:
parameters held by the module (policy + critic + value head; the reward model is the same in both),
trainable parameters (AdamW keeps two more copies of each), and peak resident memory above the
process's baseline after imports, over model loading and two PPO iterations of 16 episodes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from functools import partial
from pathlib import Path

import assets  # benchmarks/ is on sys.path: it holds this script

HERE = Path(__file__).resolve().parent


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(layout: str, model: str) -> dict:
    baseline = peak_mb()
    import lightning as L
    import torch

    from lightning_rlhf.advantages import GAE
    from lightning_rlhf.data.prompts import PromptDataModule
    from lightning_rlhf.models import LoraOptions, ModelOptions
    from lightning_rlhf.modules.ppo import PPOModule, PPOOptions
    from lightning_rlhf.rewards import RewardModel
    from lightning_rlhf.rollout import SamplingOptions

    baseline = max(baseline, peak_mb())
    torch.set_num_threads(1)
    root = assets.build(HERE / ".cache", model, assets.DataSpec())
    lora = LoraOptions(r=8)
    module = PPOModule(
        str(root / "policy"),
        reward=RewardModel(str(root / "rm"), normalize=False),
        critic_name_or_path=str(root / "rm"),
        critic_lora=lora if layout == "adapter" else None,
        model=ModelOptions(lora=lora),
        optimizer=partial(torch.optim.AdamW, lr=1e-5, weight_decay=0.0),
        sampling=SamplingOptions(max_new_tokens=16),
        ppo=PPOOptions(ppo_epochs=1, num_minibatches=2),
        advantage=GAE(),
        log_samples_every_n_steps=0,
    )
    data = PromptDataModule(
        str(root / "data" / "prompts.jsonl"), None, str(root / "policy"), val_fraction=0.0,
        batch_size=16, max_prompt_length=32,
    )  # fmt: skip
    L.Trainer(
        accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        use_distributed_sampler=False,
    ).fit(module, datamodule=data)  # fmt: skip
    held = {id(p): p for p in module.parameters()}
    return {
        "layout": layout,
        "parameters_m": sum(p.numel() for p in held.values()) / 1e6,
        "trainable_m": sum(p.numel() for p in held.values() if p.requires_grad) / 1e6,
        "peak_above_baseline_mb": peak_mb() - baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=("model", "adapter"))
    parser.add_argument("--model", default="llama-25m", choices=sorted(assets.MODELS))
    args = parser.parse_args()
    if args.layout:
        print(json.dumps(run(args.layout, args.model)))
        return
    rows = []
    for layout in ("model", "adapter"):
        cmd = [sys.executable, __file__, "--layout", layout, "--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.model}, LoRA policy (r 8), reward model of its own in both layouts")
    print("| critic | parameters held (M) | trainable (M) | peak memory above imports (MB) |")
    print("|---|---|---|---|")
    for r in rows:
        name = "model of its own" if r["layout"] == "model" else "LoRA adapter on the policy's base"
        print(
            f"| {name} | {r['parameters_m']:.1f} | {r['trainable_m']:.2f} | "
            f"{r['peak_above_baseline_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
