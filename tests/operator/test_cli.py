"""`llmfleet operator` from the shell: clear errors, offline rendering, drift check of the committed CRD."""

from __future__ import annotations

import pytest
import yaml

from llmfleet.cli import main

from .conftest import REPO


def test_run_needs_a_scope(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCH_NAMESPACE", raising=False)
    assert main(["operator", "run"]) == 2
    assert "--namespace NS" in capsys.readouterr().err


def test_run_rejects_both_scopes() -> None:
    with pytest.raises(SystemExit):
        main(["operator", "run", "--namespace", "a", "--all-namespaces"])


def test_render_prints_the_children(capsys: pytest.CaptureFixture[str]) -> None:
    # The example names no namespace (it must apply to any cluster): `kubectl apply -n` or --namespace.
    assert "namespace" not in yaml.safe_load((REPO / "examples" / "full.yaml").read_text())["metadata"]
    assert main(["operator", "render", str(REPO / "examples" / "full.yaml")]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert len(docs) == 15 and {d["metadata"]["namespace"] for d in docs} == {"default"}
    assert sum(d["kind"] == "NetworkPolicy" for d in docs) == 2
    assert main(["operator", "render", str(REPO / "examples" / "full.yaml"), "--namespace", "inference"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert {d["metadata"]["namespace"] for d in docs} == {"inference"}


def test_render_explains_an_invalid_fleet(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"metadata": {"name": "x"}, "spec": {"model": {"name": "m"}, "replicas": 1,
                                                                       "replicasPerGroup": {"nope": 1}}}))  # fmt: skip
    assert main(["operator", "render", str(bad)]) == 1
    assert "unknown length groups ['nope']" in capsys.readouterr().err


def test_crd_check_passes_on_the_committed_files() -> None:
    assert main(["operator", "crd", "--check", "--root", str(REPO)]) == 0


def test_crd_check_fails_on_drift(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["operator", "crd", "--write", "--root", str(tmp_path)]) == 0
    stale = tmp_path / "crds" / "llmfleets.llmfleet.io.yaml"
    stale.write_text(stale.read_text().replace("shortNames", "shortnames"))
    assert main(["operator", "crd", "--check", "--root", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err
