"""`run_demo` end to end on a fleet of simulated engines: what `llmfleet demo --out DIR` leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

from llmfleet.demo.run import DemoOptions, run_demo
from llmfleet.demo.workload import WorkloadSpec
from llmfleet.fleet.local import FleetSpec


def test_the_demo_writes_its_results_its_plot_and_every_requests_outcome(tmp_path: Path, monkeypatch) -> None:
    """With the rate searched for (the demo's default), fcfs-rr's try at the chosen rate is kept
    as its earlier replay, and fcfs-rr replays again after the other policies. The estimate with
    the drift taken out failing loses nothing of the results."""
    from llmfleet.demo import run

    def fails(*_args: object) -> None:
        raise RuntimeError("the simulator stalled")

    monkeypatch.setattr(run, "drift_adjusted_ratios", fails)
    out = tmp_path / "demo"
    workload = WorkloadSpec(count=6, rate=20.0, max_output_tokens=16, max_prompt_tokens=16, min_output_tokens=4)
    options = DemoOptions(
        policies=["fcfs-rr", "least-load"],
        fleet=FleetSpec(engines=2, engine="simulated", max_num_seqs=2),
        workload=workload,
        hidden_length=False,
        out_dir=out,
        log_dir=tmp_path / "logs",
        queue_share=0.5,
    )
    run_demo(options)
    assert (out / "latency.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    order = ["fcfs-rr (earlier)", "least-load", "fcfs-rr"]
    assert [r["policy"] for r in results["results"]] == results["replay_order"] == order
    rate = results["queue_share"]["rate"]
    assert rate in [t["rate"] for t in results["queue_share"]["tried"]]
    assert "ci95" in results["ratios_vs_fcfs_rr"]["least-load"]
    assert results["drift"]["band"] >= 1.0 and set(results["drift"]["beyond"]) == {"least-load"}
    assert "drift_adjusted" not in results
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    # One record per request per replay, tagged with the replay in the order they ran, the policy
    # entry it ran (the earlier replay is fcfs-rr's), the results label and its workload.
    assert [(r["replay"], r["variant"], r["label"]) for r in records] == (
        [(0, "fcfs-rr", "fcfs-rr (earlier)")] * 6 + [(1, "least-load", "least-load")] * 6 + [(2, "fcfs-rr", "fcfs-rr")] * 6
    )
    assert {r["rate"] for r in records} == {rate} and {r["start_index"] for r in records} == {workload.start_index}
    assert all(r["status"] == "ok" and r["arrival_s"] <= r["first_token_s"] <= r["finish_s"] for r in records)
    assert sorted(r["request_id"] for r in records[:6]) == sorted(r["request_id"] for r in records[12:])
