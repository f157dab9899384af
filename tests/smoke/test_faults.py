"""Faults injected into real runs, and what is left afterwards.

- SIGKILL at a random moment of an SFT and of a reward run (the real CLI, in a subprocess): the
  run resumed from ``last.ckpt`` logs exactly what the uninterrupted run logged (PPO:
  test_cli_ppo.py).
- NaN/Inf in the loss (SFT, reward), in a gradient, and in PPO's advantages: the run stops at
  that step, names the quantity and the step, and the last checkpoint holds finite weights.
- A kill in the middle of an export, a full disk during an export or a checkpoint, a read-only
  output directory: a clear error, and the previous export or checkpoint is still complete.
- Untrusted files: a pickled payload as model weights or as a checkpoint is refused and never
  runs.
"""

import ast
import errno
import inspect
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from cli_runner import read_metrics, run_cli
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_rlhf
from lightning_rlhf import HFExport, PreferenceDataModule, SFTDataModule
from lightning_rlhf.cli import AtomicCheckpointIO
from lightning_rlhf.data.base import TextDataModule
from lightning_rlhf.data.prompts import PromptDataModule
from lightning_rlhf.models import export_hf, load_causal_lm, load_scalar_model, load_tokenizer
from lightning_rlhf.modules.reward import RewardModule
from lightning_rlhf.modules.sft import SFTModule

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(lightning_rlhf.__file__).resolve().parent


# ------------------------------------------------------------------------------- SIGKILL
STEPS = 40  # optimizer steps of each run; a checkpoint after every one
KILL_FRACTION = 0.6  # the kill lands within this fraction of the run, after two checkpoints


def stage_args(stage: str, model: str, task: Path, out: Path) -> list[str]:
    data = {
        "sft": ["--data.train_path", str(task / "sft_train.jsonl")],
        "reward": ["--data.train_path", str(task / "pref_train.jsonl")],
    }[stage]
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(out / "ckpt"), "save_last": True, "every_n_train_steps": 1},
    }
    return [
        "fit", "--config", str(ROOT / f"configs/{stage}.yaml"),
        "--model.model_name_or_path", model, *data,
        "--data.val_path", "null", "--data.val_fraction", "0", "--data.batch_size", "8",
        "--trainer.max_steps", str(STEPS), "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(out / "logs"),
        "--trainer.callbacks", json.dumps([checkpoint]),
    ]  # fmt: skip


def start(args: list[str], out: Path) -> subprocess.Popen:
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (out / "stdout").open("w") as o, (out / "stderr").open("w") as e:
        return subprocess.Popen(
            [sys.executable, "-m", "lightning_rlhf", *args], stdout=o, stderr=e, env=env, cwd=out
        )


def kill_at_random_and_resume(stage: str, model: str, task: Path, d: Path) -> dict:
    """Runs A (uninterrupted) and B side by side; B is SIGKILLed at a random moment after its
    first checkpoint and resumed from last.ckpt. Returns what the comparison saw."""
    a = start(stage_args(stage, model, task, d / "a"), d / "a")
    b = start(stage_args(stage, model, task, d / "b"), d / "b")
    last = d / "b" / "ckpt" / "last.ckpt"

    def version() -> tuple[int, int] | None:
        try:
            st = last.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns  # a new file is renamed into place at each save

    deadline = time.monotonic() + 240
    while version() is None and b.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    # the kill lands uniformly within the first KILL_FRACTION of the remaining steps, timed by
    # how long this machine took for one step (fast and slow machines alike kill mid-run)
    first, t0 = version(), time.monotonic()
    while version() == first and b.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    step_s = time.monotonic() - t0
    delay = random.uniform(0, KILL_FRACTION * STEPS * step_s)
    time.sleep(delay)
    b.send_signal(signal.SIGKILL)
    b.wait()
    context = (
        f"kill {delay:.2f} s after the first checkpoint; {(d / 'b/stderr').read_text()[-2000:]}"
    )
    assert b.returncode == -signal.SIGKILL, context  # it was still running: a real kill
    killed_at = torch.load(last, weights_only=True)["global_step"]  # complete, and safe to load
    assert 1 <= killed_at < STEPS, context
    resumed = d / "b_resumed"
    args = stage_args(stage, model, task, resumed)
    run_cli(*args, "--ckpt_path", str(last), cwd=d, threads=1, timeout=300)
    assert a.wait(timeout=300) == 0, (d / "a" / "stderr").read_text()[-3000:]
    ref, got = read_metrics(d / "a" / "logs"), read_metrics(resumed / "logs")
    assert sorted(got) == [s for s in sorted(ref) if s >= killed_at], (killed_at, sorted(got))
    compared = 0
    for step, row in got.items():
        for key, value in row.items():
            if key == "epoch":
                continue
            assert value == pytest.approx(ref[step][key], rel=1e-5, abs=1e-6), (step, key, context)
            compared += 1
    assert compared >= 2 * (STEPS - killed_at)
    return {"delay_s": round(delay, 2), "killed_at": killed_at, "compared": compared}


