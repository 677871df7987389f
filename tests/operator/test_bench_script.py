"""The operator benchmark script still runs end to end (tiny size), so the committed results stay reproducible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def test_operator_bench_runs_small(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "operator_fleets.py"), "--fleets", "3", "--repeat", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "operator_fleets.json").read_text())
    assert result["fleets"] == 3 and len(result["ready_times_s"]) == 3
    assert result["operator_peak_rss_mib"] > 10 and result["children_created"] >= 27
    assert result["kubelet_errors"] == 0 and result["control_plane_cpu_s"]["kube-apiserver"] > 0
    assert (tmp_path / "operator_fleets.png").stat().st_size > 1000
