"""``python -m lightning_rlhf``: LightningCLI for the stages, plus the package's own tools.

python -m lightning_rlhf fit --config configs/sft.yaml      # any stage, any Trainer option
python -m lightning_rlhf init-model artifacts/tiny-base     # the embedded default model
python -m lightning_rlhf make-data artifacts/task           # the bundled task's data
python -m lightning_rlhf evaluate artifacts/sft             # oracle score on held-out prompts
python -m lightning_rlhf demo                               # the whole pipeline, embedded defaults
"""

from __future__ import annotations

import argparse
import sys

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class RLHFCLI(LightningCLI):
    """LightningCLI with the model's tokenizer shared with the data module."""

    def add_arguments_to_parser(self, parser) -> None:
        # one value, two consumers: the data is tokenised with the tokenizer of the model it trains
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer")


def _init_model(argv: list[str]) -> None:
    from lightning_rlhf.tiny import init_tiny_model

    p = argparse.ArgumentParser(
        prog="lightning_rlhf init-model", description=init_tiny_model.__doc__
    )
    p.add_argument("out_dir", nargs="?", default="artifacts/tiny-base")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = init_tiny_model(a.out_dir, a.hidden_size, a.num_layers, a.num_heads, seed=a.seed)
    print(f"wrote the embedded default model to {path}")


def _make_data(argv: list[str]) -> None:
    from lightning_rlhf.tasks import write_task_data

    p = argparse.ArgumentParser(
        prog="lightning_rlhf make-data", description=write_task_data.__doc__
    )
    p.add_argument("out_dir", nargs="?", default="artifacts/task")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the train split sizes")
    p.add_argument("--demo-noise", type=float, default=0.5, help="demonstrator's mistake rate")
    a = p.parse_args(argv)
    for name, n in write_task_data(a.out_dir, a.seed, a.scale, a.demo_noise).items():
        print(f"{a.out_dir}/{name}: {n} rows")


def _demo(argv: list[str]) -> None:
    from lightning_rlhf.demo import main as demo_main

    demo_main(argv)


def _evaluate(argv: list[str]) -> None:
    from lightning_rlhf.evaluate import main as evaluate_main

    evaluate_main(argv)


TOOLS = {"init-model": _init_model, "make-data": _make_data, "evaluate": _evaluate, "demo": _demo}


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] in TOOLS:
        TOOLS[argv[0]](argv[1:])
        return
    RLHFCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args if args is None else argv,
    )
