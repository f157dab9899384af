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

import pytest
import torch
from untrusted_files import (
    EXPORT_WITH_A_FILE_SIZE_LIMIT,
    Payload,
    fit_sft_cli,
    model_with_code,
    plain_checkpoint,
    sft_fit,
    snapshot,
    truncate,
    user_dir,
)

from lightning_rlhf import HFExport
from lightning_rlhf.export_target import MARKER, acquire_lock, lock_path, release_lock
from lightning_rlhf.models import export_hf, load_causal_lm, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)


# ------------------------------------------------------------------------------- 4. targets
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


# ------------------------------------------------------------------------------- 1. checkpoints
def test_a_checkpoint_cannot_turn_on_remote_code(tiny_model_dir, task_dir, tmp_path, monkeypatch):
    """Checkpoint's `trust_remote_code: true` over the config's `false` -> refused naming both; no code"""
    from transformers import AutoConfig

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    d = model_with_code(tiny_model_dir, tmp_path / "downloaded", marker)
    options = {"dtype": "auto", "attn_implementation": "sdpa", "gradient_checkpointing": False,
               "trust_remote_code": True, "lora": None, "extra": {}}  # fmt: skip
    ckpt = plain_checkpoint(tmp_path / "shared.ckpt", _class_path="lightning_rlhf.SFTModule",
                            model_name_or_path=str(d), model=options)  # fmt: skip
    error = fit_sft_cli(tmp_path, task_dir, "--model.model_name_or_path", str(d),
                        "--model.model.trust_remote_code", "false", "--ckpt_path", str(ckpt))  # fmt: skip
    assert not marker.exists(), error
    assert error.startswith("error: ValueError: --ckpt_path")
    assert "model.model.trust_remote_code: True in the checkpoint, False in the config" in error
    AutoConfig.from_pretrained(d, trust_remote_code=True)  # the payload is real: trusted, it runs
    assert marker.read_text() == "remote code ran"


def test_a_checkpoint_cannot_swap_the_module_or_the_weights(
    tiny_model_dir, task_dir, tmp_path, monkeypatch
):
    """PPO checkpoint to the SFT config, or another model path -> refused naming both values"""
    monkeypatch.chdir(tmp_path)
    ppo = plain_checkpoint(tmp_path / "ppo.ckpt", _class_path="lightning_rlhf.PPOModule",
                           model_name_or_path=tiny_model_dir)  # fmt: skip
    error = fit_sft_cli(
        tmp_path, task_dir, "--model.model_name_or_path", tiny_model_dir, "--ckpt_path", str(ppo)
    )
    assert (
        "model.class_path: 'lightning_rlhf.PPOModule' in the checkpoint, "
        "'lightning_rlhf.SFTModule' in the config" in error
    )
    elsewhere = plain_checkpoint(tmp_path / "sft.ckpt", _class_path="lightning_rlhf.SFTModule",
                                 model_name_or_path="/elsewhere/model")  # fmt: skip
    error = fit_sft_cli(
        tmp_path,
        task_dir,
        "--model.model_name_or_path",
        tiny_model_dir,
        "--ckpt_path",
        str(elsewhere),
    )
    assert (
        f"model.model_name_or_path: '/elsewhere/model' in the checkpoint, '{tiny_model_dir}' in the config"
        in error
    )


