"""Benchmark: reconcile N LLMFleets on a real kube-apiserver and controller manager.

The control plane comes from ../shared/k8s (or LLMFLEET_K8S_DIR) and runs on free local ports;
a stand-in kubelet in this process marks every Pod Ready as soon as it exists, so the real
ReplicaSet and Deployment controllers report each rollout. The operator runs as a separate
process, exactly as `llmfleet operator run`, so its memory is measured on its own. All N fleets
are created at once; the clock stops when every fleet reports phase Ready. Peak memory is the
operator process's VmHWM (peak resident set) from /proc.

Reproduce (writes bench/results/operator_fleets.{json,png}):
    .venv/bin/python bench/operator_fleets.py --fleets 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llmfleet.operator.crd import crd_manifest
from llmfleet.operator.kube import CHILD_KINDS, KubeClient
from llmfleet.testing.cluster import ControlPlane, FakeKubelet, Namespace, install_crd

NS = "bench"
WRITES = ("POST", "PUT", "PATCH", "APPLY", "DELETE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _proc_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _fleet(i: int) -> dict[str, Any]:
    """A mix like a real cluster's: most fleets single-group, every third with two auto groups."""
    spec: dict[str, Any] = {"model": {"name": f"org/model-{i % 7}"}, "replicas": 2}
    if i % 3 == 0:
        spec["scheduling"] = {"lengthGroups": {"auto": {"groups": 2}}}
    return {"apiVersion": "llmfleet.io/v1alpha1", "kind": "LLMFleet", "metadata": {"name": f"fleet-{i:03d}"}, "spec": spec}


