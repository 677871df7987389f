"""The operator and the CRD against a real kube-apiserver (`../shared/k8s`, as controller-runtime's
envtest does): the chart installed by the real helm and run with its own ServiceAccount's token,
what the server stores read back as not-drift, and admission of every example and invalid object.

The control plane starts once per session (tests/conftest.py); each test has its own namespace.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfleet.core.config import SchedulingConfig
from llmfleet.operator.handlers import parse_spec
from llmfleet.operator.kube import KubeApiError, KubeClient
from llmfleet.operator.render import FleetRef, InvalidFleet, render_children
from llmfleet.operator.runner import RunOptions
from llmfleet.testing.cluster import ControlPlane, Namespace

from .conftest import REPO, OperatorThread, eventually, load_example

HELM = REPO / ".tools" / "bin" / "helm"
EXAMPLES = ["minimal.yaml", "full.yaml", "auto-groups.yaml"]


def kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> str:
    return plane.kubectl(*args, stdin=stdin)


def _token_kubeconfig(admin: Path, token: str, path: Path) -> Path:
    cfg = yaml.safe_load(admin.read_text())
    cfg["users"] = [{"name": "operator", "user": {"token": token}}]
    for ctx in cfg["contexts"]:
        ctx["context"]["user"] = "operator"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def test_the_chart_installed_by_helm_runs_the_operator_with_its_own_token_and_no_forbidden_call(
    control_plane: ControlPlane, namespace: Namespace, kube: KubeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = Namespace.create(kube, f"{namespace.name}-sys")
    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(control_plane.kubeconfig)}
    subprocess.run([str(HELM), "install", "rel", str(REPO / "charts" / "llmfleet"), "--namespace", release.name,
                    "--set", f"watch.namespaces={{{namespace.name}}}", "--skip-crds"],  # the session installed it
                   capture_output=True, text=True, timeout=120, env=env, check=True)  # fmt: skip
    kinds = {(k, o["metadata"]["name"]) for k in ("ServiceAccount", "Role", "Deployment") for o in release.objects(k)}
    assert ("Deployment", "rel-llmfleet") in kinds and ("ServiceAccount", "rel-llmfleet") in kinds, kinds
    assert not kube.request("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles", query=[
        ("labelSelector", "app.kubernetes.io/instance=rel")])["items"], "namespaced mode has no ClusterRole"  # fmt: skip
    token = kubectl(control_plane, "create", "token", "rel-llmfleet", "-n", release.name).strip()
    as_operator = _token_kubeconfig(control_plane.kubeconfig, token, tmp_path / "operator.kubeconfig")

    caplog.set_level(logging.WARNING)
    op = OperatorThread(RunOptions(namespaces=[namespace.name], kubeconfig=str(as_operator), workers=2))
    await op.start()
    try:
        fleet = load_example("full.yaml")
        namespace.create_object("LLMFleet", fleet)
        name = fleet["metadata"]["name"]

        def applied() -> bool:
            return bool(namespace.get("ConfigMap", f"{name}-scheduling") and namespace.get("Deployment", f"{name}-dispatcher"))

        await eventually(applied, "the fleet's children applied with the chart's Role", timeout=60)
        await eventually(lambda: (namespace.get("LLMFleet", name) or {}).get("status", {}).get("phase"), "a status written")
    finally:
        await op.stop()
    forbidden = [r.getMessage() for r in caplog.records if "403" in r.getMessage() or "orbidden" in r.getMessage()]
    assert not forbidden, f"calls the chart's RBAC forbids: {forbidden[:3]}"


@pytest.mark.parametrize("example", EXAMPLES)
def test_applied_children_read_back_from_the_server_are_not_drift(
    control_plane: ControlPlane, namespace: Namespace, example: str
) -> None:
    """The server normalises what it stores (drops `env: []`, writes `nvidia.com/gpu: 1` as "1",
    defaults every field we leave out): none of that is drift. A hand edit of a field we own is."""
    from llmfleet.operator.drift import drifted

    ns = namespace.name
    doc = load_example(example)
    spec = parse_spec(doc["spec"])
    children = render_children(FleetRef(name=doc["metadata"]["name"], namespace=ns, uid="0"), spec)
    for child in children:
        child["metadata"].pop("ownerReferences", None)  # no owner object exists on this server
    kube = control_plane.client()
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
        kube.api.close()


def test_an_explicit_null_survives_the_server_and_turns_the_setting_off(namespace: Namespace) -> None:
    """Where null means "off" (the overtake guard, pacing, the OpenAI port), the CRD marks the
    field nullable: otherwise the server prunes the null, defaults the field, and it stays on."""
    doc = load_example("minimal.yaml")
    doc["spec"]["scheduling"] = {"starvationOvertakeTurns": None, "prefillPaceTokens": None}
    doc["spec"]["dispatcher"] = {"openaiPort": None}
    stored = namespace.create_object("LLMFleet", doc)["spec"]
    assert stored["scheduling"]["starvationOvertakeTurns"] is None and stored["scheduling"]["prefillPaceTokens"] is None
    assert stored["scheduling"]["starvationOvertakeQueueFraction"] == 0.5  # left out: defaulted
    assert stored["dispatcher"]["openaiPort"] is None
    children = render_children(FleetRef("x", namespace.name, "0"), parse_spec(stored))
    cm = next(c for c in children if c["kind"] == "ConfigMap" and c["metadata"]["name"] == "x-scheduling")
    loaded = SchedulingConfig.from_yaml(cm["data"]["scheduling.yaml"])
    assert loaded.starvation_overtake_turns is None and loaded.prefill_pace_tokens is None
    dispatcher = next(c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == "x-dispatcher")
    assert "--openai-port" not in dispatcher["spec"]["template"]["spec"]["containers"][0]["command"]


def _admit(ns: Namespace, doc: dict[str, Any]) -> str | None:
    """The API server's verdict on creating `doc` (server-side dry run): None, or its message."""
    try:
        ns.create_object("LLMFleet", doc, dry_run=True)
        return None
    except KubeApiError as exc:
        return exc.message


