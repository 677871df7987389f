"""Child processes started and stopped by PID: real vLLM servers and the fleet's other parts.

Used by the demo, the benchmarks and the session-scoped test fixtures. Every child gets its own
process group, so `stop()` also reaches whatever it spawned (vLLM's engine-core workers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from llmfleet.engine.errors import EngineUnavailable
from llmfleet.engine.serve import build_command


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_model_dir() -> Path:
    """The tiny model built by `make setup`, or $LLMFLEET_MODEL."""
    env = os.environ.get("LLMFLEET_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".cache" / "tiny-model"


class ManagedProcess:
    """One child process in its own process group, with its output in `log_path`."""

    def __init__(self, name: str, log_path: str | Path, cpus: Sequence[int] | None = None) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.cpus = set(cpus) if cpus else None  # CPU affinity of the process and its children
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> ManagedProcess:
        cmd, env = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cpus = self.cpus
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready` until true; raise with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited before it was {what}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not {what} after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL it after `grace_s`."""
        if self.proc is None:
            return
        pid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Workers may outlive the leader briefly; make sure the whole group is gone.
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None


class EngineProcess(ManagedProcess):
    """One real vLLM server on 127.0.0.1."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,
        served_model_name: str | None = None,
        cpus: Sequence[int] | None = None,
    ) -> None:
        self.model = str(model or default_model_dir())
        self.port = port or free_port()
        super().__init__(f"vLLM on port {self.port}", log_path or f"/tmp/llmfleet-vllm-{self.port}.log", cpus)
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.served_model_name = served_model_name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        cmd, env = build_command(
            self.model, port=self.port, extra_args=self.extra_args, served_model_name=self.served_model_name
        )
        return cmd, {**env, **self.extra_env}

    def start(self) -> EngineProcess:
        if not Path(self.model).exists():
            raise FileNotFoundError(f"model folder {self.model} does not exist; run `make setup` to build it")
        super().start()
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = 180.0) -> EngineProcess:
        """Poll /health until 200; raise `EngineUnavailable` with the log tail otherwise."""
        try:
            self.wait_until(self.healthy, timeout, "healthy")
        except (RuntimeError, TimeoutError) as exc:
            raise EngineUnavailable(str(exc), url=self.url) from exc
        return self

    def __enter__(self) -> EngineProcess:
        return self.start().wait_healthy()

    def __exit__(self, *exc: object) -> None:
        self.stop()
