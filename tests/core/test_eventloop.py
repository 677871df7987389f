"""Servers run on uvloop by default and on plain asyncio on request; a mistyped loop fails loudly."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from llmfleet.core.eventloop import run_server


@pytest.mark.parametrize(("name", "loop_module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_run_server_runs_main_on_the_named_loop(name: str, loop_module: str) -> None:
    seen: list[str] = []

    async def main() -> None:
        await asyncio.sleep(0)
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_server(main, name)
    assert len(seen) == 1 and seen[0].startswith(loop_module)


def test_an_unknown_loop_is_refused_before_anything_runs() -> None:
    async def main() -> None:
        raise AssertionError("must not run")

    with pytest.raises(ValueError, match="uvloop, asyncio"):
        run_server(main, "trio")


@pytest.mark.parametrize("command", ["dispatcher", "sidecar"])
def test_the_server_clis_refuse_an_unknown_event_loop(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmfleet.cli", command, "--event-loop", "trio"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "invalid choice: 'trio'" in proc.stderr