def test_sft_killed_at_a_random_moment_resumes_to_the_same_metrics(
    tiny_model_dir, task_dir, tmp_path
):
    print(kill_at_random_and_resume("sft", tiny_model_dir, task_dir, tmp_path))


def test_reward_killed_at_a_random_moment_resumes_to_the_same_metrics(
    tiny_model_dir, task_dir, tmp_path
):
    print(kill_at_random_and_resume("reward", tiny_model_dir, task_dir, tmp_path))


# ------------------------------------------------------------------------------- NaN / Inf
class PoisonAt(L.Callback):
    """Before the batch of optimizer step ``step``: an infinite weight (``where="weight"``), or an
    infinite gradient on a finite loss (``where="gradient"``)."""

    def __init__(self, step: int, where: str = "weight", param: str | None = None) -> None:
        self.step, self.where, self.param = step, where, param

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        name, p = next(
            (n, p) for n, p in pl_module.named_parameters() if self.param is None or self.param in n
        )
        if self.where == "weight":
            with torch.no_grad():
                p.fill_(float("inf"))
        else:
            p.register_hook(lambda g: g * float("inf"))


def fit_until_fault(module, dm, tmp_path, callbacks, steps=8, every=1):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=every)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, use_distributed_sampler=False,
        callbacks=[ckpt, *callbacks], default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(FloatingPointError) as err:
        trainer.fit(module, dm)
    return str(err.value), trainer


def assert_last_checkpoint_good(tmp_path, step):
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == step
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def sft_data(task_dir, tokenizer):
    path = str(task_dir / "sft_train.jsonl")
    return SFTDataModule(path, None, tokenizer, val_fraction=0.0, batch_size=8, max_length=32)


def pref_data(task_dir, tokenizer):
    path = str(task_dir / "pref_train.jsonl")
    return PreferenceDataModule(
        path, None, tokenizer, val_fraction=0.0, batch_size=8, max_length=32
    )


def test_inf_weight_in_sft_stops_at_that_step_naming_the_loss(tiny_model_dir, task_dir, tmp_path):
    module = SFTModule(tiny_model_dir)
    message, trainer = fit_until_fault(
        module, sft_data(task_dir, tiny_model_dir), tmp_path, [PoisonAt(3, param="norm")]
    )
    assert re.search(r"non-finite loss (\(.*\) )?at step 3", message), message
    assert trainer.global_step == 3
    assert_last_checkpoint_good(tmp_path, 3)  # written after step 3, before the fault


def test_inf_gradient_in_sft_stops_before_the_optimizer_step(tiny_model_dir, task_dir, tmp_path):
    module = SFTModule(tiny_model_dir)
    poison = PoisonAt(2, where="gradient", param="embed")
    message, trainer = fit_until_fault(
        module, sft_data(task_dir, tiny_model_dir), tmp_path, [poison]
    )
    assert "non-finite gradient at step 2" in message and trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())  # no step was taken
    assert_last_checkpoint_good(tmp_path, 2)


