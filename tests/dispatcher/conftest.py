"""Fixtures for dispatcher tests: fake pods (fast) and, for `engine` tests, real sidecars."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.dispatcher.fake_sidecar import FakePod, start_fake_pod


@pytest.fixture
async def fake_pods() -> AsyncIterator[list[FakePod]]:
    pods = [await start_fake_pod(), await start_fake_pod()]
    yield pods
    for p in pods:
        await p.stop()
