"""What the benchmark runs: cases (one stage on one model and data set), the sides compared in each,
the settings pinned on both sides, and the ratios checked against the targets of the issue.

A side is one worker script run in one environment with the case's settings plus its overrides:

    ours   lightning_rlhf's module + data module under a Lightning Trainer (run.py's interpreter)
    trl    TRL's trainer (SFT and reward: TRL latest; PPO: TRL 0.29.1, the last with PPO)
    raw    a plain PyTorch loop on the same model (SFT's ceiling)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

ENVS = {"ours": None, "trl-latest": "trl==1.16.0", "trl-0.29.1": "trl==0.29.1"}
METRIC = {"sft": "tokens/s", "reward": "pairs/s", "ppo": "episodes/s"}


@dataclass(frozen=True)
class Side:
    label: str
    worker: str  # workers/<worker>.py
    env: str  # a key of ENVS
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ratio:
    """``numerator ÷ denominator`` of the case's metric (memory: of peak memory), and its target:
    at least ``target`` (``at_most=False``) or at most (``at_most=True``)."""

    numerator: str
    denominator: str
    target: float
    at_most: bool = False
    memory: bool = False


@dataclass(frozen=True)
class Case:
    """One comparison: ``sides`` run alternately, each in its own process, ``repeats`` times.

    ``batch_size`` is examples (packed rows when packing), pairs, or prompts per step;
    ``max_length`` the longest sequence (PPO: the prompt length); ``warmup`` steps are run but not
    timed, then ``steps`` are timed.
    """

    name: str
    stage: str
    model: str
    data: str
    sides: tuple[Side, ...]
    batch_size: int
    max_length: int
    warmup: int
    steps: int
    ratios: tuple[Ratio, ...] = ()
    lr: float = 1e-4
    ppo: dict[str, Any] | None = None
    precision: str = "32-true"  # Lightning's name; "bf16-mixed" is bf16 autocast on every side

    def config(
        self, side: Side, root: str, threads: int, seed: int = 0, device: str = "cpu"
    ) -> dict[str, Any]:
        """The JSON a worker reads: paths, settings, then the side's overrides."""
        model_dir = f"{root}/{self.model}/{'policy' if self.stage == 'ppo' else 'lm'}"
        return {
            "case": self.name,
            "side": side.label,
            "stage": self.stage,
            "model": self.model,
            "model_dir": model_dir,
            "rm_dir": f"{root}/{self.model}/rm",
            "data": f"{root}/{self.model}/data/{self.data}",
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "warmup": self.warmup,
            "steps": self.steps,
            "lr": self.lr,
            "threads": threads,
            "device": device,
            "seed": seed,
            "ppo": self.ppo,
            "precision": self.precision,
            "fused": True,  # fused AdamW on every side (transformers' default since torch 2.8)
            **side.overrides,
        }


OURS_SFT, TRL_SFT, RAW_SFT = (
    Side("ours", "ours_sft", "ours"),
    Side("trl", "trl_sft", "trl-latest"),
    Side("raw", "raw_sft", "ours"),
)
PPO = {"response_length": 32, "epochs": 2, "minibatches": 2, "kl_coef": 0.05}


def _sft_fixed(model: str, precision: str = "32-true") -> Case:
    return Case(
        f"sft-{model}-fixed" + ("-bf16" if precision == "bf16-mixed" else ""),
        "sft",
        model,
        "sft_fixed.jsonl",
        (OURS_SFT, TRL_SFT, RAW_SFT),
        batch_size=8,
        max_length=256,
        warmup=1,
        steps=3,
        ratios=(Ratio("ours", "trl", 1.0), Ratio("ours", "raw", 0.95)),
        precision=precision,
    )


def full() -> list[Case]:
    """The full suite (about 20 minutes on 2 busy cores)."""
    return [
        _sft_fixed("llama-25m"),
        _sft_var("llama-25m"),
        _sft_fixed("llama-25m", "bf16-mixed"),
        _sft_fixed("llama-5m"),
        _reward_fixed("llama-25m"),
        _reward_var("llama-25m"),
        _ppo("llama-25m"),
        _ppo("llama-5m"),
    ]


