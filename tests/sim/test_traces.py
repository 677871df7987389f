"""Trace loading: Azure CSVs, the Mooncake JSONL, rate scaling and clear errors."""

from __future__ import annotations

import pytest

from llmfleet.sim.traces import load_trace


@pytest.mark.parametrize(("name", "hashes"), [("conv", False), ("code", False), ("mooncake", True)])
def test_known_traces_load_sorted_from_zero(name: str, hashes: bool) -> None:
    trace = load_trace(name, limit=200)
    assert len(trace) == 200
    assert trace[0].arrival_s == 0.0
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(trace, trace[1:], strict=False))
    assert all(t.prompt_tokens >= 1 and t.output_tokens >= 1 for t in trace)
    assert any(t.hash_ids for t in trace) is hashes
    assert len({t.request_id for t in trace}) == 200


def test_rate_scale_compresses_arrivals() -> None:
    base = load_trace("conv", limit=50)
    fast = load_trace("conv", limit=50, rate_scale=2.0)
    assert [t.arrival_s / 2 for t in base] == pytest.approx([t.arrival_s for t in fast])
    # the first conv rows: 374/44 at 18:15:46.68, then 396/109 4.3145 s later
    assert (base[0].prompt_tokens, base[0].output_tokens) == (374, 44)
    assert base[1].arrival_s == pytest.approx(4.3145789, abs=1e-6)


@pytest.mark.parametrize(
    ("content", "suffix", "match"),
    [
        ("a,b\n1,2\n", ".csv", "expected CSV columns"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", ".csv", r"bad\.csv:2"),
        ('{"timestamp": 0}\n', ".jsonl", r"bad\.jsonl:1"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", ".csv", "empty"),
    ],
)
def test_bad_traces_name_the_file_and_line(tmp_path, content, suffix, match) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_trace(str(path))


def test_missing_trace_and_bad_arguments() -> None:
    with pytest.raises(FileNotFoundError, match="conv, code, mooncake"):
        load_trace("/no/such/trace.csv")
    with pytest.raises(ValueError):
        load_trace("conv", rate_scale=0)
    with pytest.raises(ValueError):
        load_trace("conv", limit=0)