def _operator_accepts(spec: dict[str, Any]) -> bool:
    try:
        render_children(FleetRef("x", "ns", "0"), parse_spec(spec))
        return True
    except InvalidFleet:
        return False


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_is_admitted_by_the_server_and_accepted_by_the_operator(namespace: Namespace, example: str) -> None:
    doc = load_example(example)
    assert "namespace" not in doc["metadata"], "examples apply to whatever namespace kubectl is pointed at"
    assert _admit(namespace, doc) is None
    assert _operator_accepts(doc["spec"])


def _auto(s: dict[str, Any]) -> None:
    s["scheduling"]["lengthGroups"] = {"auto": {"groups": 2}}
    s.pop("replicasPerGroup", None)


# Each mutation of examples/full.yaml, and a fragment of the server's refusal. Schema and CEL both.
INVALID = [
    ("kv cache dtype", lambda s: s["engine"].update(kvCacheDtype="int4"), "int4"),
    ("gpu memory", lambda s: s["engine"].update(gpuMemoryUtilization=1.5), "gpuMemoryUtilization"),
    ("negative replicas", lambda s: s.update(replicas=-1), "replicas"),
    ("service type", lambda s: s["dispatcher"].update(serviceType="Ingress"), "Ingress"),
    ("quantity", lambda s: s["resources"].update(memory="lots"), "memory"),
    ("no model", lambda s: s.pop("model"), "model"),
    ("group name", lambda s: s["scheduling"]["lengthGroups"]["ranges"][0].update(name="Short_Group"), "name"),
    ("unknown field", lambda s: s["engine"].update(maxModelLength=10), "maxModelLength"),
    ("policy pattern", lambda s: s["scheduling"].update(policy="Shortest First"), "policy"),
    ("slice tokens", lambda s: s["scheduling"].update(sliceTokens=0), "sliceTokens"),
    ("port", lambda s: s["dispatcher"].update(port=70000), "port"),
    ("autoscaling bounds", lambda s: s["autoscaling"].update(minReplicas=13), "autoscaling.minReplicas must be <= maxReplicas"),
    ("slice vs context", lambda s: s["scheduling"].update(sliceTokens=9000), "scheduling.sliceTokens must be <= engine.maxModelLen"),
    ("tp vs gpus", lambda s: s["engine"].update(tensorParallelSize=2), "engine.tensorParallelSize must be <= resources.gpus"),
    ("replicas vs autoscaling", lambda s: s.update(replicas=20), "replicas must lie within autoscaling"),
    ("ranges and auto", lambda s: s["scheduling"]["lengthGroups"].update(auto={"groups": 2}), "set exactly one of ranges or auto"),
    ("ranker source", lambda s: s["scheduling"]["ranker"].update(path="/models/ranker"), "set exactly one of configMap or path"),
    ("range bounds", lambda s: s["scheduling"]["lengthGroups"]["ranges"][0].update(maxTokens=0), "maxTokens must be > minTokens"),
    ("unknown pinned group", lambda s: s.update(replicasPerGroup={"huge": 1}), "replicasPerGroup must name only"),
    ("pins too many", lambda s: s.update(replicas=2, replicasPerGroup={"short": 3}, autoscaling=None), "pins more pods"),
    ("too few for auto groups", lambda s: (_auto(s), s.update(replicas=1, autoscaling=None)), "at least one pod"),
    ("auto group name", lambda s: (_auto(s), s.update(replicasPerGroup={"g2": 1})), "replicasPerGroup must name only"),
    ("open load balancer", lambda s: s["dispatcher"].update(serviceType="LoadBalancer", tlsSecret=None),
     "serviceType LoadBalancer needs authSecret and tlsSecret"),
]


