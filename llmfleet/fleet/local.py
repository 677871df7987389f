"""A local fleet on this machine: engines (real vLLM, or the simulated engine inside each
sidecar), one sidecar each, and a dispatcher.

Every part is a child process in its own process group, started through the same `llmfleet`
commands a Kubernetes pod runs, and stopped by PID, so nothing outlives the fleet, even on
Ctrl-C.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from llmfleet.core.config import SchedulingConfig
from llmfleet.engine.process import EngineProcess, ManagedProcess, free_port


def grpc_serving(address: str, service: str = "") -> bool:
    """True when the gRPC health service at `address` answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class LlmfleetProcess(ManagedProcess):
    """`llmfleet <args>` as a child process listening on `port`."""

    def __init__(self, name: str, args: list[str], port: int, log_path: Path) -> None:
        super().__init__(name, log_path)
        self.args = args
        self.port = port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-m", "llmfleet.cli", *self.args], {}

    def wait_serving(self, timeout: float = 60.0) -> None:
        self.wait_until(lambda: grpc_serving(self.address), timeout, "serving")


ENGINES = ("vllm", "simulated")


def engine_cores(index: int, engines: int, cpus: list[int]) -> list[int]:
    """The CPU cores engine `index` of `engines` binds its OpenMP threads to (vLLM's
    `VLLM_CPU_OMP_THREADS_BIND` takes them comma-separated).

    Each engine gets its own share of the cores (engines beyond the core count share round
    robin). Unbound, every engine starts one OpenMP thread per core, and two engines on two
    cores spin against each other: measured here, 2 engines x 32 streams reached 500 tok/s
    unbound and 1,380 tok/s bound one core each (bench/DATAPLANE.md).
    """
    if not cpus:
        raise ValueError("no CPU cores to bind to")
    share = max(1, len(cpus) // max(1, engines))
    start = (index * share) % len(cpus)
    return cpus[start : start + share]


def lower_compute_priority(pid: int, niceness: int) -> int:
    """Give the compute processes under `pid` (vLLM's EngineCore and workers, every thread) the
    CPU niceness `niceness`, leaving `pid` itself, the engine's HTTP front, as it is. Returns how
    many threads changed.

    On a host where engines and the data plane share cores, the engines' OpenMP threads run
    flat out while the sidecars, the dispatcher and vLLM's front wait for CPU on every token they
    relay. Measured on 2 cores at 2 requests/s: a request spent 0.2-0.4 s getting from the
    dispatcher to its engine and another 0.2-0.35 s getting its last token back; with the compute
    threads at niceness 10, 0.12 s and 0.10 s, mean TTFT 0.22 s instead of 0.40-0.60 s, and the
    same throughput. Past the engines' capacity it did not help (bench/DATAPLANE.md)."""
    import psutil

    changed = 0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            threads = child.threads()
        except psutil.NoSuchProcess:
            continue
        for thread in threads:  # on Linux niceness belongs to each thread, not the process
            try:
                os.setpriority(os.PRIO_PROCESS, thread.id, niceness)
            except ProcessLookupError:
                continue
            changed += 1
    return changed


def usable_cpus() -> list[int]:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a cgroup)."""
    return sorted(os.sched_getaffinity(0))


@dataclass
class FleetSpec:
    engines: int = 2
    engine: str = "vllm"  # "vllm": real vLLM servers; "simulated": each sidecar runs the simulated engine
    max_num_seqs: int = 8
    max_model_len: int = 2048
    engine_args: list[str] = field(default_factory=list)
    model: str | None = None
    # Cores the engines share out (default: all this process may use).
    engine_cpus: list[int] | None = None
    # Each engine's whole process tree (its HTTP front, EngineCore and workers) runs on its share
    # of the cores, as a pod has its own. Off, only its OpenMP threads are bound and the rest
    # float over every core: measured on 2 cores at 3.0 requests/s, the two engines' time per
    # token then differed by 1.2-4x within one replay (which one was slower changed from replay to
    # replay), and round-robin routing, which cannot follow that, lost 1.2-2.6x to load-aware
    # routing. Confined, the engines were within 12% of each other and faster (fcfs-rr mean
    # 1.50-1.69 s against 2.13-2.79 s; bench/DATAPLANE.md, section 5).
    confine_engines: bool = True
    # CPU niceness of the engines' compute processes (0: as started; `lower_compute_priority`).
    # At 2 requests/s a niceness of 10 cut the data plane's delays in half; at the demo's 3.5/s,
    # past the engines' capacity, two runs with it were worse for `llmfleet` than runs without
    # (bench/DATAPLANE.md, section 5), so it is off unless asked for.
    engine_nice: int = 0
    # vLLM's development endpoints (VLLM_SERVER_DEV_MODE) on the engines, for benchmarks that
    # empty the prefix caches between policies (`reset_prefix_caches`). Off for a fleet one works
    # against: they also let any local client put an engine to sleep.
    engine_dev_endpoints: bool = False


class LocalFleet:
    """Start with `start()`; switch policies with `start_dispatcher()`; always `stop()`."""

    def __init__(self, spec: FleetSpec, log_dir: str | Path | None = None) -> None:
        self.spec = spec
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="llmfleet-demo-"))
        self.engines: list[EngineProcess] = []
        self.sidecars: list[LlmfleetProcess] = []
        self.sidecar_metrics_ports: list[int] = []
        self.dispatcher: LlmfleetProcess | None = None

    def start(self, engine_timeout_s: float = 300.0) -> None:
        if self.spec.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.spec.engine!r}")
        if self.spec.engine == "simulated":
            self._start_sidecars([["--engine", "simulated"]] * self.spec.engines)
            return
        for i in range(self.spec.engines):
            engine = self.engine_process(i)
            self.engines.append(engine)
            engine.start()  # all engines boot in parallel
        for engine in self.engines:
            engine.wait_healthy(engine_timeout_s)
            if self.spec.engine_nice and engine.pid is not None:
                lower_compute_priority(engine.pid, self.spec.engine_nice)
        self._start_sidecars([["--engine-url", e.url] for e in self.engines])

    def engine_process(self, i: int) -> EngineProcess:
        """Engine `i`, not started: its OpenMP threads bound to its own cores, and the whole
        process confined to them unless the spec says otherwise (`confine_engines`)."""
        args = ["--max-num-seqs", str(self.spec.max_num_seqs), "--max-model-len", str(self.spec.max_model_len)]
        cores = engine_cores(i, self.spec.engines, self.spec.engine_cpus or usable_cpus())
        env = {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores))}
        if self.spec.engine_dev_endpoints:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        return EngineProcess(
            self.spec.model,
            extra_args=args + self.spec.engine_args,
            log_path=self.log_dir / f"vllm-{i}.log",
            env=env,
            cpus=cores if self.spec.confine_engines else None,
        )

    @property
    def engine_metrics_urls(self) -> list[str]:
        """Where each engine's vLLM metrics are served: the vLLM server, or for the simulated
        engine the sidecar's metrics port, which serves its vLLM-named histograms."""
        if self.spec.engine == "simulated":
            return [f"http://127.0.0.1:{port}" for port in self.sidecar_metrics_ports]
        return [e.url for e in self.engines]

    def reset_prefix_caches(self, timeout_s: float = 30.0) -> None:
        """Empty every vLLM engine's prefix cache, so that each replay of a workload starts with
        the engines as the first did. Otherwise a policy finds the prompts of the policies before
        it cached wherever they were routed, and prefills less. Needs `engine_dev_endpoints`; the
        simulated engine caches nothing, so there is nothing to empty."""
        if self.spec.engine == "simulated":
            return
        if not self.spec.engine_dev_endpoints:
            raise RuntimeError("reset_prefix_caches needs FleetSpec(engine_dev_endpoints=True)")
        import httpx

        def emptied(url: str) -> bool:
            # vLLM refuses (success false) while blocks are held, e.g. by a request being aborted.
            reply = httpx.post(url + "/reset_prefix_cache", timeout=10.0)
            reply.raise_for_status()
            return bool(reply.json().get("success"))

        for engine in self.engines:
            engine.wait_until(functools.partial(emptied, engine.url), timeout_s, "its prefix cache emptied")

    def prefix_cache_counters(self) -> tuple[float, float]:
        """Prompt tokens looked up in the engines' prefix caches so far, and those found (summed
        over the engines; the simulated engine caches nothing and reports zeros)."""
        import httpx

        from llmfleet.engine.metrics import parse_metrics

        loads = [parse_metrics(httpx.get(url + "/metrics", timeout=10.0).text) for url in self.engine_metrics_urls]
        return sum(x.prefix_cache_queries for x in loads), sum(x.prefix_cache_hits for x in loads)

    def _start_sidecars(self, engine_args: list[list[str]]) -> None:
        for i, engine in enumerate(engine_args):
            port, metrics_port = free_port(), free_port()
            self.sidecar_metrics_ports.append(metrics_port)
            sidecar = LlmfleetProcess(
                f"sidecar-{i}",
                ["sidecar", "--host", "127.0.0.1", "--port", str(port), *engine, "--metrics-port", str(metrics_port),
                 "--max-num-seqs", str(self.spec.max_num_seqs), "--group", "default"],
                port,
                self.log_dir / f"sidecar-{i}.log",
            )
            self.sidecars.append(sidecar)
            sidecar.start()
        for sidecar in self.sidecars:
            sidecar.wait_serving()

    def start_dispatcher(
        self,
        config: SchedulingConfig,
        port: int | None = None,
        openai_port: int | None = None,
        metrics_port: int | None = None,
    ) -> LlmfleetProcess:
        """(Re)start the dispatcher with a scheduling config; returns it once it serves.
        `openai_port` also turns on its OpenAI-compatible HTTP API there, `metrics_port` its
        Prometheus metrics."""
        self.stop_dispatcher()
        port = port or free_port()
        extra = ["--openai-port", str(openai_port)] if openai_port else []
        if metrics_port:
            extra += ["--metrics-port", str(metrics_port)]
        config_path = self.log_dir / f"scheduling-{config.policy}.yaml"
        config_path.write_text(config.to_yaml())
        pods = ",".join(s.address for s in self.sidecars)
        self.dispatcher = LlmfleetProcess(
            f"dispatcher ({config.policy})",
            ["dispatcher", "--host", "127.0.0.1", "--port", str(port), "--config", str(config_path),
             "--discovery", "static", "--pods", pods, *extra],
            port,
            self.log_dir / f"dispatcher-{config.policy}.log",
        )
        self.dispatcher.start()
        self.dispatcher.wait_serving()
        return self.dispatcher

    def stop_dispatcher(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop(grace_s=5.0)
            self.dispatcher = None

    def stop(self) -> None:
        self.stop_dispatcher()
        for part in [*self.sidecars, *self.engines]:
            part.stop(grace_s=10.0)
        self.sidecars.clear()
        self.sidecar_metrics_ports.clear()
        self.engines.clear()

    def __enter__(self) -> LocalFleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
