"""`llmfleet sim ...` end to end on small slices of the real traces."""

from __future__ import annotations

import json

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
    assert [p["name"] for p in listed][:2] == ["fcfs-rr", "least-load"] and len(listed) == 10
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
            "fcfs-rr,llmfleet",
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
    assert [r["policy"] for r in doc["results"]] == ["fcfs-rr", "llmfleet"]
    for r in doc["results"]:
        assert tuple(r) == RESULT_KEYS
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
            "least-load,prefix",
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
    ],
)
def test_run_reports_bad_input_in_one_line(argv, message, capsys) -> None:
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(SystemExit, match="unknown policies"):
        _main(["run", "--trace", "conv", "--policies", "fcfs-rr,nope"])
