"""`llmfleet fleet up` as a user runs it: a child process that prints its dispatcher's address,
serves `llmfleet client` calls, and leaves nothing running after SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmfleet.fleet.local import grpc_serving


def _start(args: list[str], log_dir: Path) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmfleet.cli", "fleet", "up", *args, "--log-dir", str(log_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def _address(proc: subprocess.Popen[str], lines: queue.Queue[str], timeout_s: float) -> tuple[str, str, str]:
    """The dispatcher's gRPC address, the OpenAI base URL and the calibrate command, as the fleet
    prints them."""
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    grpc_address = base_url = None
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = re.search(r"dispatcher: (\S+)", line)
        grpc_address = m.group(1) if m else grpc_address
        m = re.search(r"OpenAI: +(\S+)", line)
        base_url = m.group(1) if m else base_url
        m = re.search(r"calibrate: +(.+)$", line)
        if m and grpc_address and base_url:
            return grpc_address, base_url, m.group(1)
    raise AssertionError(f"the fleet printed no dispatcher address within {timeout_s} s:\n{''.join(seen)}")


def _client(address: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "llmfleet.cli", "client", "--target", address, *args, "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sidecar_addresses(log_dir: Path) -> list[str]:
    ports = []
    for log in sorted(log_dir.glob("sidecar-*.log")):
        m = re.search(r"serving on port (\d+)", log.read_text())
        assert m, f"{log.name} has no serving line"
        ports.append(f"127.0.0.1:{m.group(1)}")
    return ports


def _stop_and_check(proc: subprocess.Popen[str], log_dir: Path, sidecars: list[str]) -> None:
    # A burst, as an impatient user or a supervisor sends: a handler that set a threading.Event
    # once deadlocked the fleet when a signal landed inside Event.wait; the fleet must stop once.
    for _ in range(30):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    for address in sidecars:
        assert not grpc_serving(address), f"sidecar {address} outlived the fleet"


def _run(args: list[str], tmp_path: Path, start_timeout_s: float) -> None:
    log_dir = tmp_path / "logs"
    proc, lines = _start(args, log_dir)
    try:
        address, base_url, calibrate = _address(proc, lines, start_timeout_s)
        g = _client(address, "generate", "--token-ids", "5,6,7", "--max-tokens", "12", "--ignore-eos")
        assert len(g["token_ids"]) == 12 and g["finish_reason"] == "length"
        t = _client(address, "generate", "Hello, fleet", "--max-tokens", "4", "--ignore-eos")
        assert len(t["token_ids"]) == 4
        # --stop cuts the text before the first match and ends the request there, as vLLM does.
        stop = g["text"][len(g["text"]) // 2 :][:3]
        cut = _client(address, "generate", "--token-ids", "5,6,7", "--max-tokens", "12", "--ignore-eos", "--stop", stop)
        assert cut["finish_reason"] == "stop" and cut["text"] == g["text"][: g["text"].index(stop)]
        assert cut["token_ids"] == g["token_ids"][: len(cut["token_ids"])]
        # The printed OpenAI base URL serves the same fleet, chat included (the model's template).
        import openai

        client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)
        model = client.models.list().data[0].id
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                              extra_body={"ignore_eos": True})  # fmt: skip
        assert chat.usage.completion_tokens == 5 and chat.choices[0].finish_reason == "length"
        # The printed calibration runs as printed (a small window, short probes): the engines'
        # metrics are where it says, vLLM's histograms included.
        argv = shlex.split(calibrate)
        assert argv[:3] == ["llmfleet", "sim", "calibrate"]
        short = ["--requests", "6", "--rate", "6", "--prompt-lengths", "16,64", "--concurrency", "1,2", "--repeats", "1"]
        run = subprocess.run([sys.executable, "-m", "llmfleet.cli", *argv[1:], *short], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "the engines decoded at" in run.stdout and "prefilled at" in run.stdout
        assert (tmp_path / "fleet-cost.json").exists()
        sidecars = _sidecar_addresses(log_dir)
        assert len(sidecars) == int(args[args.index("--engines") + 1])
        _stop_and_check(proc, log_dir, sidecars)
    finally:
        if proc.poll() is None:
            # A failed check leaves the fleet up: stop it as a user would, so that it stops its
            # engines, sidecars and dispatcher (each in its own session, out of this group's reach).
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_fleet_up_with_simulated_engines(tmp_path: Path) -> None:
    _run(["--engine", "simulated", "--engines", "2"], tmp_path, start_timeout_s=60)


@pytest.mark.engine
def test_fleet_up_with_real_vllm(tmp_path: Path) -> None:
    _run(["--engine", "vllm", "--engines", "1", "--max-num-seqs", "4"], tmp_path, start_timeout_s=300)


def test_fleet_up_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmfleet.cli", "fleet", "up", "--engine", "simulated", "--policy", "nope"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "unknown policy 'nope'" in out.stderr


@pytest.mark.parametrize("value", ["20", "-1", "ten"])
def test_fleet_up_refuses_a_niceness_outside_0_to_19(value: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmfleet.cli", "fleet", "up", "--engine", "simulated", "--engine-nice", value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "--engine-nice" in out.stderr


@pytest.mark.parametrize(
    ("index", "engines", "cpus", "expected"),
    [
        (0, 2, [0, 1], [0]),
        (1, 2, [0, 1], [1]),
        (1, 2, [4, 5, 6, 7], [6, 7]),  # a share each, from the cores this process may use
        (2, 3, [0, 1], [0]),  # more engines than cores: round robin
        (0, 1, [0, 1, 2], [0, 1, 2]),
    ],
)
def test_each_engine_gets_its_own_cores(index, engines, cpus, expected) -> None:
    from llmfleet.fleet.local import engine_cores

    assert engine_cores(index, engines, cpus) == expected


@pytest.mark.parametrize(("flags", "confined"), [([], True), (["--unconfined-engines"], False)])
def test_fleet_up_confines_each_engine_unless_told_not_to(flags, confined) -> None:
    import argparse

    from llmfleet.fleet import cli

    parser = argparse.ArgumentParser(allow_abbrev=False)
    cli.register(parser)
    assert cli.fleet_spec(parser.parse_args(["up", *flags])).confine_engines is confined


def test_engines_are_bound_to_their_own_cores(tmp_path) -> None:
    from llmfleet.fleet.local import FleetSpec, LocalFleet, usable_cpus

    fleet = LocalFleet(FleetSpec(engines=2), tmp_path)
    share = max(1, len(usable_cpus()) // 2)
    bound = [fleet.engine_process(i).command()[1]["VLLM_CPU_OMP_THREADS_BIND"] for i in range(2)]
    assert bound[0] != bound[1] or share * 2 > len(usable_cpus())
    # By default each engine's whole process stays on its cores, as a pod's would.
    assert fleet.engine_process(0).cpus == set(map(int, bound[0].split(",")))
    loose = LocalFleet(FleetSpec(engines=2, confine_engines=False), tmp_path)
    assert loose.engine_process(0).cpus is None  # bound threads, process left where it is
    assert loose.engine_process(0).command()[1]["VLLM_CPU_OMP_THREADS_BIND"] == bound[0]
    confined = LocalFleet(FleetSpec(engines=2, engine_cpus=[4, 5]), tmp_path)
    assert [confined.engine_process(i).cpus for i in range(2)] == [{4}, {5}]
    assert confined.engine_process(1).command()[1]["VLLM_CPU_OMP_THREADS_BIND"] == "5"


CHILD_WITH_THREADS = """
import threading, time
for _ in range(3):
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("ready", flush=True)
time.sleep(60)
"""

PARENT = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {CHILD_WITH_THREADS!r}], stdout=sys.stdout)
time.sleep(60)
"""


def test_only_the_engines_compute_processes_lose_priority() -> None:
    """The engine's front (the process started) keeps its niceness; every thread of every
    process under it (vLLM's EngineCore and workers) gets the lower priority."""
    import psutil

    from llmfleet.fleet.local import lower_compute_priority

    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        (child,) = psutil.Process(parent.pid).children()
        before = os.getpriority(os.PRIO_PROCESS, parent.pid)
        target = min(19, before + 7)
        assert target > before, "the test needs room to lower the priority"
        changed = lower_compute_priority(parent.pid, target)
        threads = [t.id for t in child.threads()]
        assert changed == len(threads) >= 4  # the child's main thread and its three others
        assert {os.getpriority(os.PRIO_PROCESS, t) for t in threads} == {target}
        assert os.getpriority(os.PRIO_PROCESS, parent.pid) == before
    finally:
        for p in psutil.Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait()
