"""Untrusted files and careless paths (issue 25, security and data safety).

A checkpoint's hyperparameters cannot turn on remote code, swap the module or move the weights;
a LoRA adapter of pickled weights is refused; an export never replaces what it did not write,
never replaces a trained export with an untrained model, and never races another run; a model,
file or option that is wrong gets one line naming it. Each test's docstring is a row of the
table in docs/reliability.md (``docs/make_reliability_table.py``).
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from lightning_rlhf import HFExport, SFTDataModule
from lightning_rlhf.export_target import MARKER, acquire_lock, lock_path, release_lock
from lightning_rlhf.models import export_hf, load_causal_lm, load_tokenizer
from lightning_rlhf.modules.sft import SFTModule

pytestmark = pytest.mark.usefixtures("one_thread")


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


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)


# ------------------------------------------------------------------------------- 4. targets
def user_dir(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    (path / "sub" / "data.csv").write_text("a,b\n")
    return path


def test_export_into_a_directory_of_user_files_is_refused(
    model, tiny_model_dir, task_dir, tmp_path
):
    """Export into a directory of user files (notes.txt, sub/) -> refused at fit start, naming it"""
    target = user_dir(tmp_path / "mine")
    before = snapshot(target)
    with pytest.raises(
        FileExistsError,
        match=rf"{target} holds files this package did not write \(notes.txt, sub/\)",
    ):
        export_hf(*model, target)
    export = HFExport(dirpath=str(target))
    with pytest.raises(FileExistsError, match=str(target)):
        sft_fit(tiny_model_dir, task_dir, tmp_path, [export])
    assert snapshot(target) == before
    assert not lock_path(target).exists()


def test_export_into_the_working_directory_is_refused(model, tmp_path, monkeypatch):
    """Export `dirpath: .` (the working directory) or above it -> refused, naming it; nothing lost"""
    work = user_dir(tmp_path / "work")
    monkeypatch.chdir(work)
    before = snapshot(work)
    for target in (".", work, tmp_path):
        with pytest.raises(FileExistsError, match=r"is the working directory or holds it"):
            export_hf(*model, target)
    assert snapshot(work) == before and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_export_onto_a_file_is_refused(model, tmp_path):
    """Export dirpath that is a file -> refused, naming it; the file unchanged"""
    target = tmp_path / "model.bin"
    target.write_bytes(b"a user's file")
    with pytest.raises(FileExistsError, match=rf"{target} is a file, not a directory"):
        export_hf(*model, target)
    assert target.read_bytes() == b"a user's file"


def test_earlier_exports_empty_and_absent_directories_are_replaced(model, tmp_path):
    """Export over an earlier export (marked, or unmarked from an older version), empty dir -> written"""
    marked = export_hf(*model, tmp_path / "marked")
    assert json.loads((marked / MARKER).read_text())["written_by"] == "lightning_rlhf"
    export_hf(*model, marked)  # ours: replaced
    old = export_hf(*model, tmp_path / "old", extra_json={"reward_stats.json": {"mean": 0.0}})
    (old / MARKER).unlink()  # as an earlier version wrote it
    export_hf(*model, old)
    assert (old / MARKER).is_file() and not (old / "reward_stats.json").exists()
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "absent" / "deeper"):
        assert (export_hf(*model, target) / "model.safetensors").is_file()
    (old / MARKER).unlink()
    (old / "notes.txt").write_text("mine")  # an unmarked export with a user's file: not ours
    with pytest.raises(FileExistsError, match=r"did not write \(notes.txt\)"):
        export_hf(*model, old)


# ------------------------------------------------------------------------------- 5. untrained
def test_a_run_of_no_step_does_not_replace_an_export(model, tiny_model_dir, task_dir, tmp_path):
    """`trainer.max_steps 0` onto a trained export -> refused, export unchanged (or `allow_untrained`)"""
    target = export_hf(*model, tmp_path / "sft")
    before = snapshot(target)
    with pytest.raises(
        ValueError, match=rf"took no optimizer step .* {target} was not exported and is unchanged"
    ):
        sft_fit(tiny_model_dir, task_dir, tmp_path, [HFExport(dirpath=str(target))], max_steps=0)
    assert snapshot(target) == before
    assert not lock_path(target).exists()  # released on the error
    sft_fit(tiny_model_dir, task_dir, tmp_path, [HFExport(str(target), allow_untrained=True)], 0)
    assert json.loads((target / MARKER).read_text())["global_step"] == 0


# ------------------------------------------------------------------------------- 6. lock
@pytest.fixture
def other_run():
    """A live process of this host that is not the test: the holder of a lock."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_run_exporting_to_the_same_directory_fails_naming_the_first(
    other_run, tiny_model_dir, task_dir, tmp_path
):
    """Two runs exporting to one directory -> the second fails at fit start naming the first's pid"""
    target = tmp_path / "sft"
    lock = lock_path(target)
    lock.write_text(json.dumps({"pid": other_run.pid, "host": socket.gethostname()}))
    with pytest.raises(
        FileExistsError, match=rf"being written by another run \(pid {other_run.pid} on "
    ):
        sft_fit(tiny_model_dir, task_dir, tmp_path, [HFExport(dirpath=str(target))])
    assert not target.exists() and json.loads(lock.read_text())["pid"] == other_run.pid
    other_run.send_signal(signal.SIGKILL)
    other_run.wait()  # its lock is now stale
    trainer = sft_fit(tiny_model_dir, task_dir, tmp_path, [HFExport(dirpath=str(target))])
    assert trainer.global_step == 1 and (target / "model.safetensors").is_file()
    assert not lock.exists()  # released after the export


def test_the_export_lock_admits_one_holder(tmp_path):
    """Export lock held by a live process -> another process is refused, naming the holder's pid"""
    code = (
        "import sys; from lightning_rlhf.export_target import acquire_lock\n"
        "acquire_lock(sys.argv[1])"
    )
    lock = acquire_lock(tmp_path / "sft")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "sft")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1 and f"pid {os.getpid()}" in proc.stderr, proc.stderr[-2000:]
    release_lock(lock)
    assert not lock.exists()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "sft")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