def _sft_var(model: str) -> Case:
    packed = {"packing": True, "batch_size": 4}  # 4 rows of 256 ≈ the 8 padded examples' tokens
    return Case(
        f"sft-{model}-var",
        "sft",
        model,
        "sft_var.jsonl",
        (
            OURS_SFT,
            TRL_SFT,
            Side("ours-packed", "ours_sft", "ours", packed),
            Side("trl-packed", "trl_sft", "trl-latest", packed),
            Side(
                "trl-padding-free",
                "trl_sft",
                "trl-latest",
                {"padding_free": True, "max_length": None},  # TRL asks: no truncation
            ),
        ),
        batch_size=8,
        max_length=256,
        warmup=1,
        steps=5,
        ratios=(
            Ratio("ours", "trl", 1.0),
            Ratio("ours-packed", "trl-packed", 1.3),
            Ratio("ours-packed", "trl-padding-free", 1.3),
        ),
    )


def _reward_fixed(model: str) -> Case:
    return Case(
        f"reward-{model}-fixed",
        "reward",
        model,
        "pref_fixed.jsonl",
        (Side("ours", "ours_reward", "ours"), Side("trl", "trl_reward", "trl-latest")),
        batch_size=8,
        max_length=256,
        warmup=1,
        steps=3,
        ratios=(Ratio("ours", "trl", 1.0),),
    )


def _reward_var(model: str) -> Case:
    return Case(
        f"reward-{model}-var",
        "reward",
        model,
        "pref_var.jsonl",
        (
            Side("ours", "ours_reward", "ours"),
            Side("trl", "trl_reward", "trl-latest"),
            Side("ours-padding-free", "ours_reward", "ours", {"padding_free": True}),
        ),
        batch_size=8,
        max_length=256,
        warmup=1,
        steps=20,  # each side draws its own batches: enough of them to average the padding
        ratios=(Ratio("ours", "trl", 1.0), Ratio("ours-padding-free", "trl", 1.3)),
    )


def _ppo(model: str) -> Case:
    return Case(
        f"ppo-{model}",
        "ppo",
        model,
        "prompts.jsonl",
        (Side("ours", "ours_ppo", "ours"), Side("trl", "trl_ppo", "trl-0.29.1")),
        batch_size=16,
        max_length=32,
        warmup=1,
        steps=2,
        lr=1e-5,
        ppo=PPO,
        ratios=(
            Ratio("ours", "trl", 1.5),
            Ratio("ours", "trl", 1.0, at_most=True, memory=True),
        ),
    )


# both sides padding each batch to a multiple of 16 tokens: on a GPU each new width costs the
# attention kernels a new plan (~90 ms a step on the H200), and 16 leaves a few widths
PAD16_SFT = (
    Side("ours-pad16", "ours_sft", "ours", {"pad_to_multiple_of": 16}),
    Side("trl-pad16", "trl_sft", "trl-latest", {"pad_to_multiple_of": 16}),
)
GPU_MODEL, BF16 = "llama-500m", "bf16-mixed"
GPU_BATCHES = {"batch_size": 32, "max_length": 256, "warmup": 2, "steps": 10, "precision": BF16}


def gpu() -> list[Case]:
    """The GPU suite: a 503M-parameter Llama (28 × 1024, 32k vocabulary) under bf16 autocast on
    every side, batches four times the CPU suite's (launch overhead would dominate smaller ones),
    one warm-up step more (CUDA kernels are chosen on the first calls)."""
    return [
        Case(
            f"sft-{GPU_MODEL}-fixed-bf16",
            "sft",
            GPU_MODEL,
            "sft_fixed.jsonl",
            (OURS_SFT, TRL_SFT, RAW_SFT),
            ratios=(Ratio("ours", "trl", 1.0), Ratio("ours", "raw", 0.95)),
            **GPU_BATCHES,
        ),
        _gpu_sft_var(),
        _gpu_reward_var(),
        _gpu_ppo(),
    ]


def _gpu_sft_var() -> Case:
    return Case(
        f"sft-{GPU_MODEL}-var-bf16",
        "sft",
        GPU_MODEL,
        "sft_var.jsonl",
        (
            OURS_SFT,
            TRL_SFT,
            Side("ours-packed", "ours_sft", "ours", {"packing": True, "batch_size": 16}),
            Side(
                "trl-padding-free",
                "trl_sft",
                "trl-latest",
                {"padding_free": True, "max_length": None},
            ),
            *PAD16_SFT,
        ),
        ratios=(
            Ratio("ours", "trl", 1.0),
            Ratio("ours-packed", "trl-padding-free", 1.3),
            Ratio("ours-pad16", "trl-pad16", 1.0),
        ),
        **GPU_BATCHES,
    )


