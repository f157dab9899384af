"""``python -m lightning_rlhf``: LightningCLI for the stages, plus the package's own tools.

python -m lightning_rlhf fit --config configs/sft.yaml      # any stage, any Trainer option
python -m lightning_rlhf init-model artifacts/tiny-base     # the embedded default model
python -m lightning_rlhf make-data artifacts/task           # the bundled task's data
python -m lightning_rlhf evaluate artifacts/ppo --against artifacts/sft --reward artifacts/rm
python -m lightning_rlhf evaluate-rm artifacts/rm           # accuracy, calibration on preferences
python -m lightning_rlhf demo                               # the whole pipeline, embedded defaults
python -m lightning_rlhf label --policy artifacts/sft --prompts FILE --db labels.sqlite  # people judge
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

    def _parse_ckpt_path(self) -> None:
        """Lightning's merge of a ``--ckpt_path`` checkpoint's hyperparameters over the parsed
        config (the config a run is resumed with; Lightning has no public hook for it), refusing
        a checkpoint whose hyperparameters would change which code runs or where the weights
        come from (:func:`ckpt_overrides`): those are the config's to say, and what
        ``--print_config`` shows is what runs."""
        import torch

        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        from lightning_rlhf.modules.ppo_options import upgrade_hparams

        ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else None
        if not isinstance(hparams, dict):
            raise ValueError(f"--ckpt_path {ckpt_path} is not a Lightning checkpoint")
        # a PPO checkpoint saved before its critic, KL penalty and policy loss became components:
        # the fields that became components dropped (the config gives those), renamed ones renamed
        hparams = upgrade_hparams(hparams)
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        config = self.config[subcommand].get("model")
        config = config.as_dict() if hasattr(config, "as_dict") else {}
        differ = ckpt_overrides(hparams, config)
        if differ:
            raise ValueError(
                f"--ckpt_path {ckpt_path} was saved with other settings than the config's for "
                f"what code runs and where weights come from: {'; '.join(differ)}. A checkpoint "
                "may not change these (its file could come from anyone): give the config the "
                "checkpoint's values if you trust them, or resume with a checkpoint of this config"
            )
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def _load_checkpoints_safely(self) -> None:
        # --ckpt_path is unpickled with weights_only=True (nothing in it can run code) whatever
        # the torch version's default; `--weights_only false` is the explicit way out
        arguments = self.config_init[self.subcommand]
        if arguments.get("weights_only") is None:
            arguments["weights_only"] = True
        self._check_logger_dirs()

    def _check_logger_dirs(self) -> None:
        # Lightning creates the loggers' directories before any setup hook: a read-only one
        # would be its traceback, not a line naming the directory
        from lightning_rlhf.io import check_writable

        for logger in self.trainer.loggers:
            save_dir = getattr(logger, "save_dir", None)
            if save_dir:
                check_writable(save_dir, f"trainer.logger ({type(logger).__name__}) save_dir")

    before_fit = before_validate = before_test = before_predict = _load_checkpoints_safely

    def instantiate_trainer(self, **kwargs) -> Trainer:
        from lightning_rlhf.callbacks.progress import RunProgressBar

        config = self._get(self.config_init, "trainer", default={})
        if config.get("enable_progress_bar") is False and isinstance(config.get("callbacks"), list):
            # the shipped configs list the bar; `enable_progress_bar: false` turns it off
            config["callbacks"] = [
                c for c in config["callbacks"] if not isinstance(c, RunProgressBar)
            ]
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def _protected(key: str) -> bool:
    """Hyperparameters that choose code (a class, remote code) or weights (a model path, extra
    ``from_pretrained`` arguments such as a revision or subfolder)."""
    return key in {"class_path", "_class_path", "trust_remote_code", "extra"} or key.endswith(
        "name_or_path"
    )


def _same(saved: Any, config: Any) -> bool:
    if saved == config:
        return True
    paths = isinstance(saved, str) and isinstance(config, str)
    return paths and Path(saved).expanduser().resolve() == Path(config).expanduser().resolve()


def ckpt_overrides(hparams: dict, config: dict) -> list[str]:
    """``"<key>: <checkpoint's value> in the checkpoint, <config's> in the config"`` for each
    protected hyperparameter (:func:`_protected`, at any depth) of a checkpoint's
    ``hyper_parameters`` that differs from the parsed config's ``model`` (or that the config
    lacks). ``hparams`` is a module's flat form (``_class_path`` + its arguments)."""
    saved = {"init_args": {k: v for k, v in hparams.items() if k != "_class_path"}}
    if "_class_path" in hparams:
        saved["class_path"] = hparams["_class_path"]
    return _differences(saved, config, "model")


_ABSENT = "(absent)"


def _differences(saved: Any, config: Any, where: str) -> list[str]:
    if isinstance(saved, list):
        config = config if isinstance(config, list) and len(config) == len(saved) else []
        pairs = [(f"{where}[{i}]", s, config[i] if config else {}) for i, s in enumerate(saved)]
    elif isinstance(saved, dict):
        config = config if isinstance(config, dict) else {}
        pairs = [
            (where if k == "init_args" else f"{where}.{k}", v, config.get(k, _ABSENT))
            for k, v in saved.items()
        ]
    else:
        return []
    found = []
    for here, value, mine in pairs:
        key = here.rsplit(".", 1)[-1]
        if _protected(key) and not _same(value, mine):
            found.append(f"{here}: {value!r} in the checkpoint, {mine!r} in the config")
        elif not _protected(key):
            found += _differences(value, mine, here)
    return found


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
    from lightning_rlhf.evaluation.commands import evaluate_main

    evaluate_main(argv)


def _evaluate_rm(argv: list[str]) -> None:
    from lightning_rlhf.evaluation.commands import evaluate_rm_main

    evaluate_rm_main(argv)


def _label(argv: list[str]) -> None:
    from lightning_rlhf.label.cli import main as label_main

    label_main(argv)


TOOLS = {
    "init-model": _init_model,
    "make-data": _make_data,
    "evaluate": _evaluate,
    "evaluate-rm": _evaluate_rm,
    "label": _label,
    "demo": _demo,
}

# one line per command for `python -m lightning_rlhf --help`; each command's own --help says more
COMMANDS = {
    "fit": "train a stage: fit --config configs/<stage>.yaml (LightningCLI)",
    "validate / test / predict": "run one loop of a stage's module (LightningCLI)",
    "init-model": "write the embedded default model (a tiny Llama, byte tokenizer)",
    "make-data": "write the bundled task's SFT, preference, prompt and RewardBench-layout files",
    "evaluate": "score a policy with a reward; --against: its win rate over another policy",
    "evaluate-rm": "a reward model's accuracy, ties score and calibration on preference data",
    "label": "the labeling app: people judge pairs of responses; export, stats, Label Studio",
    "demo": "the whole pipeline (SFT, reward model, PPO, ...) on the embedded defaults",
}


def print_commands() -> None:
    print("usage: python -m lightning_rlhf COMMAND [options]   (COMMAND --help for its options)\n")
    width = max(map(len, COMMANDS))
    for name, line in COMMANDS.items():
        print(f"  {name:<{width}}  {line}")
    print("\nLightningCLI's own options follow.\n")


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if not argv or argv[0] in ("-h", "--help"):
        print_commands()
    try:
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
    except Exception as err:
        shown = user_error(err)
        if shown is None or os.environ.get("LIGHTNING_RLHF_TRACEBACK") == "1":
            raise
        sys.exit(
            f"error: {type(shown).__name__}: {shown}\n(LIGHTNING_RLHF_TRACEBACK=1 shows where)"
        )
