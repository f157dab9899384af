"""PPO with a LoRA policy: memory with the critic and the reward as models of their own, against
them as further LoRA adapters on the policy's base (``LoraCritic``, ``RewardAdapter``).

    .venv/bin/python benchmarks/ppo_memory.py      # llama-25m, 2 iterations per layout (~1 min)

Each layout runs in its own process (``--layout``): the policy is LoRA (r 8, all linear layers) and
the reference is the policy with its adapters off, in every layout. ``model``: critic and reward
loaded from the reward-model directory; ``critic-adapter``: the critic an adapter, the reward a model;
``adapters``: both adapters (the reward adapter is a LoRA reward model of the policy's base with
random weights: memory does not depend on them). Reported: parameters held (module and reward),
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
LAYOUTS = {
    "model": "models of their own",
    "critic-adapter": "critic an adapter, reward a model",
    "adapters": "both adapters on the policy's base",
}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(layout: str, model: str) -> dict:
    baseline = peak_mb()
    import lightning as L
    import torch

    from lightning_rlhf.advantages import GAE
    from lightning_rlhf.critics import LoraCritic, ScalarModelCritic
    from lightning_rlhf.data.prompts import PromptDataModule
    from lightning_rlhf.models import LoraOptions, ModelOptions
    from lightning_rlhf.modules.ppo import PPOModule, PPOOptions
    from lightning_rlhf.rewards import RewardAdapter, RewardModel
    from lightning_rlhf.rollout import SamplingOptions

    baseline = max(baseline, peak_mb())
    torch.set_num_threads(1)
    root = assets.build(HERE / ".cache", model, assets.DataSpec())
    lora = LoraOptions(r=8)
    if layout == "adapters":
        reward = RewardAdapter(str(root / "rm-adapter"), normalize=False)
    else:
        reward = RewardModel(str(root / "rm"), normalize=False)
    module = PPOModule(
        str(root / "policy"),
        reward=reward,
        critic=LoraCritic(lora) if layout != "model" else ScalarModelCritic(str(root / "rm")),
        model=ModelOptions(lora=lora),
        optimizer=partial(torch.optim.AdamW, lr=1e-5, weight_decay=0.0),
        sampling=SamplingOptions(max_new_tokens=16),
        ppo=PPOOptions(ppo_epochs=1, num_minibatches=2),
        advantage=GAE(),
        log_samples_every_n_iterations=0,
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
    reward_params = reward.model.parameters() if layout != "adapters" else reward.head.parameters()
    held.update({id(p): p for p in reward_params})
    return {
        "layout": layout,
        "parameters_m": sum(p.numel() for p in held.values()) / 1e6,
        "trainable_m": sum(p.numel() for p in held.values() if p.requires_grad) / 1e6,
        "peak_above_baseline_mb": peak_mb() - baseline,
    }


def reward_adapter(root: Path) -> Path:
    """A LoRA reward model of the policy's base (random weights: memory does not depend on them),
    exported as the reward stage does with ``merge_on_export: false``."""
    from lightning_rlhf.models import (
        LoraOptions,
        ModelOptions,
        export_hf,
        load_scalar_model,
        load_tokenizer,
    )

    out, policy = root / "rm-adapter", str(root / "policy")
    if not out.exists():
        rm = load_scalar_model(policy, ModelOptions(lora=LoraOptions(r=8)), pad_token_id=0)
        export_hf(rm, load_tokenizer(policy), out, merge_lora=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=LAYOUTS)
    parser.add_argument("--model", default="llama-25m", choices=sorted(assets.MODELS))
    args = parser.parse_args()
    if args.layout:
        print(json.dumps(run(args.layout, args.model)))
        return
    root = assets.build(HERE / ".cache", args.model, assets.DataSpec())
    reward_adapter(root)  # built here: the measured processes only load it
    rows = []
    for layout in LAYOUTS:
        cmd = [sys.executable, __file__, "--layout", layout, "--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.model}, LoRA policy (r 8), πref = the policy's adapters off")
    print(
        "| critic, reward | parameters held (M) | trainable (M) | peak memory above imports (MB) |"
    )
    print("|---|---|---|---|")
    for r in rows:
        name = LAYOUTS[r["layout"]]
        print(
            f"| {name} | {r['parameters_m']:.1f} | {r['trainable_m']:.2f} | "
            f"{r['peak_above_baseline_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