def _gpu_reward_var() -> Case:
    return Case(
        f"reward-{GPU_MODEL}-var-bf16",
        "reward",
        GPU_MODEL,
        "pref_var.jsonl",
        (
            Side("ours", "ours_reward", "ours"),
            Side("trl", "trl_reward", "trl-latest"),
            Side("ours-padding-free", "ours_reward", "ours", {"padding_free": True}),
            Side("ours-pad16", "ours_reward", "ours", {"pad_to_multiple_of": 16}),
            Side("trl-pad16", "trl_reward", "trl-latest", {"pad_to_multiple_of": 16}),
        ),
        ratios=(
            Ratio("ours", "trl", 1.0),
            Ratio("ours-padding-free", "trl", 1.3),
            Ratio("ours-pad16", "trl-pad16", 1.0),
        ),
        **GPU_BATCHES,
    )


def _gpu_ppo() -> Case:
    return Case(
        f"ppo-{GPU_MODEL}-bf16",
        "ppo",
        GPU_MODEL,
        "prompts.jsonl",
        (
            Side("ours", "ours_ppo", "ours"),
            Side("trl", "trl_ppo", "trl-0.29.1"),
            # the reward model re-tokenises the sampled texts: a new width every rollout
            # unless padded to a multiple (TRL's reads the policy's ids, of fixed width)
            Side("ours-pad16", "ours_ppo", "ours", {"pad_to_multiple_of": 16}),
        ),
        batch_size=64,
        max_length=32,
        warmup=1,
        steps=3,
        lr=1e-5,
        ppo=PPO,
        precision=BF16,
        ratios=(
            Ratio("ours", "trl", 1.5),
            Ratio("ours-pad16", "trl", 1.5),
            Ratio("ours", "trl", 1.0, at_most=True, memory=True),
        ),
    )


# the long-response cases: responses of 256 tokens, on the small model (its 4k vocabulary keeps
# the logits of a 256-token rollout within a CPU's memory; the 25M model's 32k would not)
LONG = 256


def long() -> list[Case]:
    """Generation-bound RL steps (``--long``): PPO against TRL 0.29.1 and GRPO against TRL latest
    (its ``generate`` path and its continuous-batching path), every response 256 tokens."""
    return [_ppo_long("llama-5m"), _grpo("llama-5m")]


def _ppo_long(model: str) -> Case:
    """:func:`_ppo` with 256-token responses, 64 prompts per iteration, and the issue's 2× goal."""
    return replace(
        _ppo(model),
        name=f"ppo-{model}-{LONG}",
        batch_size=64,
        ppo={**PPO, "response_length": LONG},
        ratios=(
            Ratio("ours", "trl", 2.0),
            Ratio("ours", "trl", 1.0, at_most=True, memory=True),
        ),
    )


def _grpo(model: str) -> Case:
    grpo = {"response_length": LONG, "samples_per_prompt": 4, "micro_batch": 32, "kl_coef": 0.04}
    return Case(
        f"grpo-{model}-{LONG}",
        "ppo",
        model,
        "prompts.jsonl",
        (
            Side("ours", "ours_grpo", "ours"),
            Side("trl", "trl_grpo", "trl-latest"),
            Side("trl-paged", "trl_grpo", "trl-latest", {"paged": True}),
        ),
        batch_size=16,  # prompts: x 4 samples = 64 responses per iteration
        max_length=32,
        warmup=1,
        steps=2,
        lr=1e-6,
        ppo=grpo,
        ratios=(
            Ratio("ours", "trl", 1.5),
            Ratio("ours", "trl-paged", 1.5),
            Ratio("ours", "trl", 1.0, at_most=True, memory=True),
        ),
    )


def quick() -> list[Case]:
    """Every case on the small model, one warm-up and two timed steps: a check that all of it runs."""
    cases: dict[str, Case] = {}
    for case in full():
        name = case.name.replace("llama-25m", "llama-5m")
        cases.setdefault(name, replace(case, name=name, model="llama-5m", warmup=1, steps=2))
    return list(cases.values())
