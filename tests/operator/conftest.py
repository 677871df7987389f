"""Fixtures for the operator tests: a real kopf operator in a thread, against the real API server
(the session's `control_plane`), watching the test's own namespace."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from llmfleet.core.clock import wait_for_condition
from llmfleet.operator.kube import KubeClient
from llmfleet.operator.runner import RunOptions, run
from llmfleet.testing.cluster import ControlPlane, FakeKubelet, Namespace

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def kubelet(kube: KubeClient, namespace: Namespace) -> Iterator[FakeKubelet]:
    """Pods of the test's namespace turn Ready as soon as they exist (pause it to hold them Pending)."""
    k = FakeKubelet(kube, [namespace.name]).start()
    yield k
    k.stop()


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
async def start_operator(control_plane: ControlPlane, namespace: Namespace) -> AsyncIterator[Callable[..., Any]]:
    running: list[OperatorThread] = []

    async def start(**overrides: Any) -> OperatorThread:
        options = RunOptions(namespaces=[namespace.name], kubeconfig=str(control_plane.kubeconfig), workers=4)
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