def test_inf_weight_in_reward_model_stops_naming_the_loss(tiny_model_dir, task_dir, tmp_path):
    module = RewardModule(tiny_model_dir)
    message, trainer = fit_until_fault(
        module, pref_data(task_dir, tiny_model_dir), tmp_path, [PoisonAt(4, param="norm")]
    )
    assert re.search(r"non-finite loss (\(.*\) )?at step 4", message), message
    assert trainer.global_step == 4
    assert_last_checkpoint_good(tmp_path, 4)


class NaNLossOnce:
    """Wraps a module's loss function: the ``n``-th training call returns a NaN loss, once."""

    def __init__(self, fn, n: int) -> None:
        self.fn, self.n, self.calls = fn, n, 0

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        self.calls += 1
        if self.calls != self.n:
            return out
        return (out[0] * float("nan"), *out[1:])


class WeightsMoved(L.Callback):
    """Records, for each training batch, whether any weight changed."""

    def __init__(self) -> None:
        self.moved: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = list(pl_module.parameters())
        self.moved.append(any(not torch.equal(a, b) for a, b in zip(self.before, now)))


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_nan_loss_under_skip_skips_that_batch_and_trains_on(
    stage, tiny_model_dir, task_dir, tmp_path
):
    if stage == "sft":
        module, dm, attr = SFTModule(tiny_model_dir, nan_policy="skip"), sft_data, "_loss"
    else:
        module, dm, attr = RewardModule(tiny_model_dir, nan_policy="skip"), pref_data, "_step"
    poison = NaNLossOnce(getattr(module, attr), n=3)
    setattr(module, attr, poison)
    moved = WeightsMoved()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=5, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, enable_checkpointing=False,
        default_root_dir=tmp_path, callbacks=[moved],
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"non-finite loss .* at step 2; step skipped"):
        trainer.fit(module, dm(task_dir, tiny_model_dir))
    # Lightning counts the skipped batch as a step; the weights did not move on it
    assert trainer.global_step == 5 and poison.calls == 5
    assert moved.moved == [True, True, False, True, True]
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_nan_values_in_ppo_stop_at_the_iteration_naming_the_advantages(
    tiny_model_dir, task_dir, tmp_path
):
    """The value head turns NaN before iteration 2 (optimizer step 2): its advantages are NaN."""
    from lightning_rlhf.critics import ValueHead
    from lightning_rlhf.modules.ppo import PPOModule, PPOOptions
    from lightning_rlhf.rewards import TaskOracle
    from lightning_rlhf.rollout import SamplingOptions

    module = PPOModule(
        tiny_model_dir, reward=TaskOracle(), critic=ValueHead(),
        sampling=SamplingOptions(max_new_tokens=4), ppo=PPOOptions(ppo_epochs=1, num_minibatches=1),
        log_samples_every_n_iterations=0,
    )  # fmt: skip
    prompts = PromptDataModule(
        str(task_dir / "prompts_train.jsonl"), None, tiny_model_dir, val_fraction=0.0,
        batch_size=8, max_prompt_length=32,
    )  # fmt: skip
    message, trainer = fit_until_fault(module, prompts, tmp_path, [PoisonAt(2, param="value_head")])
    assert re.search(r"non-finite advantages \(.*\) at step 2", message), message
    assert trainer.global_step == 2
    assert_last_checkpoint_good(tmp_path, 2)


def test_check_finite_raises_or_skips_by_policy(tiny_model_dir):
    module = SFTModule(tiny_model_dir)
    assert module.check_finite("reward", torch.tensor([1.0, 2.0]))
    with pytest.raises(FloatingPointError, match=r"non-finite reward \(1 of 2 values\) at step 0"):
        module.check_finite("reward", torch.tensor([1.0, float("nan")]))
    module.nan_policy = "skip"
    with pytest.warns(UserWarning, match=r"non-finite reward .* step skipped"):
        assert not module.check_finite("reward", torch.tensor([float("inf")]))