def test_checkpoint_hyperparameters_are_compared_at_any_depth():
    """Checkpoint's nested class_path, `*_name_or_path`, `model.extra` unlike the config -> each named"""
    from lightning_rlhf.cli import ckpt_overrides

    config = {"class_path": "lightning_rlhf.PPOModule", "init_args": {
        "model_name_or_path": "a", "reward": {"class_path": "lightning_rlhf.TaskOracle"},
        "model": {"trust_remote_code": False, "extra": {}}, "ppo": {"epochs": 2}}}  # fmt: skip
    same = {"_class_path": "lightning_rlhf.PPOModule", "model_name_or_path": "a", "ppo": {"epochs": 4},
            "model": {"trust_remote_code": False, "extra": {}}}  # fmt: skip
    assert ckpt_overrides(same, config) == []  # other hyperparameters are the checkpoint's to give
    hostile = {**same, "reward": {"class_path": "evil.Reward"}, "critic_name_or_path": "b",
               "model": {"trust_remote_code": False, "extra": {"subfolder": "x"}}}  # fmt: skip
    assert sorted(ckpt_overrides(hostile, config)) == [
        "model.critic_name_or_path: 'b' in the checkpoint, '(absent)' in the config",
        "model.model.extra: {'subfolder': 'x'} in the checkpoint, {} in the config",
        "model.reward.class_path: 'evil.Reward' in the checkpoint, 'lightning_rlhf.TaskOracle' in the config",
    ]


# ------------------------------------------------------------------------------- 2. class_path
# calls that import or instantiate what a string names; where the package may make them
RESOLVERS = (
    r"(import_module|__import__|locate|import_object|get_class_from_dynamic_module|"
    r"load_from_checkpoint|parse_object|parse_string|parse_path|instantiate_module|yaml\.load)$"
)
ALLOWED = {
    ("__init__.py", "importlib.import_module"),  # the lazy-export table: fixed module names
    ("cli.py", "self.parser.parse_object"),  # a checkpoint's hparams, after ckpt_overrides
    # `evaluate --reward pkg.module:function` (the command line, or a YAML: both are code)
    ("policy_eval.py", "importlib.import_module"),
}


