"""The operator against a real kube-apiserver (`../shared/k8s`, as controller-runtime's envtest
does), with the chart's own namespaced RBAC: what a test double cannot show.

The control plane starts once per session on free local ports. Set LLMFLEET_K8S_DIR to its
folder; without it these tests skip, except under CI, where the folder is always present.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfleet.engine.process import free_port
from llmfleet.operator.runner import RunOptions

from .conftest import REPO, OperatorThread, eventually, load_example

K8S_DIR = Path(os.environ.get("LLMFLEET_K8S_DIR", REPO.parent / "shared" / "k8s"))
KUBECTL = REPO / ".tools" / "bin" / "kubectl"
HELM = REPO / ".tools" / "bin" / "helm"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    script = K8S_DIR / "control-plane"
    if not script.exists():
        if os.environ.get("CI"):
            pytest.fail(f"no Kubernetes control plane at {K8S_DIR}; CI always has ../shared/k8s")
        pytest.skip(f"no Kubernetes control plane at {K8S_DIR} (set LLMFLEET_K8S_DIR)")
    folder = tmp_path_factory.mktemp("control-plane")
    env = {**os.environ, "KCP_API_PORT": str(free_port()), "KCP_KCM_PORT": str(free_port())}
    env["KCP_ETCD_PORT"] = str(free_port())
    up = subprocess.run([str(script), "up", str(folder), "--no-controller-manager"], env=env,
                        capture_output=True, text=True, timeout=180)  # fmt: skip
    if up.returncode != 0:
        pytest.fail(f"the control plane did not start:\n{up.stdout}\n{up.stderr}")
    try:
        yield folder / "kubeconfig"
    finally:
        subprocess.run([str(script), "down", str(folder)], env=env, capture_output=True, timeout=60)


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run([str(KUBECTL), "--kubeconfig", str(kubeconfig), *args], input=stdin,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    if out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def _chart_rbac(release_ns: str, watched: str, home: Path) -> list[dict[str, Any]]:
    helm = shutil.which("helm", path=str(HELM.parent)) or "helm"
    out = subprocess.run([helm, "template", "rel", str(REPO / "charts" / "llmfleet"), "--namespace", release_ns,
                          "--set", f"watch.namespaces={{{watched}}}"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(home)},
                         check=True)  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]


def _token_kubeconfig(admin: Path, token: str, path: Path) -> Path:
    cfg = yaml.safe_load(admin.read_text())
    cfg["users"] = [{"name": "operator", "user": {"token": token}}]
    for ctx in cfg["contexts"]:
        ctx["context"]["user"] = "operator"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def test_namespaced_operator_with_the_charts_rbac_reconciles_without_forbidden_calls(
    control_plane: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    k = control_plane
    kubectl(k, "apply", "--server-side", "-f", str(REPO / "crds" / "llmfleets.llmfleet.io.yaml"))
    kubectl(k, "wait", "--for=condition=Established", "crd/llmfleets.llmfleet.io", "--timeout=60s")
    for ns in ("llmfleet-system", "team-a"):
        kubectl(k, "create", "namespace", ns)
    rbac = _chart_rbac("llmfleet-system", "team-a", tmp_path)
    assert {d["kind"] for d in rbac} == {"ServiceAccount", "Role", "RoleBinding"}, "namespaced mode has no ClusterRole"
    kubectl(k, "apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    sa = next(d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount")
    token = kubectl(k, "create", "token", sa, "-n", "llmfleet-system").strip()
    as_operator = _token_kubeconfig(k, token, tmp_path / "operator.kubeconfig")

    caplog.set_level(logging.WARNING)
    op = OperatorThread(RunOptions(namespaces=["team-a"], kubeconfig=str(as_operator), workers=2))
    await op.start()
    try:
        fleet = load_example("minimal.yaml")
        fleet["metadata"]["namespace"] = "team-a"
        kubectl(k, "apply", "-f", "-", stdin=yaml.safe_dump(fleet))
        name = fleet["metadata"]["name"]

        def applied() -> bool:
            out = kubectl(k, "get", "configmap,deployment,service", "-n", "team-a", "-o", "name")
            return f"configmap/{name}-scheduling" in out and f"deployment.apps/{name}-dispatcher" in out

        await eventually(applied, "the fleet's children applied with the chart's Role", timeout=60)
    finally:
        await op.stop()
    forbidden = [r.getMessage() for r in caplog.records if "403" in r.getMessage() or "orbidden" in r.getMessage()]
    assert not forbidden, f"calls the chart's RBAC forbids: {forbidden[:3]}"


@pytest.mark.parametrize("example", ["minimal.yaml", "full.yaml"])
def test_applied_children_read_back_from_the_server_are_not_drift(control_plane: Path, example: str) -> None:
    """The server normalises what it stores (drops `env: []`, writes `nvidia.com/gpu: 1` as "1",
    defaults every field we leave out): none of that is drift. A hand edit of a field we own is."""
    from llmfleet.operator.drift import drifted
    from llmfleet.operator.handlers import parse_spec
    from llmfleet.operator.kube import KubeClient, load_api_client
    from llmfleet.operator.render import FleetRef, render_children

    ns = f"drift-{example.split('.')[0]}"
    kubectl(control_plane, "create", "namespace", ns)
    doc = load_example(example)
    spec = parse_spec(doc["spec"])
    children = render_children(FleetRef(name=doc["metadata"]["name"], namespace=ns, uid="0"), spec)
    for child in children:
        child["metadata"].pop("ownerReferences", None)  # no owner object exists on this server
    api = load_api_client(str(control_plane), None)
    kube = KubeClient(api)
    try:
        for child in children:
            kube.apply(child)
        for child in children:
            live = kube.get(child["kind"], ns, child["metadata"]["name"])
            assert not drifted(child, live), f"{child['kind']} {child['metadata']['name']} reads back as drifted"
        engine = next(c for c in children if c["kind"] == "Deployment" and "dispatcher" not in c["metadata"]["name"])
        name = engine["metadata"]["name"]
        kubectl(control_plane, "set", "image", f"deployment/{name}", "-n", ns, "vllm=vllm/vllm-openai:hand-edited")
        assert drifted(engine, kube.get("Deployment", ns, name)), "a hand-edited image must be drift"
    finally:
        api.close()
