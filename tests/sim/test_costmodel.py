"""Cost models: the splitwise fit, the closed-form decode runs, JSON round trips."""

from __future__ import annotations

import json

import pytest

from llmfleet.sim.costmodel import CostModel, fit_splitwise, linear_cost_model, load_cost_model


def test_splitwise_fit_matches_the_profile_it_came_from() -> None:
    m = fit_splitwise()
    # The README's quoted points for llama2-70b TP8 on H100: 29.7 ms at batch 1, 34.2 at 16.
    assert m.decode_step_s(1, 640) == pytest.approx(0.0297, rel=0.05)
    assert m.decode_step_s(16, 16 * 576) == pytest.approx(0.0342, rel=0.05)
    assert m.prefill_s(8192) == pytest.approx(0.8269, rel=0.02)  # mean of the measured prefills
    assert m.prefill_s(512) < m.prefill_s(4096) < m.prefill_s(16384)
    assert m.prefill_s(65536) > m.prefill_s(32768)  # extrapolates linearly
    assert 1e6 < m.kv_capacity_tokens < 2e6


def test_iteration_cost_counts_the_shared_forward_pass_once() -> None:
    m = fit_splitwise()
    both = m.iteration_s(1024, 8, 8000)
    assert both == pytest.approx(m.prefill_s(1024) + m.decode_step_s(8, 8000) - m.overlap_s)
    assert m.iteration_s(0, 8, 8000) == m.decode_step_s(8, 8000)
    assert m.iteration_s(1024, 0, 0) == m.prefill_s(1024)


@pytest.mark.parametrize("k", [1, 2, 7, 100])
def test_closed_form_decode_run_equals_the_sum_of_steps(k: int) -> None:
    m = fit_splitwise()
    batch, ctx = 12, 9000
    by_step = sum(m.decode_step_s(batch, ctx + i * batch) for i in range(k))
    assert m.decode_steps_s(k, batch, ctx) == pytest.approx(by_step)
    # steps_within inverts it: the first boundary at or after a time
    for j in range(1, k + 1):
        t = m.decode_steps_s(j, batch, ctx)
        assert m.steps_within(t - 1e-9, batch, ctx) == j
        assert m.steps_within(t + 1e-9, batch, ctx) == j + 1


def test_json_round_trip_and_validation(tmp_path) -> None:
    m = linear_cost_model(0.001, 0.02, 0.0005)
    path = tmp_path / "cost.json"
    m.save(path)
    assert load_cost_model(str(path)) == m
    assert load_cost_model(None).name.startswith("llama2-70b")
    bad = json.loads(path.read_text())
    bad["surprise"] = 1
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="unknown cost model fields"):
        CostModel.load(path)
    path.write_text("{nope")
    with pytest.raises(ValueError, match="not a cost model"):
        CostModel.load(path)
    with pytest.raises(FileNotFoundError, match="calibrate"):
        load_cost_model(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="increasing"):
        CostModel("x", (0.0, 0.0), (0.0, 1.0), 0.1, 0.0, 0.0)
