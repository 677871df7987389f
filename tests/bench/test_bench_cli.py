"""`llmfleet bench` finds scripts by name and passes arguments through."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmfleet.cli import main


@pytest.fixture()
def bench_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "echo_args.py").write_text(
        '"""Writes its arguments to a file."""\nimport sys, pathlib\n'
        'pathlib.Path(sys.argv[1]).write_text(" ".join(sys.argv[2:]))\n'
    )
    (tmp_path / "_helper.py").write_text('"""Not a benchmark."""\n')
    monkeypatch.setenv("LLMFLEET_BENCH_DIR", str(tmp_path))
    return tmp_path


def test_list_shows_benchmarks_but_not_helpers(bench_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    assert "echo_args" in out and "Writes its arguments" in out
    assert "_helper" not in out


def test_run_passes_arguments(bench_folder: Path) -> None:
    target = bench_folder / "out.txt"
    assert main(["bench", "run", "echo_args", str(target), "--rate", "2"]) == 0
    assert target.read_text() == "--rate 2"


def test_unknown_benchmark_is_a_clear_error(bench_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "run", "nope"]) == 2
    assert "no benchmark named 'nope'" in capsys.readouterr().err


def test_top_level_help_lists_every_present_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("engine", "bench"):
        assert name in out
