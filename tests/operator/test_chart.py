"""The Helm chart, checked with the real `helm` binary and the real Kubernetes schemas."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfleet.operator.crd import crd_manifest

from .conftest import REPO

CHART = REPO / "charts" / "llmfleet"
KUBE_VERSION = "1.35.0"


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = shutil.which("helm", path=f"{REPO / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if binary is None:
        pytest.fail("helm not found in .tools/bin or on PATH: run `make setup` (scripts/setup.sh unpacks it)")
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, "HOME": str(home), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}  # fmt: skip

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60)
        if check and proc.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def _template(helm: Any, *sets: str, namespace: str = "llmfleet-system") -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION, "--include-crds"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint_strict(helm: Any) -> None:
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), "--set", "watch.clusterWide=true,metrics.serviceMonitor.enabled=true,networkPolicy.enabled=true")


VARIANTS = {
    "namespaced": [],
    "cluster-wide": ["watch.clusterWide=true"],
    "all-extras": ["watch.namespaces={team-a,team-b}", "metrics.serviceMonitor.enabled=true", "networkPolicy.enabled=true"],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_manifests_are_valid_kubernetes(helm: Any, variant: str) -> None:
    import kubernetes_validate

    docs = _template(helm, *VARIANTS[variant])
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a Prometheus Operator CRD, unknown to the core schemas
            assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"]["endpoints"][0]["port"] == "metrics"
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_chart_ships_the_generated_crd(helm: Any) -> None:
    docs = _template(helm)
    (crd,) = _by_kind(docs, "CustomResourceDefinition")
    assert crd == crd_manifest()


def test_operator_pod_is_locked_down(helm: Any) -> None:
    (dep,) = _by_kind(_template(helm), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["args"][:2] == ["operator", "run"]
    assert "--metrics-port=9102" in c["args"] and "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["WATCH_NAMESPACE"] == "llmfleet-system"
    assert env["LLMFLEET_DISPATCHER_IMAGE"] == "ghcr.io/llmfleet/dispatcher:0.1.0"
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"


def _rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = doc["rules"]
    return rules


def test_namespaced_mode_has_roles_only_and_least_privilege(helm: Any) -> None:
    docs = _template(helm, "watch.namespaces={team-a,team-b}")
    assert not _by_kind(docs, "ClusterRole") and not _by_kind(docs, "ClusterRoleBinding")
    roles = _by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = _by_kind(docs, "RoleBinding")
    assert all(b["subjects"][0]["namespace"] == "llmfleet-system" for b in bindings)
    (dep,) = _by_kind(docs, "Deployment")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WATCH_NAMESPACE"] == "team-a,team-b"
    for rule in _rules(roles[0]):
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "pods" not in rule["resources"], "the operator never touches pods"
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["create"], "the operator creates token Secrets but never reads one"
    granted = {(g, r) for rule in _rules(roles[0]) for g in rule["apiGroups"] for r in rule["resources"]}
    assert ("llmfleet.io", "llmfleets/status") in granted and ("discovery.k8s.io", "endpointslices") in granted


def test_cluster_wide_mode_uses_one_cluster_role(helm: Any) -> None:
    docs = _template(helm, "watch.clusterWide=true")
    assert not _by_kind(docs, "Role")
    (role,) = _by_kind(docs, "ClusterRole")
    assert any("namespaces" in rule["resources"] for rule in _rules(role))
    (dep,) = _by_kind(docs, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert "--all-namespaces" in c["args"] and "WATCH_NAMESPACE" not in {e["name"] for e in c["env"]}


def test_operator_rbac_covers_every_child_it_renders(helm: Any) -> None:
    """Every kind the operator applies must be writable under the chart's Role."""
    from llmfleet.operator.kube import CHILD_KINDS, KINDS

    (role,) = _by_kind(_template(helm), "Role")
    writable = {(g, r) for rule in _rules(role) if {"create", "patch", "delete"} <= set(rule["verbs"])
                for g in rule["apiGroups"] for r in rule["resources"]}  # fmt: skip
    for kind in CHILD_KINDS:
        group, _, plural = KINDS[kind]
        assert (group, plural) in writable, f"{kind} is not writable by the operator"


def test_optional_service_monitor_and_network_policy(helm: Any) -> None:
    assert not _by_kind(_template(helm), "NetworkPolicy")
    docs = _template(helm, "metrics.serviceMonitor.enabled=true", "networkPolicy.enabled=true")
    (np,) = _by_kind(docs, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (sm,) = _by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize("bad", ["workers=0", "watch.clusterWide=maybe", "image.pullPolicy=Sometimes",
                                 "podSecurityContext.runAsNonRoot=false", "unknownKey=1"])  # fmt: skip
def test_values_schema_rejects_bad_values(helm: Any, bad: str) -> None:
    proc = helm("template", "rel", str(CHART), "--set", bad, check=False)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr


@pytest.mark.parametrize("image", ["operator", "dispatcher", "sidecar"])
def test_dockerfiles_run_llmfleet_as_non_root(image: str) -> None:
    text = (REPO / "docker" / f"{image}.Dockerfile").read_text()
    assert "USER 65532:65532" in text
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "llmfleet"]' in text
    assert f'CMD ["{image}"' in text
    assert Path(REPO / "docker" / "README.md").read_text().count(f"docker/{image}.Dockerfile") >= 1