async def _http_ok(url: str) -> bool:
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def _api_writes(kube: KubeClient) -> dict[str, int]:
    """Writes the API server has served so far, by resource (its own apiserver_request_total)."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = kube.api.call_api("GET", kube.api.configuration.host + "/metrics",
                             header_params={"Authorization": kube.api.configuration.get_api_key_with_prefix("BearerToken")})  # fmt: skip
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(resp.read().decode()):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "apiserver_request_total" and labels.get("verb") in WRITES:
                key = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
                out[key] = out.get(key, 0) + int(sample.value)
    return out


def _start_plane(workdir: Path) -> tuple[ControlPlane, KubeClient, Namespace]:
    plane = ControlPlane.start(workdir / "control-plane")
    kube = plane.client()
    install_crd(kube, crd_manifest())
    return plane, kube, Namespace.create(kube, NS)


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    load_at_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="llmfleet-bench-"))
    plane, kube, ns = _start_plane(workdir)
    kubelet = FakeKubelet(kube, [NS], interval=0.2).start()
    try:
        kubeconfig = plane.kubeconfig
        health = f"http://127.0.0.1:{_free_port()}/healthz"
        log = open(workdir / "operator.log", "w")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-m", "llmfleet.cli", "operator", "run", "--namespace", NS, "--kubeconfig", str(kubeconfig),
               "--workers", str(args.workers), "--liveness", health]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        samples: list[tuple[float, int]] = []
        try:
            deadline = time.monotonic() + 60
            while not await _http_ok(health):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"operator did not start; see {workdir / 'operator.log'}")
                await asyncio.sleep(0.1)
            idle_rss = _proc_kib(proc.pid, "VmRSS")
            cpu_before = _cpu_seconds(proc.pid)
            plane_before = {name: _cpu_seconds(pid) for name, pid in plane.pids().items()}
            bench_cpu_before = time.process_time()
            writes_before = _api_writes(kube)

            t0 = time.monotonic()
            for i in range(args.fleets):
                ns.create_object("LLMFleet", _fleet(i))
            ready_at: dict[str, float] = {}
            with Progress(TextColumn("fleets Ready"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
                task = bar.add_task("ready", total=args.fleets)
                while len(ready_at) < args.fleets:
                    now = time.monotonic() - t0
                    samples.append((now, _proc_kib(proc.pid, "VmRSS")))
                    for f in ns.objects("LLMFleet"):
                        name = f["metadata"]["name"]
                        if name not in ready_at and (f.get("status") or {}).get("phase") == "Ready":
                            ready_at[name] = now
                    bar.update(task, completed=len(ready_at))
                    if now > args.timeout:
                        raise RuntimeError(f"only {len(ready_at)}/{args.fleets} fleets Ready after {args.timeout}s;"
                                           f" stand-in kubelet errors: {kubelet.errors[-3:]}")  # fmt: skip
                    if proc.poll() is not None:
                        raise RuntimeError(f"operator exited; see {workdir / 'operator.log'}")
                    await asyncio.sleep(0.2)
            all_ready = max(ready_at.values())
            peak_rss = _proc_kib(proc.pid, "VmHWM")
            operator_cpu = _cpu_seconds(proc.pid) - cpu_before
            plane_cpu = {name: round(_cpu_seconds(pid) - plane_before.get(name, 0.0), 2) for name, pid in plane.pids().items()}
            poller_cpu = time.process_time() - bench_cpu_before
            children = sum(len(ns.objects(kind, "app.kubernetes.io/managed-by=llmfleet-operator")) for kind in CHILD_KINDS)
            writes_after = _api_writes(kube)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    finally:
        kubelet.stop()
        kube.api.close()
        plane.stop()
    if args.keep_log:
        shutil.copy(workdir / "operator.log", args.keep_log)
    shutil.rmtree(workdir, ignore_errors=True)  # kept only when the run failed, for its operator.log
    writes = {k: v - writes_before.get(k, 0) for k, v in sorted(writes_after.items()) if v > writes_before.get(k, 0)}
    times = sorted(ready_at.values())
    return {
        "benchmark": "operator_fleets",
        "command": " ".join(["python", "bench/operator_fleets.py", *sys.argv[1:]]),
        "fleets": args.fleets,
        "workers": args.workers,
        "control_plane": "kube-apiserver and kube-controller-manager v1.36.2, etcd v3.6.8 (../shared/k8s)",
        "time_to_all_ready_s": round(all_ready, 3),
        "time_to_ready_p50_s": round(times[len(times) // 2], 3),
        "time_to_ready_p90_s": round(times[int(len(times) * 0.9) - 1], 3),
        "operator_idle_rss_mib": round(idle_rss / 1024, 1),
        "operator_peak_rss_mib": round(peak_rss / 1024, 1),
        "operator_cpu_s": round(operator_cpu, 2),
        "kubelet_and_poller_cpu_s": round(poller_cpu, 2),
        "control_plane_cpu_s": plane_cpu,
        "children_created": children,
        "api_writes_all_clients": sum(writes.values()),
        "api_writes_by_resource": writes,
        "ready_times_s": [round(t, 3) for t in times],
        "rss_samples": [(round(t, 2), round(kib / 1024, 1)) for t, kib in samples[:: max(1, len(samples) // 400)]],
        "load_average_1m_at_start": round(load_at_start, 2),
        "kubelet_errors": len(kubelet.errors),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    times = result["ready_times_s"]
    ax.step(times, range(1, len(times) + 1), where="post", color="tab:blue", label="fleets Ready")
    ax.set_xlabel("seconds since all fleets were created")
    ax.set_ylabel("fleets Ready", color="tab:blue")
    ax.axvline(result["time_to_all_ready_s"], color="tab:blue", linestyle=":", linewidth=1)
    mem = ax.twinx()
    t, rss = zip(*result["rss_samples"], strict=True) if result["rss_samples"] else ((), ())
    mem.plot(t, rss, color="tab:red", label="operator RSS")
    mem.set_ylabel("operator RSS (MiB)", color="tab:red")
    mem.set_ylim(bottom=0)
    ax.set_title(
        f"{result['fleets']} LLMFleets: all Ready in {result['time_to_all_ready_s']:.1f}s, "
        f"operator peak {result['operator_peak_rss_mib']:.0f} MiB"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--fleets", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8, help="operator handler threads")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep-log", type=Path, help="copy the operator's log here (the last run's)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median run (by time to all-ready) is reported")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    runs = [asyncio.run(run_bench(args)) for _ in range(args.repeat)]
    runs.sort(key=lambda r: r["time_to_all_ready_s"])
    result = dict(runs[len(runs) // 2])
    result["runs"] = [
        {k: r[k] for k in ("time_to_all_ready_s", "operator_peak_rss_mib", "operator_cpu_s", "load_average_1m_at_start")}
        for r in runs
    ]
    result["operator_peak_rss_mib_max"] = max(r["operator_peak_rss_mib"] for r in runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operator_fleets.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "operator_fleets.png")
    summary = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