def test_no_class_path_is_resolved_from_a_data_file():
    """Package source: code that imports what a string names -> only the config's (CLI) and a fixed table"""
    import ast
    import re

    import lightning_rlhf

    found = set()
    for path in sorted(Path(lightning_rlhf.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and re.search(RESOLVERS, ast.unparse(node.func)):
                found.add((path.name, ast.unparse(node.func)))
    assert found == ALLOWED


def test_make_data_replaces_only_its_own_output(tmp_path):
    """make-data into a directory of user files -> refused, naming it; the files untouched"""
    from lightning_rlhf.tasks import write_task_data

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        write_task_data(mine, seed=1, scale=0.001, progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "task"
    write_task_data(out, seed=1, scale=0.001, progress=False)
    write_task_data(out, seed=2, scale=0.001, progress=False)  # its own output: replaced
    assert (out / "prompts_val.jsonl").exists()


# ------------------------------------------------------------------------------- 3. pickles
def test_a_lora_adapter_of_pickled_weights_is_refused(tiny_model_dir, tmp_path):
    """LoRA adapter directory with a pickled `adapter_model.bin` -> refused like other pickles; never run"""
    from lightning_rlhf.models import LoraOptions, ModelOptions

    lora = load_causal_lm(tiny_model_dir, ModelOptions(lora=LoraOptions(r=2)))
    adapter = export_hf(
        lora, load_tokenizer(tiny_model_dir), tmp_path / "adapter", merge_lora=False
    )
    (adapter / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"base_model.model.lm_head.weight": Payload(marker)}, adapter / "adapter_model.bin")
    with pytest.raises(
        ValueError, match=r"adapter' holds only pickled weights .* can execute code"
    ):
        load_causal_lm(str(adapter))
    assert not marker.exists()


# ------------------------------------------------------------------------------- errors
CASES = [
    ("truncated", "A truncated `model.safetensors`", "refused, naming the file and its sizes"),
    (
        "no_config",
        "A model directory without `config.json`",
        "names the directory and what it holds",
    ),
    ("corrupt_config", "A `config.json` that is not JSON", "names the file and the JSON error"),
    (
        "no_tokenizer",
        "A model directory without tokenizer files",
        "names the directory and what it lacks",
    ),
]
BREAK = {  # case: (damage, loader, message)
    "truncated": (
        truncate,
        load_causal_lm,
        r"model.safetensors is truncated or damaged \(\d+ bytes, its header describes \d+\)",
    ),
    "no_config": (
        lambda d: (d / "config.json").unlink(),
        load_causal_lm,
        r"is not a model directory: it has no config.json \(it holds .*added_tokens.json",
    ),
    "corrupt_config": (
        lambda d: (d / "config.json").write_text('{"model_type": '),
        load_tokenizer,
        r"config.json is not valid JSON \(Expecting value: line 1 column 16",
    ),
    "no_tokenizer": (
        lambda d: (d / "tokenizer_config.json").unlink(),
        load_tokenizer,
        r"could not be loaded as a model directory .*: no tokenizer files",
    ),
}


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_a_damaged_model_directory_is_named(case, tiny_model_dir, tmp_path):
    import shutil

    d = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    damage, load, message = BREAK[case]
    damage(d)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        load(str(d))
    assert "init-model" not in str(err.value)  # it would overwrite the directory


def test_model_extra_with_an_unknown_or_reserved_key_is_named(tiny_model_dir):
    """`model.model.extra` with an unknown key, or one of our own options -> ValueError naming the key"""
    from lightning_rlhf.models import ModelOptions

    with pytest.raises(
        ValueError, match=r"extra: 'bogus_key' is not an argument of from_pretrained"
    ):
        load_causal_lm(tiny_model_dir, ModelOptions(extra={"bogus_key": 1}))
    with pytest.raises(
        ValueError, match=r"may not set trust_remote_code: set model.model.trust_remote_code"
    ):
        load_causal_lm(tiny_model_dir, ModelOptions(extra={"trust_remote_code": True}))


def test_a_negative_learning_rate_is_one_line(tiny_model_dir, task_dir, tmp_path, monkeypatch):
    """A negative `model.optimizer.init_args.lr` -> one line naming the option and the value"""
    monkeypatch.chdir(tmp_path)
    error = fit_sft_cli(tmp_path, task_dir, "--model.model_name_or_path", tiny_model_dir,
                        "--model.optimizer.init_args.lr", "-0.1")  # fmt: skip
    assert error.startswith("error: ValueError: model.optimizer: Invalid learning rate: -0.1"), (
        error
    )


def test_a_read_only_logger_directory_is_one_line(tiny_model_dir, task_dir, tmp_path, monkeypatch):
    """A read-only `trainer.logger` save_dir -> one line naming it, before the first step"""
    import errno

    monkeypatch.chdir(tmp_path)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):  # root ignores permission bits: the kernel's answer
        if Path(path).absolute().is_relative_to(read_only):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    error = fit_sft_cli(tmp_path, task_dir, "--model.model_name_or_path", tiny_model_dir,
                        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                        "--trainer.logger.save_dir", str(read_only / "logs"))  # fmt: skip
    assert error.startswith(
        f"error: PermissionError: [Errno 13] trainer.logger (CSVLogger) save_dir {read_only / 'logs'} "
        "is not writable"
    ), error


def test_evaluate_on_a_missing_directory_is_one_line(task_dir, tmp_path):
    """`evaluate` on a directory that does not exist -> one line naming it (was a traceback)"""
    from lightning_rlhf.cli import main

    prompts = str(task_dir / "prompts_val.jsonl")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(tmp_path / "nope"), "--prompts", prompts])
    assert str(exit_.value.code).startswith(
        f"error: FileNotFoundError: model '{tmp_path / 'nope'}'"
    )


def test_a_full_disk_during_the_weights_write_is_an_oserror_naming_the_target(model, tmp_path):
    """Disk full while safetensors writes the weights -> OSError naming the target, export kept"""
    import errno

    target = export_hf(*model, tmp_path / "sft")
    before = snapshot(target)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", EXPORT_WITH_A_FILE_SIZE_LIMIT, str(target), str(target)],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.stdout.startswith(
        f"OSError {errno.EFBIG} [Errno {errno.EFBIG}] could not write directory {target}: "
    ), proc.stdout + proc.stderr[-2000:]
    assert "is unchanged" in proc.stdout
    assert snapshot(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["sft"]
