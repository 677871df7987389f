"""`llmfleet sim calibrate`: probes against a fake engine whose timing is a known linear model."""

from __future__ import annotations

import pytest

from llmfleet.core.clock import FakeClock
from llmfleet.sim.calibrate import fit, measure

PREFILL_PER_TOKEN = 0.0005
STEP_BASE = 0.004
STEP_PER_SEQ = 0.001


class FakeEngine:
    """Advances a fake clock as a real engine's wall time would pass."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[int, int]] = []

    async def complete(self, prompt, max_tokens, *, ignore_eos=False, request_id=None):
        assert ignore_eos and isinstance(prompt, list)
        self.calls.append((len(prompt), max_tokens))
        if request_id.startswith("cal-p"):
            self.clock.advance(len(prompt) * PREFILL_PER_TOKEN)
        else:
            # c concurrent requests: each call contributes 1/c of the shared wall time
            c = int(request_id.split("-")[1][1:])
            batch_time = c * len(prompt) * PREFILL_PER_TOKEN + max_tokens * (STEP_BASE + STEP_PER_SEQ * c)
            self.clock.advance(batch_time / c)


async def test_measure_and_fit_recover_the_engine_model() -> None:
    clock = FakeClock()
    engine = FakeEngine(clock)
    m = await measure(
        engine, prompt_lengths=(16, 64, 256), concurrency=(1, 2, 8), decode_tokens=10, repeats=2, clock=clock
    )
    model = fit(m, "fake", kv_capacity_tokens=4096, source="test")
    assert model.decode_base_s == pytest.approx(STEP_BASE, rel=1e-6)
    assert model.decode_per_seq_s == pytest.approx(STEP_PER_SEQ, rel=1e-6)
    assert model.prefill_s(64) == pytest.approx(64 * PREFILL_PER_TOKEN)
    assert model.prefill_s(160) == pytest.approx(160 * PREFILL_PER_TOKEN)
    assert len({p for p, _ in engine.calls}) >= 3


def test_noisy_decode_points_never_give_a_free_decode_step() -> None:
    from llmfleet.sim.calibrate import Measurements

    # A steep, noisy line would cross zero at batch 0; the fit keeps a positive fixed cost.
    model = fit(Measurements(prefill=[(16, 0.01), (128, 0.05)], decode=[(1, 0.002), (4, 0.030)]), "x", 1, "t")
    assert model.decode_base_s >= 0.001
    assert model.decode_base_s + model.decode_per_seq_s * 1 == pytest.approx(0.002)


def test_fit_needs_enough_points() -> None:
    from llmfleet.sim.calibrate import Measurements

    with pytest.raises(ValueError, match="two prefill"):
        fit(Measurements(prefill=[(16, 0.01)], decode=[(1, 0.01)]), "x", 1, "t")


@pytest.mark.engine
async def test_calibrate_against_the_real_engine(engine, tmp_path) -> None:
    from llmfleet.sim.calibrate import calibrate_engine
    from llmfleet.sim.costmodel import CostModel

    model = await calibrate_engine(
        engine.url, (16, 128), (1, 4), decode_tokens=32, repeats=2, kv_capacity_tokens=4096
    )
    assert model.decode_base_s > 0 and model.prefill_s(128) > 0
    path = tmp_path / "cost.json"
    model.save(path)
    assert CostModel.load(path) == model


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('vllm:cache_config_info{block_size="128",num_gpu_blocks="64",cache_dtype="auto"} 1.0\n', 8192),
        ('vllm:cache_config_info{block_size="16"} 1.0\n', None),
        ("vllm:num_requests_running 0\n", None),
    ],
)
def test_kv_capacity_is_read_from_vllm_metrics(text, expected) -> None:
    # calibrate_engine takes the capacity from the engine client's load scrape.
    from llmfleet.engine.metrics import parse_metrics

    assert (parse_metrics(text).kv_capacity_tokens or None) == expected