# ------------------------------------------------------------------------------- writes
KILLED_EXPORT = """
import os, signal, sys
from pathlib import Path
from lightning_rlhf.io import atomic_dir

with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "config.json").write_text("{}")
    with open(tmp / "model.safetensors", "wb") as f:
        f.write(b"half a model")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of writing the weights
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("exports") / "sft"
    return export_hf(load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir), out)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_kill_during_export_leaves_the_previous_export_complete(export, tmp_path):
    before = snapshot(export)
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(export)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert snapshot(export) == before
    assert [p.name for p in export.parent.glob(".sft.tmp-*")]  # the half-written one, aside
    load_causal_lm(str(export))  # loads
    export_hf(load_causal_lm(str(export)), load_tokenizer(str(export)), export)
    assert sorted(p.name for p in export.parent.iterdir()) == ["sft"]  # leftovers cleaned up


def test_disk_full_during_export_names_the_target_and_keeps_the_previous(export, tiny_model_dir):
    """The disk fills after the weights are written, while the tokenizer is."""
    before = snapshot(export)

    class FullDisk:
        def save_pretrained(self, directory, **kwargs):
            (Path(directory) / "tokenizer.json").write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        export_hf(load_causal_lm(tiny_model_dir), FullDisk(), export)
    assert err.value.errno == errno.ENOSPC
    assert f"could not write directory {export}" in str(err.value)
    assert "No space left on device" in str(err.value) and "unchanged" in str(err.value)
    assert snapshot(export) == before
    assert sorted(p.name for p in export.parent.iterdir()) == ["sft"]


def test_disk_full_during_a_checkpoint_keeps_the_last_one(
    tiny_model_dir, task_dir, tmp_path, monkeypatch
):
    """AtomicCheckpointIO (the CLI's writer): the third save fails as on a full disk."""
    import lightning_rlhf.io as io

    saves, real_fsync = [], os.fsync

    def fsync(fd):
        saves.append(fd)
        if len(saves) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", fsync)
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0
    )
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False,
        enable_model_summary=False, plugins=[AtomicCheckpointIO()], callbacks=[ckpt],
        default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(OSError, match=r"could not write file .*last\.ckpt: No space left"):
        trainer.fit(SFTModule(tiny_model_dir), sft_data(task_dir, tiny_model_dir))
    monkeypatch.setattr(io.os, "fsync", real_fsync)
    assert_last_checkpoint_good(tmp_path, 2)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A directory nothing can be created in. Root ignores permission bits, so under root the
    kernel's answer (EACCES) is given by patching os.open and os.mkdir for paths inside it."""
    d = tmp_path / "read_only"
    d.mkdir()
    d.chmod(0o555)
    if os.geteuid() == 0:
        real_open, real_mkdir = os.open, os.mkdir

        def refuse(real):
            def call(path, *args, **kwargs):
                if Path(path).absolute().is_relative_to(d):
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                return real(path, *args, **kwargs)

            return call

        monkeypatch.setattr(os, "open", refuse(real_open))
        monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))
    yield d
    d.chmod(0o755)


@pytest.mark.parametrize("target", ["export", "checkpoints"])
def test_read_only_output_directory_fails_before_the_first_step(
    target, read_only_dir, tiny_model_dir, task_dir, tmp_path
):
    export_dir = read_only_dir / "sft" if target == "export" else tmp_path / "sft"
    ckpt_dir = read_only_dir / "ckpt" if target == "checkpoints" else tmp_path / "ckpt"
    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir), HFExport(dirpath=str(export_dir))],
        default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(PermissionError) as err:
        trainer.fit(SFTModule(tiny_model_dir), sft_data(task_dir, tiny_model_dir))
    assert f"{read_only_dir} is not writable" in str(err.value) or (
        f"{ckpt_dir} is not writable" in str(err.value)
    )
    assert trainer.global_step == 0  # nothing trained, nothing lost


