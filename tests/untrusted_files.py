"""Helpers of tests/unit/test_untrusted.py: hostile files (a model directory with code, a
checkpoint of plain dicts, a pickle that leaves a marker), a user's directory, short runs."""

import json
import shutil
from pathlib import Path

import lightning as L
import torch

from lightning_rlhf import SFTDataModule
from lightning_rlhf.modules.sft import SFTModule

ROOT = Path(__file__).resolve().parents[1]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def sft_fit(model_dir, task_dir, tmp_path, callbacks, max_steps=1) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks,
        default_root_dir=tmp_path,
    )  # fmt: skip
    data = SFTDataModule(
        str(task_dir / "sft_train.jsonl"), None, model_dir, val_fraction=0.0, batch_size=8,
        max_length=32,
    )  # fmt: skip
    trainer.fit(SFTModule(model_dir), data)
    return trainer


def user_dir(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    (path / "sub" / "data.csv").write_text("a,b\n")
    return path


REMOTE_CODE = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
from transformers import LlamaConfig, LlamaForCausalLM
class EvilConfig(LlamaConfig):
    pass
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
"""


def model_with_code(tiny_model_dir, d: Path, marker: Path) -> Path:
    """A copy of the tiny model whose config maps the auto classes to its own ``.py``: loading it
    with ``trust_remote_code=True`` runs that file (it writes ``marker``)."""
    shutil.copytree(tiny_model_dir, d)
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "remote_code.EvilConfig",
        "AutoModelForCausalLM": "remote_code.EvilModel",
    }
    (d / "config.json").write_text(json.dumps(config))
    (d / "remote_code.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    return d


def plain_checkpoint(path: Path, **hparams) -> Path:
    """A checkpoint of plain dicts (it loads with ``weights_only=True``) with ``hparams``."""
    torch.save({"state_dict": {}, "global_step": 0, "hyper_parameters": hparams}, path)
    torch.load(path, weights_only=True)
    return path


def fit_sft_cli(tmp_path, task_dir, *args) -> str:
    """``main(["fit", "--config", configs/sft.yaml, ...])`` in this process; its error line."""
    from lightning_rlhf.cli import main

    config = ROOT / "configs/sft.yaml"
    try:
        main(["fit", "--config", str(config), "--data.train_path", str(task_dir / "sft_train.jsonl"),
              "--data.val_path", "null", "--trainer.logger", "false", "--trainer.max_steps", "1",
              "--trainer.enable_progress_bar", "false", *args])  # fmt: skip
    except SystemExit as exit_:
        return str(exit_.code)
    except Exception as err:  # a traceback, not the one-line error the tests expect
        return repr(err)
    return "exit 0"


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def truncate(d: Path) -> None:
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])


EXPORT_WITH_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from lightning_rlhf.models import export_hf, load_causal_lm, load_tokenizer
model, tokenizer = load_causal_lm(sys.argv[1]), load_tokenizer(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    export_hf(model, tokenizer, sys.argv[2])
except Exception as err:
    print(type(err).__name__, getattr(err, "errno", None), err)
"""
