"""``python -m lightning_rlhf``: LightningCLI for the stages, plus the package's own tools.

python -m lightning_rlhf fit --config configs/sft.yaml      # any stage, any Trainer option
python -m lightning_rlhf init-model artifacts/tiny-base     # the embedded default model
python -m lightning_rlhf make-data artifacts/task           # the bundled task's data
python -m lightning_rlhf evaluate artifacts/sft             # oracle score on held-out prompts
python -m lightning_rlhf demo                               # the whole pipeline, embedded defaults
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import sys
from pathlib import Path
from typing import Any

from lightning import LightningDataModule, LightningModule, Trainer
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

PACKAGE = Path(__file__).resolve().parent


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written beside their target and renamed over it (the CLI's writer).

    Lightning's own writer stages the file in the system's temporary directory and moves it; when
    that is another filesystem the move is a copy, and a kill during it leaves a truncated
    checkpoint. This one never does. From Python: ``Trainer(plugins=[AtomicCheckpointIO()])``.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        import torch

        from lightning_rlhf.io import atomic_write_bytes

        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


class RLHFCLI(LightningCLI):
    """LightningCLI with the model's tokenizer shared with the data module, and checkpoints
    written atomically."""

    def add_arguments_to_parser(self, parser) -> None:
        # one value, two consumers: the data is tokenised with the tokenizer of the model it trains
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer")

    def _load_checkpoints_safely(self) -> None:
        # --ckpt_path is unpickled with weights_only=True (nothing in it can run code) whatever
        # the torch version's default; `--weights_only false` is the explicit way out
        arguments = self.config_init[self.subcommand]
        if arguments.get("weights_only") is None:
            arguments["weights_only"] = True

    before_fit = before_validate = before_test = before_predict = _load_checkpoints_safely

    def _parse_ckpt_path(self) -> None:
        # Lightning reads --ckpt_path's hyperparameters into the config here, with no public hook
        # to adapt them: this is its own code, with a PPO checkpoint saved before the critic, KL
        # penalty and policy loss became components upgraded first (it then resumes)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return
        import torch

        from lightning_rlhf.modules.ppo_options import upgrade_hparams

        ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        hparams = upgrade_hparams(ckpt.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"the hyperparameters of --ckpt_path {ckpt_path} do not parse\n")
            raise

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def user_error(err: BaseException) -> BaseException | None:
    """The error in ``err``'s chain that explains itself: one raised by this package's own checks
    (a bad value, a missing file, a non-finite loss), a Lightning configuration error, or a
    checkpoint refused because unpickling it could run code. None: show the whole traceback."""
    while err is not None:
        if isinstance(err, (MisconfigurationException, pickle.UnpicklingError)):
            return err
        if isinstance(err, (ValueError, OSError, FloatingPointError)):
            tb = err.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None and Path(tb.tb_frame.f_code.co_filename).is_relative_to(PACKAGE):
                return err
        err = err.__cause__ or err.__context__
    return None


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
    try:
        RLHFCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args if args is None else argv,
        )
    except Exception as err:
        shown = user_error(err)
        if shown is None or os.environ.get("LIGHTNING_RLHF_TRACEBACK") == "1":
            raise
        sys.exit(
            f"error: {type(shown).__name__}: {shown}\n(LIGHTNING_RLHF_TRACEBACK=1 shows where)"
        )
