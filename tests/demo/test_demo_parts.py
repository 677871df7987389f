"""The demo's workload, request building and summaries (the fleet itself is exercised by the benches)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llmfleet.demo.replay import EOS_TOKEN_ID, Outcome, generate_request
from llmfleet.demo.report import append_records, outcome_records, ratio_rows, results_json, summarize_outcomes
from llmfleet.demo.workload import WorkloadSpec, build_workload, load_prompt_pool
from llmfleet.sim.metrics import RESULT_KEYS


def test_trace_window_is_rescaled_to_the_requested_rate_and_clipped() -> None:
    spec = WorkloadSpec(count=100, rate=5.0, max_output_tokens=64, max_prompt_tokens=32)
    work = build_workload(spec)
    assert len(work) == 100
    assert work[0].arrival_s == 0.0
    assert work[-1].arrival_s == pytest.approx(100 / 5.0)
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(work, work[1:], strict=False))
    assert all(spec.min_output_tokens <= r.output_tokens <= 64 for r in work)
    assert all(8 <= len(r.prompt_token_ids) <= 32 and min(r.prompt_token_ids) >= 4 for r in work)
    assert build_workload(spec) == work  # seeded


def test_prompt_pool_gives_real_text_and_answer_lengths(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(json.dumps({"prompt": f"question {i}", "output_tokens": 10 * (i + 1)}) for i in range(5)))
    work = build_workload(WorkloadSpec(count=12, prompt_pool=str(pool), output_scale=1.0))
    assert {r.prompt_text for r in work} == {f"question {i}" for i in range(5)}
    by_text = {f"question {i}": 10 * (i + 1) for i in range(5)}
    assert all(r.output_tokens == by_text[r.prompt_text] for r in work if r.prompt_text)


def test_bad_prompt_pool_names_the_line(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "ok", "output_tokens": 3}\n{"prompt": "no length"}\n')
    with pytest.raises(ValueError, match="pool.jsonl:2"):
        load_prompt_pool(pool)


def test_hidden_length_request_carries_the_length_only_in_sampling() -> None:
    work = build_workload(WorkloadSpec(count=3))
    hidden = generate_request(work[0], hidden_length=True, max_tokens_cap=512)
    assert hidden.max_tokens == 512 and not hidden.ignore_eos
    assert hidden.sampling.min_tokens == work[0].output_tokens - 1
    assert hidden.sampling.logit_bias[EOS_TOKEN_ID] > 0
    exact = generate_request(work[0], hidden_length=False, max_tokens_cap=512)
    assert exact.max_tokens == work[0].output_tokens and exact.ignore_eos


def test_summary_has_the_simulator_schema_and_counts_failures() -> None:
    outcomes = [
        Outcome("a", 0.0, 0.5, 2.0, 10, 10, "ok"),
        Outcome("b", 1.0, 1.5, 5.0, 20, 20, "ok"),
        Outcome("c", 2.0, None, None, 0, 5, "UNAVAILABLE", "no pod"),
    ]
    row = summarize_outcomes("p", outcomes, busy_s=[3.0, 1.0])
    assert row["completed"] == 2 and row["failed"] == 1
    assert row["mean_latency_s"] == pytest.approx((2.0 + 4.0) / 2)
    assert row["mean_ttft_s"] == pytest.approx(0.5)
    assert row["throughput_tok_s"] == pytest.approx(30 / 5.0)
    assert row["load_imbalance"] == pytest.approx(3.0 / 2.0)
    payload = results_json("conv", 2, 1.0, [row])
    assert set(payload["results"][0]) == set(RESULT_KEYS)
    base = dict(row, policy="fcfs-rr")
    ratios = ratio_rows([base, dict(row, mean_latency_s=row["mean_latency_s"] / 2)])
    assert ratios["p"]["mean_latency_ratio"] == pytest.approx(0.5)
    assert math.isclose(ratios["fcfs-rr"]["p99_latency_ratio"], 1.0)


def _runs(n: int, speedup: float, seed: int = 1) -> tuple[list[Outcome], list[Outcome]]:
    import random

    rng = random.Random(seed)
    base, other = [], []
    for i in range(n):
        arrival, ttft, lat = float(i), rng.uniform(0.1, 2.0), rng.uniform(2.0, 30.0)
        base.append(Outcome(f"r{i}", arrival, arrival + ttft, arrival + lat, 10, 10, "ok"))
        other.append(Outcome(f"r{i}", arrival, arrival + ttft * speedup, arrival + lat * speedup * rng.uniform(0.9, 1.1),
                             10, 10, "ok"))  # fmt: skip
    return base, other


def test_ratio_intervals_come_from_a_paired_bootstrap_over_the_same_requests() -> None:
    from llmfleet.demo.report import bootstrap_ratio_ci

    base, faster = _runs(200, 0.7)
    lo, hi = bootstrap_ratio_ci(base, faster, "latency", "mean")
    assert lo < 0.7 < hi and hi < 0.8, "a clear win: the interval excludes 1"
    lo, hi = bootstrap_ratio_ci(base, faster, "ttft", "mean")
    assert lo == pytest.approx(0.7) and hi == pytest.approx(0.7), "every TTFT scaled exactly: no spread"
    lo, hi = bootstrap_ratio_ci(base, base, "latency", "p99")
    assert lo == hi == 1.0
    few, _ = _runs(30, 1.0, seed=2)
    noisy, _ = _runs(30, 1.0, seed=3)  # unrelated latencies: 30 requests cannot tell them apart
    lo, hi = bootstrap_ratio_ci(few, noisy, "latency", "mean")
    assert lo < 1.0 < hi or hi - lo > 0.2
    # Requests that failed in either run are left out of the pairing.
    failed = [Outcome(o.request_id, o.arrival_s, None, None, 0, 10, "UNAVAILABLE") if i < 100 else o
              for i, o in enumerate(faster)]  # fmt: skip
    assert bootstrap_ratio_ci(base[:1], failed[:1], "latency", "mean") == (pytest.approx(math.nan, nan_ok=True),) * 2


def test_ratio_rows_carry_intervals_for_every_latency_ratio() -> None:
    base, faster = _runs(100, 0.5)
    rows = [summarize_outcomes("fcfs-rr", base, [1.0]), summarize_outcomes("llmfleet", faster, [1.0])]
    ratios = ratio_rows(rows, "fcfs-rr", {"fcfs-rr": base, "llmfleet": faster})
    ci = ratios["llmfleet"]["ci95"]
    assert set(ci) == {"mean_ttft_ratio", "mean_latency_ratio", "p99_latency_ratio"}
    assert ci["mean_latency_ratio"][0] <= ratios["llmfleet"]["mean_latency_ratio"] <= ci["mean_latency_ratio"][1]
    assert ratios["llmfleet"]["mean_ttft_ratio"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("policies", "bracket", "order"),
    [
        (["fcfs-rr", "least-load", "llmfleet"], True, ["least-load", "llmfleet", "fcfs-rr"]),
        (["llmfleet", "fcfs-rr", "least-load"], True, ["llmfleet", "least-load", "fcfs-rr"]),
        (["fcfs-rr", "least-load", "llmfleet"], False, ["fcfs-rr", "least-load", "llmfleet"]),
        (["least-load", "llmfleet"], True, ["least-load", "llmfleet"]),  # no baseline to move
    ],
)
def test_with_an_earlier_baseline_replay_the_baseline_replays_last(policies, bracket, order) -> None:
    from llmfleet.demo.run import replay_order

    assert replay_order(policies, bracket) == order


def _ci_row(mean: float, lo: float, hi: float) -> dict:
    return {"mean_latency_ratio": mean, "ci95": {"mean_latency_ratio": [lo, hi]}}


@pytest.mark.parametrize(
    ("earlier", "llmfleet", "band", "beyond"),
    [
        # The machine held its speed: the band is the A/A interval's own spread.
        (_ci_row(1.0, 0.95, 1.05), _ci_row(0.8, 0.75, 0.85), 1 / 0.95, True),
        # It slowed by a quarter between the baseline's replays: a 0.8 may be drift alone.
        (_ci_row(0.8, 0.74, 0.86), _ci_row(0.8, 0.75, 0.85), 1 / 0.74, False),
        # Drift the other way gives the same band; a loss beyond it is beyond it too.
        (_ci_row(1.3, 1.2, 1.35), _ci_row(1.5, 1.4, 1.6), 1.35, True),
        (_ci_row(1.3, 1.2, 1.35), _ci_row(0.7, 0.65, 0.76), 1.35, False),
        (None, _ci_row(0.5, 0.4, 0.6), None, None),  # no earlier replay, no gauge
    ],
)
def test_the_baseline_against_its_earlier_replay_gauges_the_drift(earlier, llmfleet, band, beyond) -> None:
    from llmfleet.demo.report import EARLIER, beyond_drift, drift_band, drift_note

    ratios = {"fcfs-rr": _ci_row(1.0, 1.0, 1.0), "llmfleet": llmfleet} | ({EARLIER: earlier} if earlier else {})
    assert drift_band(ratios) == (None if band is None else pytest.approx(band))
    assert beyond_drift(ratios, "llmfleet") is beyond
    note = drift_note(ratios)
    if band is None:
        assert note is None
    else:
        assert f"{1 / band:.2f}-{band:.2f}" in note
        assert ("Outside it, interval and all: llmfleet." if beyond else "Overlapping it: llmfleet.") in note


@pytest.mark.parametrize(("flags", "confined"), [([], True), (["--unconfined-engines"], False)])
def test_demo_confines_each_engine_unless_told_not_to(monkeypatch, tmp_path: Path, flags, confined) -> None:
    """`llmfleet demo` passes `--unconfined-engines` to the fleet it starts (the default confines)."""
    import llmfleet.demo.run as run
    from llmfleet.cli import main

    started = []
    monkeypatch.setattr(run, "ensure_ranker", lambda path: tmp_path)
    monkeypatch.setattr(run, "run_demo", started.append)
    assert main(["demo", "--prompts", "trace", "--policies", "fcfs-rr", *flags]) == 0
    assert [o.fleet.confine_engines for o in started] == [confined]


@pytest.mark.parametrize(("flags", "out"), [([], Path("demo-results")), (["--out", "elsewhere"], Path("elsewhere"))])
def test_demo_writes_its_results_by_default(monkeypatch, tmp_path: Path, flags, out) -> None:
    """`make demo` passes no flags, and must still leave results.json and the plot behind."""
    import llmfleet.demo.run as run
    from llmfleet.cli import main

    started = []
    monkeypatch.setattr(run, "ensure_ranker", lambda path: tmp_path)
    monkeypatch.setattr(run, "run_demo", started.append)
    assert main(["demo", "--prompts", "trace", "--policies", "fcfs-rr", *flags]) == 0
    assert [o.out_dir for o in started] == [out]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("llmfleet", {"policy": "llmfleet", "engine_lookahead": 0, "starvation_overtake_turns": 1.0}),
        ("llmfleet:engineLookahead=1", {"policy": "llmfleet", "engine_lookahead": 1}),
        ("llmfleet:engineLookahead=2:starvationOvertakeTurns=null", {"engine_lookahead": 2, "starvation_overtake_turns": None}),
        ("fcfs-rr:maxQueue=7", {"policy": "fcfs-rr", "max_queue": 7}),
    ],
)
def test_a_policies_entry_names_a_policy_and_its_settings(entry: str, expected: dict) -> None:
    from llmfleet.demo.run import policy_config

    config = policy_config(entry, slice_tokens=64, ranker="/r")
    assert {k: getattr(config, k) for k in expected} == expected
    assert (config.slice_tokens, config.ranker) == (64, "/r")  # the demo's own settings still apply


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("nope", "unknown policy 'nope'"),
        ("llmfleet:engineLookahed=1", "engineLookahed: Extra inputs are not permitted"),
        ("llmfleet:engineLookahead=-1", "engineLookahead: Input should be greater than or equal to 0"),
        ("llmfleet:engineLookahead", "expected policy:setting=value"),
    ],
)
def test_a_bad_policies_entry_fails_loudly_before_anything_starts(monkeypatch, tmp_path: Path, entry, message) -> None:
    import llmfleet.demo.run as run
    from llmfleet.cli import main

    started = []
    monkeypatch.setattr(run, "ensure_ranker", lambda path: tmp_path)
    monkeypatch.setattr(run, "run_demo", started.append)
    with pytest.raises(SystemExit, match=message):
        main(["demo", "--prompts", "trace", "--policies", f"fcfs-rr,{entry}"])
    assert started == []


def test_two_settings_of_one_policy_run_side_by_side_under_their_own_labels(monkeypatch, tmp_path: Path) -> None:
    import llmfleet.demo.run as run
    from llmfleet.cli import main

    started = []
    monkeypatch.setattr(run, "ensure_ranker", lambda path: tmp_path)
    monkeypatch.setattr(run, "run_demo", started.append)
    assert main(["demo", "--prompts", "trace", "--policies", "llmfleet,llmfleet:engineLookahead=1"]) == 0
    assert started[0].policies == ["llmfleet", "llmfleet:engineLookahead=1"]


@pytest.mark.parametrize(
    ("ttft", "mean", "share", "hint"),
    [(0.13, 1.95, "7%", True), (0.6, 2.5, "24%", True), (1.3, 3.8, "34%", False), (2.5, 5.0, "50%", False)],
)
def test_the_queue_note_says_how_much_the_baseline_waited_and_hints_when_little(ttft, mean, share, hint) -> None:
    from llmfleet.demo.report import queue_note

    results = [{"policy": "fcfs-rr", "mean_ttft_s": ttft, "mean_latency_s": mean}, {"policy": "llmfleet"}]
    note = queue_note(results)
    assert note is not None and f"({share})" in note
    assert ("higher --rate or --queue-share" in note) is hint
    assert queue_note(results[1:]) is None  # no baseline, nothing to say


def test_every_request_outcome_is_kept_as_a_tagged_record_and_appended_per_replay(tmp_path: Path) -> None:
    ok = Outcome("r0", 0.123456, 0.5, 2.25, 40, 40, "ok", retries=1)
    failed = Outcome("r1", 1.0, None, None, 0, 12, "UNAVAILABLE", "engine gone")
    records = outcome_records([ok, failed], replay=3, variant="llmfleet", rate=4.0, start_index=2000)
    assert records[0] == {"replay": 3, "variant": "llmfleet", "rate": 4.0, "start_index": 2000, "request_id": "r0",
                          "status": "ok", "arrival_s": 0.1235, "first_token_s": 0.5, "finish_s": 2.25, "tokens": 40,
                          "expected_tokens": 40, "retries": 1}  # fmt: skip
    # A failed request keeps None where it saw nothing, rather than a number that looks measured.
    assert (records[1]["status"], records[1]["first_token_s"], records[1]["finish_s"]) == ("UNAVAILABLE", None, None)
    path = tmp_path / "out" / "requests.jsonl"
    append_records(path, records[:1])
    append_records(path, outcome_records([failed], replay=4, variant="fcfs-rr"))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["replay"], x["variant"], x["request_id"]) for x in lines] == [(3, "llmfleet", "r0"), (4, "fcfs-rr", "r1")]
