"""`llmfleet sim ...` end to end on small slices of the real traces."""

from __future__ import annotations

import json
import math

import pytest

from llmfleet.sim import cli
from llmfleet.sim.metrics import RESULT_KEYS


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="llmfleet sim")
    cli.register(parser)
    args = parser.parse_args(argv)
    return args.func(args)


def test_policies_lists_every_policy(capsys) -> None:
    assert _main(["policies", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    names = [p["name"] for p in listed]
    assert names[:4] == ["fcfs-rr", "least-load", "llm-d", "dynamo"] and len(listed) == 11
    assert _main(["policies"]) == 0
    assert "oracle-srpt" in capsys.readouterr().out


def test_run_writes_the_documented_json_shape(tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    cdf = tmp_path / "cdf.png"
    rc = _main(
        [
            "run",
            "--trace",
            "conv",
            "--policies",
            "fcfs-rr,llm-d,dynamo,llmfleet,oracle-srpt",
            "--instances",
            "2",
            "--limit",
            "150",
            "--rate-scale",
            "2",
            "--out",
            str(out),
            "--cdf",
            str(cdf),
            "--no-progress",
        ]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"trace", "instances", "rate_scale", "results"}
    assert (doc["trace"], doc["instances"], doc["rate_scale"]) == ("conv", 2, 2.0)
    assert [r["policy"] for r in doc["results"]] == ["fcfs-rr", "llm-d", "dynamo", "llmfleet", "oracle-srpt"]
    for r in doc["results"]:
        assert tuple(r) == RESULT_KEYS
        assert 0.0 <= r["slo_attainment"] <= 1.0
        assert r["completed"] == 150
        assert 0 < r["p50_latency_s"] <= r["p99_latency_s"]
        assert r["mean_ttft_s"] <= r["mean_latency_s"]
        assert r["load_imbalance"] >= 1.0
    assert cdf.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean / fcfs-rr" in capsys.readouterr().out


def test_sweep_draws_both_plots(tmp_path) -> None:
    rc = _main(
        [
            "sweep",
            "--trace",
            "mooncake",
            "--policies",
            "least-load,llm-d",
            "--limit",
            "60",
            "--instances",
            "2",
            "--rate-scales",
            "0.5,1",
            "--out-dir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert [run["rate_scale"] for run in doc["runs"]] == [0.5, 1.0]
    for png in ("latency_vs_load.png", "latency_cdf.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--trace", "/no/trace.csv", "--policies", "fcfs-rr"], "not found"),
        (
            [
                "run",
                "--trace",
                "conv",
                "--limit",
                "5",
                "--ranker",
                "/no/ranker",
                "--policies",
                "ltr",
                "--no-progress",
            ],
            "ranker",
        ),
        (["run", "--trace", "conv", "--limit", "5", "--config", "CONFIG", "--no-progress"], "unknown policy"),
    ],
)
def test_run_reports_bad_input_in_one_line(argv, message, capsys, tmp_path) -> None:
    config = tmp_path / "scheduling.yaml"
    config.write_text("policy: shortest-first-please\n")
    argv = [str(config) if a == "CONFIG" else a for a in argv]
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(SystemExit, match="unknown policies"):
        _main(["run", "--trace", "conv", "--policies", "fcfs-rr,nope"])


def test_capacity_finds_goodput_and_the_overload_point(tmp_path, capsys) -> None:
    out, png = tmp_path / "cap.json", tmp_path / "cap.png"
    argv = ["capacity", "--trace", "conv", "--limit", "300", "--instances", "2", "--policies", "fcfs-rr,llmfleet"]
    rc = _main([*argv, "--ttft-slo", "1.5", "--tpot-slo", "0.12", "--out", str(out), "--plot", str(png), "--no-progress"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"trace", "instances", "slo", "overload_rate_scale", "results"}
    assert doc["slo"] == {"ttft_s": 1.5, "tpot_s": 0.12, "attainment": 0.9}
    assert [r["policy"] for r in doc["results"]] == ["fcfs-rr", "llmfleet"]
    overload = doc["overload_rate_scale"]
    for r in doc["results"]:
        assert set(r) == {"policy", "goodput_rate_scale", "curve", "at_overload"}
        assert tuple(r["at_overload"]) == RESULT_KEYS
        curve = dict((s, a) for s, a in r["curve"])
        # the goodput load meets 90%; every probe above it that was measured falls short
        assert curve[round(r["goodput_rate_scale"], 4)] >= 0.9
        assert all(a < 0.9 for s, a in curve.items() if s > r["goodput_rate_scale"] * 1.03)
    base_curve = dict((s, a) for s, a in doc["results"][0]["curve"])
    assert 0.3 <= base_curve[overload] <= 0.7  # about half of fcfs-rr's requests meet the SLO there
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "goodput" in capsys.readouterr().out


def test_slo_attainment_counts_ttft_and_time_per_output_token() -> None:
    from llmfleet.sim.metrics import Slo

    slo = Slo(ttft_s=2.0, tpot_s=0.1)
    # (ttft, latency, output tokens): met; TTFT too late; 0.2 s per token; one token needs only TTFT
    samples = [(1.0, 2.0, 11), (2.5, 3.0, 5), (1.0, 3.0, 11), (1.5, 1.5, 1)]
    assert slo.attainment(samples) == 0.5
    assert math.isnan(slo.attainment([]))
    with pytest.raises(ValueError, match="positive"):
        Slo(ttft_s=0)


def test_reestimate_flags_take_effect(tmp_path) -> None:
    """`--reestimate-tau EVAL.json` re-estimates at slice boundaries at the eval's measured
    remaining-length tau; `--no-reestimate` estimates once. Same trace, same seed: the second
    run differs only by the re-estimates, and they change what the scheduler does."""
    from pathlib import Path

    eval_json = tmp_path / "eval.json"
    eval_json.write_text(
        json.dumps({"kendall_tau": 0.3, "remaining_tau": {"0": 0.3, "32": 0.9, "64": 0.95, "128": 0.97}})
    )
    base = ["run", "--trace", "conv", "--policies", "llmfleet", "--instances", "2", "--limit", "400",
            "--rate-scale", "3", "--slice-tokens", "32", "--no-progress", "--reestimate-tau", str(eval_json)]  # fmt: skip
    outs = {}
    for name, extra in (("re", []), ("once", ["--no-reestimate"])):
        out = tmp_path / f"{name}.json"
        assert _main([*base, *extra, "--out", str(out)]) == 0
        outs[name] = json.loads(Path(out).read_text())["results"][0]
    assert outs["re"]["completed"] == outs["once"]["completed"] == 400
    assert outs["re"]["mean_latency_s"] != outs["once"]["mean_latency_s"]


def test_instance_speeds_slow_the_named_instances(tmp_path) -> None:
    """`--instance-speeds` (as `sim calibrate --fleet` prints them) takes effect: with one
    instance at twice the other's time, load-aware routing sends more to the faster one, and the
    queued requests finish sooner; a count that does not match is refused."""
    from pathlib import Path

    base = ["run", "--trace", "conv", "--policies", "least-load", "--instances", "2", "--limit", "300",
            "--max-running", "16", "--no-progress"]  # fmt: skip
    means = {}
    for name, extra in (("even", []), ("uneven", ["--instance-speeds", "0.67,1.33"])):
        out = tmp_path / f"{name}.json"
        assert _main([*base, *extra, "--out", str(out)]) == 0
        means[name] = json.loads(Path(out).read_text())["results"][0]["mean_latency_s"]
    assert means["uneven"] < 0.95 * means["even"], means
    with pytest.raises(SystemExit, match="2 values for 3 instances"):
        _main([*base[:5], "--instances", "3", "--limit", "10", "--no-progress", "--instance-speeds", "1,2", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        _main([*base, "--instance-speeds", "1,-2", "--out", str(tmp_path / "x.json")])


def test_speed_phases_slow_the_run_from_the_second_named(tmp_path) -> None:
    """`--speed-phases` takes effect: the engines 1.5x slower from the run's start give a longer
    mean latency than from late in it, and both than none; a malformed or unordered list is refused."""
    from pathlib import Path

    base = ["run", "--trace", "conv", "--policies", "fcfs-rr", "--instances", "2", "--limit", "300",
            "--max-running", "16", "--no-progress"]  # fmt: skip
    means = {}
    for name, extra in (("steady", []), ("slow late", ["--speed-phases", "0:1,100:1.5"]), ("slow", ["--speed-phases", "0:1.5"])):
        out = tmp_path / f"{name}.json"
        assert _main([*base, *extra, "--out", str(out)]) == 0
        means[name] = json.loads(Path(out).read_text())["results"][0]["mean_latency_s"]
    assert means["slow"] > means["slow late"] > means["steady"], means
    for bad in ("1.5", "0:1,0:2", "10:1,5:2", "0:-1"):
        with pytest.raises(SystemExit):
            _main([*base, "--speed-phases", bad, "--out", str(tmp_path / "x.json")])


def test_guard_flags_override_the_config_file(tmp_path) -> None:
    import argparse

    config = tmp_path / "scheduling.yaml"
    config.write_text("starvationBoundSeconds: 45\nstarvationOvertakeTurns: 3\n")
    parser = argparse.ArgumentParser(prog="llmfleet sim")
    cli.register(parser)
    args = parser.parse_args(
        ["run", "--trace", "conv", "--config", str(config), "--starvation-overtake-turns", "0.5", "--starvation-overtake-queue-fraction", "0"]
    )
    (got,) = cli._configs(args, ["llmfleet"])
    assert (got.starvation_bound_seconds, got.starvation_overtake_turns) == (45, 0.5)
    assert got.starvation_overtake_queue_fraction == 0  # 0 is a value (turns alone), not "unset"
    with pytest.raises(SystemExit):  # a negative share of the queue is refused by argparse
        parser.parse_args(["run", "--trace", "conv", "--starvation-overtake-queue-fraction", "-0.5"])
