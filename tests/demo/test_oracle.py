"""The demo's `llmfleet-oracle` entry: the same requests, with the dispatcher told each length."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmfleet.core.config import SchedulingConfig
from llmfleet.demo.replay import generate_request
from llmfleet.demo.run import is_oracle, policy_config, run_policy
from llmfleet.demo.workload import WorkloadRequest, WorkloadSpec, build_workload


def test_a_told_length_keeps_the_hidden_requests_sampling_and_fixes_the_length() -> None:
    """The engine does the same work as for the hidden request (same min_tokens and EOS bias);
    only `ignore_eos` + `max_tokens`, which the dispatcher reads as an exact estimate, differ."""
    req = build_workload(WorkloadSpec(count=1))[0]
    hidden = generate_request(req, hidden_length=True, max_tokens_cap=512)
    told = generate_request(req, hidden_length=True, max_tokens_cap=512, tell_length=True)
    assert told.sampling == hidden.sampling
    assert (told.ignore_eos, told.max_tokens) == (True, req.output_tokens)
    assert (hidden.ignore_eos, hidden.max_tokens) == (False, 512)


@pytest.mark.parametrize(
    ("entry", "oracle", "expected"),
    [
        ("llmfleet-oracle", True, {"policy": "llmfleet", "starvation_overtake_turns": None, "engine_lookahead": 0}),
        ("llmfleet-oracle:engineLookahead=1", True, {"policy": "llmfleet", "engine_lookahead": 1}),
        ("llmfleet", False, {"policy": "llmfleet", "starvation_overtake_turns": 1.0}),
        ("fcfs-rr", False, {"policy": "fcfs-rr"}),
    ],
)
def test_the_oracle_entry_is_llmfleet_with_the_guard_off(entry: str, oracle: bool, expected: dict) -> None:
    config = policy_config(entry, ranker="/r")
    assert {k: getattr(config, k) for k in expected} == expected
    assert is_oracle(entry) is oracle
    # What the local fleet's dispatcher loads: the guard stays off across the YAML file.
    loaded = SchedulingConfig.from_yaml(config.to_yaml())
    assert {k: getattr(loaded, k) for k in expected} == expected


def test_told_lengths_let_the_dispatcher_serve_the_shortest_first(tmp_path: Path) -> None:
    """One simulated engine with one slot: a long request takes the slot, three more queue at the
    dispatcher, and with every length told they are served shortest first, not in arrival order."""
    from llmfleet.fleet.local import FleetSpec, LocalFleet

    prompt = tuple(range(4, 20))
    lengths = {"first": 60, "long": 50, "short": 5, "mid": 20}
    work = [WorkloadRequest("first", 0.0, prompt, 60)] + [
        WorkloadRequest(rid, 0.1 + 0.01 * i, prompt, lengths[rid]) for i, rid in enumerate(("long", "short", "mid"))
    ]
    with LocalFleet(FleetSpec(engines=1, engine="simulated", max_num_seqs=1), tmp_path) as fleet:
        dispatcher = fleet.start_dispatcher(policy_config("llmfleet-oracle"))
        outcomes, _busy = asyncio.run(
            run_policy(dispatcher.address, work, hidden_length=True, on_done=lambda _o: None, tell_lengths=True)
        )
    assert all(o.ok and o.tokens == o.expected_tokens for o in outcomes), outcomes
    finished = [o.request_id for o in sorted(outcomes, key=lambda o: o.finish_s or 0.0)]
    assert finished == ["first", "short", "mid", "long"]


def _bench():  # type: ignore[no-untyped-def]
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "dataplane_e2e.py"
    spec = importlib.util.spec_from_file_location("dataplane_e2e", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _row(mean: float, ttft: float = 1.0, p99: float = 1.0, tput: float = 1.0, ci_hi: float = 0.95) -> dict:
    ci = {"mean_latency_ratio": [mean - 0.1, ci_hi], "mean_ttft_ratio": [ttft - 0.1, ci_hi]}
    return {"mean_latency_ratio": mean, "mean_ttft_ratio": ttft, "p99_latency_ratio": p99, "throughput_ratio": tput, "ci95": ci}


@pytest.mark.parametrize(
    ("row", "target", "met"),
    [
        (_row(0.80), 1, True),  # mean <= 0.85 with the interval below 1
        (_row(0.80, ci_hi=1.02), 1, False),  # the ratio is met but its interval reaches 1
        (_row(0.86), 1, False),
        (_row(1.0, ttft=0.70), 0, True),  # the bound itself meets it
        (_row(1.0, p99=1.11), 2, False),
        (_row(1.0, tput=0.98), 3, True),
        (_row(1.0, tput=0.97), 3, False),
    ],
)
def test_a_target_is_met_only_by_its_ratio_and_interval(row: dict, target: int, met: bool) -> None:
    bench = _bench()
    assert bench.target_met({"ratios_vs_fcfs_rr": {"llmfleet": row}}, "llmfleet", bench.TARGETS[target]) is met


def test_targets_are_listed_beside_the_oracles_replay_by_replay() -> None:
    bench = _bench()
    runs = [
        {"ratios_vs_fcfs_rr": {"llmfleet": _row(0.80), "llmfleet-oracle": _row(0.75)}, "ratios_vs_least_load": {
            "llmfleet": _row(0.95), "llmfleet-oracle": _row(0.89)}},
        {"ratios_vs_fcfs_rr": {"llmfleet": _row(1.01), "llmfleet-oracle": _row(1.02)}},  # no least-load in this one
    ]
    table = bench.targets_beside_oracle(runs)
    assert table["mean <= 0.85 vs fcfs-rr, CI below 1"] == {"llmfleet": [True, False], "llmfleet-oracle": [True, False]}
    assert table["mean <= 0.90 vs least-load"] == {"llmfleet": [False, None], "llmfleet-oracle": [True, None]}
