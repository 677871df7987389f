"""Fixtures for the operator tests: the Kubernetes API test double and a real kopf operator in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from llmfleet.core.clock import wait_for_condition
from llmfleet.operator.crd import crd_manifest
from llmfleet.operator.runner import RunOptions, run
from llmfleet.testing.kube_emulator import KubeEmulator, running_emulator

REPO = Path(__file__).resolve().parents[2]
FLEETS = dict(group="llmfleet.io", version="v1alpha1")
NS = "team-a"


@pytest_asyncio.fixture()
async def emulator_and_kubeconfig(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, Path]]:
    async with running_emulator(tmp_path, rollout_delay=0.05) as (emu, path):
        emu.register_crd(crd_manifest())
        for ns in (NS, "team-b"):
            emu.create_object("namespaces", None, {"metadata": {"name": ns}})
        yield emu, path


@pytest.fixture()
def emulator(emulator_and_kubeconfig: tuple[KubeEmulator, Path]) -> KubeEmulator:
    return emulator_and_kubeconfig[0]


@pytest.fixture()
def kubeconfig(emulator_and_kubeconfig: tuple[KubeEmulator, Path]) -> str:
    return str(emulator_and_kubeconfig[1])


class OperatorThread:
    """`kopf.run` in its own thread, stopped through its stop flag (never by killing the thread)."""

    def __init__(self, options: RunOptions) -> None:
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._main, args=(options,), name="operator", daemon=True)

    def _main(self, options: RunOptions) -> None:
        try:
            run(options, stop_flag=self.stop_flag, ready_flag=self.ready_flag)
        except BaseException as exc:  # surfaced by the fixture, not swallowed
            self.errors.append(exc)

    async def start(self) -> None:
        self.thread.start()
        await wait_for_condition(lambda: self.ready_flag.is_set() or not self.thread.is_alive(), 20, what="operator ready")
        if self.errors:
            raise self.errors[0]

    async def stop(self) -> None:
        self.stop_flag.set()
        await wait_for_condition(lambda: not self.thread.is_alive(), 20, what="operator stopped")
        if self.errors:
            raise self.errors[0]


@pytest_asyncio.fixture()
async def start_operator(kubeconfig: str) -> AsyncIterator[Callable[..., Any]]:
    running: list[OperatorThread] = []

    async def start(**overrides: Any) -> OperatorThread:
        options = RunOptions(namespaces=[NS], kubeconfig=kubeconfig, workers=4)
        for key, value in overrides.items():
            setattr(options, key, value)
        op = OperatorThread(options)
        running.append(op)
        await op.start()
        return op

    yield start
    for op in running:
        if op.thread.is_alive():
            await op.stop()


@pytest_asyncio.fixture()
async def operator(start_operator: Callable[..., Any]) -> OperatorThread:
    op: OperatorThread = await start_operator()
    return op


def load_example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / name).read_text())
    return doc


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    await wait_for_condition(predicate, timeout, interval=0.05, what=what)


async def settle(seconds: float) -> None:
    """Let the operator react (or, in negative tests, fail to react) for a bounded wall time."""
    await asyncio.sleep(seconds)


@pytest.fixture(scope="session")
def kubernetes_validate_version() -> str:
    """The Kubernetes version whose real OpenAPI schemas manifests are checked against."""
    return "1.35.0"