def test_the_cli_writes_checkpoints_with_the_atomic_writer(tmp_path, monkeypatch):
    from lightning_rlhf.cli import RLHFCLI

    monkeypatch.chdir(tmp_path)
    cli = RLHFCLI(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
        subclass_mode_data=True, run=False,
        args=["--model", "lightning.pytorch.demos.boring_classes.BoringModel",
              "--data", "lightning.pytorch.demos.boring_classes.BoringDataModule",
              "--trainer.logger", "false"],
    )  # fmt: skip
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ------------------------------------------------------------------------------- untrusted files
class Payload:
    """Unpickling this calls ``Path.touch(marker)``: code run by merely loading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_pickled_weights_are_refused_and_never_run(tiny_model_dir, tmp_path):
    import shutil

    marker = tmp_path / "pwned"
    d = tmp_path / "untrusted_model"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Payload(marker)}, d / "pytorch_model.bin")
    for load in (load_causal_lm, load_scalar_model):
        with pytest.raises(ValueError, match="pickled weights .* can execute code"):
            load(str(d))
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 - the point is only that the payload never ran
        torch.load(d / "pytorch_model.bin", weights_only=True)
    assert not marker.exists()


def test_a_checkpoint_from_an_unknown_source_cannot_run_code(tiny_model_dir, task_dir, tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    evil = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": Payload(marker)}, evil)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trainer.fit(SFTModule(tiny_model_dir), sft_data(task_dir, tiny_model_dir), ckpt_path=evil)
    assert not marker.exists()


def test_the_package_never_unpickles_and_trusts_no_remote_code_by_default():
    from lightning_rlhf.models import ModelOptions
    from lightning_rlhf.rewards import RewardModel

    loads = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            assert not re.search(r"pickle\.(loads?|Unpickler)$|dill\.loads?$", func), (path, func)
            if func.endswith("torch.load"):
                safe = {k.arg: ast.unparse(k.value) for k in node.keywords}.get("weights_only")
                loads.append((path.name, safe))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert ast.unparse(node.value) != "True", path
    assert all(safe == "True" for _, safe in loads), loads  # none today; any added must be safe
    defaults = [
        ModelOptions().trust_remote_code,
        *(
            inspect.signature(cls).parameters["trust_remote_code"].default
            for cls in (RewardModel, TextDataModule)  # the data modules' shared options
        ),
        *(
            cls().trust_remote_code
            for cls in (SFTDataModule, PreferenceDataModule, PromptDataModule)
        ),
    ]
    assert defaults == [False] * 6


def test_a_resumed_python_run_reads_its_own_checkpoint_safely(tiny_model_dir, task_dir, tmp_path):
    """Checkpoints hold the options dataclasses as hyperparameters; they load with
    weights_only=True because the module allows exactly its own option types."""
    first = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)], default_root_dir=tmp_path,
    )  # fmt: skip
    first.fit(SFTModule(tiny_model_dir), sft_data(task_dir, tiny_model_dir))
    again = L.Trainer(
        accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    again.fit(
        SFTModule(tiny_model_dir),
        sft_data(task_dir, tiny_model_dir),
        ckpt_path=tmp_path / "last.ckpt",
    )
    assert again.global_step == 3


def test_the_cli_never_unpickles_a_checkpoint_even_where_torch_would(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 gives torch < 2.6's default (unpickle anything) to a
    load that does not ask: a bare Trainer then runs the payload; the CLI asks for weights only."""
    import pickle

    from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

    from lightning_rlhf.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "loops": Payload(marker)}, tmp_path / "evil.ckpt")
    boring = ["--model", "lightning.pytorch.demos.boring_classes.BoringModel",
              "--data", "lightning.pytorch.demos.boring_classes.BoringDataModule"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *boring, "--trainer.logger", "false", "--ckpt_path", "evil.ckpt"])
    assert "UnpicklingError: Weights only load failed" in str(exit_.value.code)
    assert not marker.exists()
    bare = L.Trainer(logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises((KeyError, AttributeError, TypeError, pickle.UnpicklingError)):
        bare.fit(BoringModel(), BoringDataModule(), ckpt_path=tmp_path / "evil.ckpt")
    assert marker.exists()  # what the CLI's weights_only=True prevents
