"""Manage a real vLLM server as a child process: start, wait for health, stop by PID.

Used by the demo, the benchmarks and the session-scoped test fixtures. The server gets its own
process group, so `stop()` reaches the engine-core workers vLLM spawns too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
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


class EngineProcess:
    """One vLLM server on 127.0.0.1 with its log in `log_path`."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,
        served_model_name: str | None = None,
    ) -> None:
        self.model = str(model or default_model_dir())
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/llmfleet-vllm-{self.port}.log")
        self.extra_env = dict(env or {})
        self.served_model_name = served_model_name
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EngineProcess:
        if not Path(self.model).exists():
            raise FileNotFoundError(f"model folder {self.model} does not exist; run `make setup` to build it")
        cmd, env = build_command(
            self.model, port=self.port, extra_args=self.extra_args, served_model_name=self.served_model_name
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **env, **self.extra_env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    def wait_healthy(self, timeout: float = 180.0) -> EngineProcess:
        """Poll /health until 200; raise with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise EngineUnavailable(f"vLLM exited during start-up:\n{self.log_tail()}", url=self.url)
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise EngineUnavailable(f"vLLM not healthy after {timeout:.0f}s:\n{self.log_tail()}", url=self.url)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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

    def __enter__(self) -> EngineProcess:
        return self.start().wait_healthy()

    def __exit__(self, *exc: object) -> None:
        self.stop()