def test_a_load_balancer_without_auth_and_tls_needs_an_explicit_allow_insecure(namespace: Namespace) -> None:
    doc = load_example("full.yaml")
    doc["spec"]["dispatcher"].update(serviceType="LoadBalancer")  # full.yaml has both secrets
    assert _admit(namespace, copy.deepcopy(doc)) is None and _operator_accepts(doc["spec"])
    del doc["spec"]["dispatcher"]["authSecret"]
    doc["spec"]["dispatcher"]["allowInsecure"] = True
    assert _admit(namespace, copy.deepcopy(doc)) is None and _operator_accepts(doc["spec"])


@pytest.mark.parametrize("mutate, message", [pytest.param(m, msg, id=i) for i, m, msg in INVALID])
def test_the_server_refuses_invalid_fleets_and_the_operator_agrees(namespace: Namespace, mutate: Any, message: str) -> None:
    doc = load_example("full.yaml")
    mutate(doc["spec"])
    doc["spec"] = {k: v for k, v in doc["spec"].items() if v is not None}
    refusal = _admit(namespace, doc)
    assert refusal is not None and message in refusal, refusal
    assert not _operator_accepts(doc["spec"]), "the same rule, enforced again where admission did not run"


@pytest.mark.parametrize("replicas, pinned, groups, ok", [
    (0, None, 2, True), (2, None, 2, True), (1, None, 2, False), (3, {"g0": 2}, 2, True), (2, {"g0": 2}, 2, True),
    (3, {"g0": 1}, 3, True), (2, {"g0": 1}, 3, False), (1, {"g0": 1, "g1": 1}, 2, False),
])  # fmt: skip
def test_cel_and_the_operator_agree_on_how_replicas_spread(
    namespace: Namespace, replicas: int, pinned: dict[str, int] | None, groups: int, ok: bool
) -> None:
    doc = load_example("auto-groups.yaml")
    doc["spec"].update(replicas=replicas, scheduling={"lengthGroups": {"auto": {"groups": groups}}})
    if pinned:
        doc["spec"]["replicasPerGroup"] = pinned
    assert (_admit(namespace, copy.deepcopy(doc)) is None) == _operator_accepts(doc["spec"]) == ok


def test_kubectl_scale_below_the_group_count_is_refused(control_plane: ControlPlane, namespace: Namespace) -> None:
    namespace.create_object("LLMFleet", load_example("auto-groups.yaml"))
    with pytest.raises(AssertionError, match="at least one pod"):
        kubectl(control_plane, "scale", "-n", namespace.name, "llmf/mistral-auto", "--replicas=1")
    kubectl(control_plane, "scale", "-n", namespace.name, "llmf/mistral-auto", "--replicas=2")
    assert (namespace.get("LLMFleet", "mistral-auto") or {})["spec"]["replicas"] == 2
