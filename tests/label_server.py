"""The labeling server as a real subprocess (``python -m lightning_rlhf label``) for the HTTP,
kill and browser tests, and a pair queue built without a model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def need_label_extra() -> None:
    for module in ("starlette", "uvicorn", "jinja2", "httpx"):
        pytest.importorskip(module, reason=f"the 'label' extra is not installed ({module})")


def queued_db(path: Path, n: int, want: int = 1, texts=None) -> Path:
    """A database with ``n`` queued pairs: prompt ``q{i}``, responses ``good{i}`` / ``bad{i}``."""
    from lightning_rlhf.label.db import LabelDB

    db = LabelDB(path)
    with db.transaction():
        for i in range(n):
            a, b = texts(i) if texts else (f"good{i}", f"bad{i}")
            db.add_pair(f"q{i}", (a, b), ("m1", "m2"), {"temperature": 1.0}, float(-i), want)
    db.close()
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``label --db DB --port P [args]`` running until ``stop()`` / ``kill()``."""

    def __init__(self, db: Path, *args: str, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.log = log or Path(f"{db}.server.log")
        self._out = open(self.log, "w")  # noqa: SIM115 -- the child writes to it until stopped
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lightning_rlhf.label",
                "--db",
                str(db),
                "--port",
                str(self.port),
                *args,
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label server exited early:\n{self.log.read_text()}")
            try:
                httpx.get(self.url + "/api/progress", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"label server did not answer in {timeout} s:\n{self.log.read_text()}")

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no shutdown handler runs
        self.proc.wait(10)
        self._out.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


class Annotator:
    """An HTTP client that labels through the API, as the page does."""

    def __init__(self, url: str, token: str | None = None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=30.0)
        self.csrf = self.http.get("/api/session").json()["csrf"]

    def next(self) -> dict:
        return self.http.get("/api/next").json()

    def label(self, pair_id: int, choice: str, **extra):
        return self.http.post(
            "/api/label",
            json={"pair_id": pair_id, "choice": choice, **extra},
            headers={"X-CSRF-Token": self.csrf},
        )

    def undo(self):
        return self.http.post("/api/undo", json={}, headers={"X-CSRF-Token": self.csrf})
