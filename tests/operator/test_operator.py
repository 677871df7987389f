"""The real kopf operator, in a thread, against the API test double: the lifecycle of an LLMFleet."""

from __future__ import annotations

import copy
from typing import Any

from llmfleet.core.config import SchedulingConfig
from llmfleet.operator.render import MANAGED_BY, OPERATOR_NAME
from llmfleet.testing.kube_emulator import KubeEmulator

from .conftest import FLEETS, NS, eventually, load_example, settle

APPS = dict(group="apps")
CHILD_PLURALS = [("configmaps", ""), ("services", ""), ("serviceaccounts", ""), ("deployments", "apps"),
                 ("poddisruptionbudgets", "policy"), ("roles", "rbac.authorization.k8s.io"),
                 ("rolebindings", "rbac.authorization.k8s.io")]  # fmt: skip


def _fleet(emu: KubeEmulator, name: str, ns: str = NS) -> dict[str, Any]:
    return emu.get_object("llmfleets", ns, name, **FLEETS) or {}


def _status(emu: KubeEmulator, name: str, ns: str = NS) -> dict[str, Any]:
    return _fleet(emu, name, ns).get("status") or {}


def _condition(emu: KubeEmulator, name: str, ctype: str) -> dict[str, Any]:
    return next((c for c in _status(emu, name).get("conditions", []) if c["type"] == ctype), {})


def _children(emu: KubeEmulator, ns: str = NS) -> list[tuple[str, str]]:
    out = []
    for plural, group in CHILD_PLURALS:
        for obj in emu.list_objects(plural, ns, group=group, labels=f"{MANAGED_BY}={OPERATOR_NAME}"):
            out.append((plural, obj["metadata"]["name"]))
    return sorted(out)


def _deployment(emu: KubeEmulator, name: str, ns: str = NS) -> dict[str, Any]:
    return emu.get_object("deployments", ns, name, **APPS) or {}


def _create(emu: KubeEmulator, example: str = "minimal.yaml", ns: str = NS, **spec: Any) -> str:
    doc = load_example(example)
    doc["metadata"].pop("namespace", None)
    doc["spec"].update(spec)
    emu.create_object("llmfleets", ns, doc, **FLEETS)
    name: str = doc["metadata"]["name"]
    return name


async def _ready(emu: KubeEmulator, name: str, ns: str = NS) -> None:
    await eventually(lambda: _status(emu, name, ns).get("phase") == "Ready", f"fleet {ns}/{name} Ready")


async def test_create_makes_every_child_and_status_converges(emulator: KubeEmulator, operator: Any) -> None:
    name = _create(emulator, "full.yaml", replicas=3, autoscaling={"minReplicas": 1, "maxReplicas": 6})
    await _ready(emulator, name)
    assert _children(emulator) == sorted([
        ("configmaps", "llama-8b-scheduling"), ("deployments", "llama-8b-dispatcher"), ("deployments", "llama-8b-long"),
        ("deployments", "llama-8b-medium"), ("deployments", "llama-8b-short"), ("poddisruptionbudgets", "llama-8b-engines"),
        ("rolebindings", "llama-8b-dispatcher"), ("roles", "llama-8b-dispatcher"), ("serviceaccounts", "llama-8b-dispatcher"),
        ("services", "llama-8b-dispatcher"), ("services", "llama-8b-long"), ("services", "llama-8b-medium"),
        ("services", "llama-8b-short"),
    ])  # fmt: skip
    status = _status(emulator, name)
    assert status["observedGeneration"] == 1
    assert status["ready"] == "3/3" and status["replicas"] == 3
    assert [(g["name"], g["readyReplicas"]) for g in status["groups"]] == [("short", 1), ("medium", 1), ("long", 1)]
    assert status["groups"][1]["minTokens"] == 256 and status["groups"][1]["maxTokens"] == 1024
    assert status["dispatcherEndpoint"] == f"llama-8b-dispatcher.{NS}.svc:50051"
    assert _condition(emulator, name, "Ready")["status"] == "True"
    assert _condition(emulator, name, "Degraded")["status"] == "False"
    fleet = _fleet(emulator, name)
    assert fleet["metadata"]["finalizers"] == ["llmfleet.io/cleanup"]
    for plural, group in CHILD_PLURALS:
        for obj in emulator.list_objects(plural, NS, group=group, labels=f"{MANAGED_BY}={OPERATOR_NAME}"):
            assert obj["metadata"]["ownerReferences"][0]["uid"] == fleet["metadata"]["uid"]


async def test_status_follows_what_the_children_report(emulator: KubeEmulator, operator: Any) -> None:
    emulator.rollout_delay = None  # no Deployment controller: nothing becomes ready on its own
    name = _create(emulator)
    await eventually(lambda: _status(emulator, name).get("phase") == "Progressing", "Progressing")
    assert _condition(emulator, name, "Ready")["status"] == "False"
    assert "waiting for group default 0/1" in _condition(emulator, name, "Ready")["message"]
    await eventually(lambda: _deployment(emulator, "qwen-small-default") and _deployment(emulator, "qwen-small-dispatcher"),
                     "both Deployments applied")  # fmt: skip
    for dep in ("qwen-small-default", "qwen-small-dispatcher"):
        emulator.patch_object("deployments", NS, dep, {"status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
                                                                  "updatedReplicas": 1}}, subresource="status", **APPS)  # fmt: skip
    await _ready(emulator, name)


async def test_spec_changes_roll_the_children(emulator: KubeEmulator, operator: Any) -> None:
    name = _create(emulator)
    await _ready(emulator, name)
    before = _deployment(emulator, "qwen-small-dispatcher")["spec"]["template"]["metadata"]["annotations"]
    emulator.patch_object("llmfleets", NS, name, {"spec": {"replicas": 3, "engine": {"image": "vllm/vllm-openai:v0.12.0"},
                                                           "scheduling": {"policy": "scls"}}}, **FLEETS)  # fmt: skip

    def rolled() -> bool:
        engine = _deployment(emulator, "qwen-small-default")
        vllm = engine["spec"]["template"]["spec"]["containers"][0]
        cm = emulator.get_object("configmaps", NS, "qwen-small-scheduling") or {}
        dispatcher = _deployment(emulator, "qwen-small-dispatcher")["spec"]["template"]["metadata"]["annotations"]
        return (engine["spec"]["replicas"] == 3 and vllm["image"] == "vllm/vllm-openai:v0.12.0"
                and SchedulingConfig.from_yaml(cm["data"]["scheduling.yaml"]).policy == "scls"
                and dispatcher != before)  # the config hash rolls the dispatcher  # fmt: skip

    await eventually(rolled, "children updated")
    await eventually(lambda: _status(emulator, name).get("observedGeneration") == 2 and _status(emulator, name)["ready"] == "3/3",
                     "status of generation 2")  # fmt: skip


async def test_removed_group_is_pruned(emulator: KubeEmulator, operator: Any) -> None:
    name = _create(emulator, "auto-groups.yaml")
    await _ready(emulator, name)
    assert _deployment(emulator, "mistral-auto-g1")
    emulator.patch_object("llmfleets", NS, name, {"spec": {"scheduling": {"lengthGroups": {"auto": {"groups": 1}}}}}, **FLEETS)
    await eventually(lambda: not _deployment(emulator, "mistral-auto-g1") and not emulator.get_object("services", NS, "mistral-auto-g1"),
                     "group g1 pruned")  # fmt: skip
    await eventually(lambda: _deployment(emulator, "mistral-auto-g0")["spec"]["replicas"] == 4, "g0 takes all replicas")


async def test_deleted_or_edited_children_are_restored(emulator: KubeEmulator, operator: Any) -> None:
    name = _create(emulator)
    await _ready(emulator, name)
    original = _deployment(emulator, "qwen-small-default")
    uid = original["metadata"]["uid"]
    emulator.delete_object("deployments", NS, "qwen-small-default", **APPS)
    emulator.delete_object("configmaps", NS, "qwen-small-scheduling")
    emulator.delete_object("roles", NS, "qwen-small-dispatcher", group="rbac.authorization.k8s.io")
    await eventually(lambda: _deployment(emulator, "qwen-small-default").get("metadata", {}).get("uid") not in (None, uid)
                     and emulator.get_object("configmaps", NS, "qwen-small-scheduling")
                     and emulator.get_object("roles", NS, "qwen-small-dispatcher", group="rbac.authorization.k8s.io"),
                     "deleted children recreated")  # fmt: skip

    emulator.patch_object("deployments", NS, "qwen-small-dispatcher", {"spec": {"replicas": 0}}, **APPS)
    emulator.patch_object("services", NS, "qwen-small-dispatcher", {"spec": {"type": "NodePort"}})
    await eventually(lambda: _deployment(emulator, "qwen-small-dispatcher")["spec"]["replicas"] == 1
                     and emulator.get_object("services", NS, "qwen-small-dispatcher")["spec"]["type"] == "ClusterIP",
                     "hand edits reverted")  # fmt: skip
    await _ready(emulator, name)


async def test_invalid_spec_degrades_with_an_event_and_no_retry_storm(emulator: KubeEmulator, operator: Any) -> None:
    # Passes the schema (and would pass CEL), but names a length group that does not exist.
    name = _create(emulator, replicas=2, replicasPerGroup={"long": 1})
    await eventually(lambda: _condition(emulator, name, "Degraded").get("status") == "True", "Degraded")
    degraded = _condition(emulator, name, "Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "replicasPerGroup names unknown length groups ['long']" in degraded["message"]
    assert _status(emulator, name)["phase"] == "Degraded"
    await eventually(lambda: any(e.get("reason") == "InvalidSpec" and e.get("type") == "Warning"
                                 for e in emulator.list_objects("events", NS)), "a Warning event")  # fmt: skip
    assert _children(emulator) == [], "nothing half-applied"

    writes = sum(n for (plural, _), n in emulator.writes.items() if plural in ("llmfleets", "events"))
    await settle(1.5)
    assert sum(n for (plural, _), n in emulator.writes.items() if plural in ("llmfleets", "events")) == writes, "no retries"

    emulator.patch_object("llmfleets", NS, name, {"spec": {"replicasPerGroup": None}}, **FLEETS)
    await _ready(emulator, name)
    assert _condition(emulator, name, "Degraded")["status"] == "False"

    # Ready -> broken again -> fixed again: each transition shows, children of the good spec stay.
    emulator.patch_object("llmfleets", NS, name, {"spec": {"scheduling": {"lengthGroups": {"ranges": [
        {"name": "a", "minTokens": 0, "maxTokens": 100}, {"name": "b", "minTokens": 200}]}}}}, **FLEETS)  # fmt: skip
    await eventually(lambda: _condition(emulator, name, "Degraded").get("status") == "True", "Degraded again")
    assert "contiguous" in _condition(emulator, name, "Degraded")["message"]
    assert _deployment(emulator, "qwen-small-default"), "the last good children keep serving"
    emulator.patch_object("llmfleets", NS, name, {"spec": {"scheduling": {"lengthGroups": None}}}, **FLEETS)
    await _ready(emulator, name)


async def test_an_unknown_policy_degrades_the_fleet_instead_of_crash_looping_its_dispatcher(
    emulator: KubeEmulator, operator: Any
) -> None:
    name = _create(emulator, scheduling={"policy": "shortest-first"})  # passes the CRD's name pattern
    await eventually(lambda: _condition(emulator, name, "Degraded").get("status") == "True", "Degraded")
    message = _condition(emulator, name, "Degraded")["message"]
    assert "unknown policy 'shortest-first'" in message and "llmfleet" in message
    assert _children(emulator) == [], "no dispatcher is started with a policy it cannot build"


async def test_deleting_the_fleet_removes_everything(emulator: KubeEmulator, operator: Any) -> None:
    assert not emulator.gc, "garbage collection stays off: the operator's own cleanup is under test"
    name = _create(emulator, "full.yaml")
    await _ready(emulator, name)
    emulator.delete_object("llmfleets", NS, name, **FLEETS)
    await eventually(lambda: not _fleet(emulator, name) and _children(emulator) == [], "fleet and children gone")


async def test_operator_restart_duplicates_nothing(emulator: KubeEmulator, start_operator: Any) -> None:
    first = await start_operator()
    name = _create(emulator, "full.yaml")
    await _ready(emulator, name)
    children = _children(emulator)
    objects = {(p, n): copy.deepcopy(emulator.get_object(p, NS, n, group=g)) for p, g in CHILD_PLURALS for (pp, n) in children if pp == p}
    await first.stop()

    await start_operator()
    await settle(1.5)  # the resumed operator re-applies everything once
    assert _children(emulator) == children
    for (plural, n), before in objects.items():
        group = dict(CHILD_PLURALS)[plural]
        after = emulator.get_object(plural, NS, n, group=group)
        assert after["metadata"]["uid"] == before["metadata"]["uid"], f"{plural}/{n} was recreated"
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], f"{plural}/{n} was rewritten"
    assert _status(emulator, name)["phase"] == "Ready"


async def test_all_namespaces_mode(emulator: KubeEmulator, start_operator: Any) -> None:
    await start_operator(namespaces=[], all_namespaces=True)
    a = _create(emulator, ns=NS)
    b = _create(emulator, ns="team-b")
    await _ready(emulator, a, NS)
    await _ready(emulator, b, "team-b")
    assert _children(emulator, "team-b") == _children(emulator, NS)


async def test_namespaced_mode_ignores_other_namespaces(emulator: KubeEmulator, operator: Any) -> None:
    other = _create(emulator, ns="team-b")
    mine = _create(emulator, "auto-groups.yaml")
    await _ready(emulator, mine)
    assert _status(emulator, other, "team-b") == {} and _children(emulator, "team-b") == []


async def test_metrics_count_reconciles_and_restorations(emulator: KubeEmulator, operator: Any) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    applied = value("llmfleet_operator_reconciles_total", result="applied")
    restored = value("llmfleet_operator_drift_restored_total", kind="ConfigMap")
    name = _create(emulator)
    await _ready(emulator, name)
    emulator.delete_object("configmaps", NS, "qwen-small-scheduling")
    await eventually(lambda: emulator.get_object("configmaps", NS, "qwen-small-scheduling"), "configmap restored")
    await eventually(lambda: value("llmfleet_operator_reconciles_total", result="applied") == applied + 1, "reconcile counted")
    await eventually(lambda: value("llmfleet_operator_drift_restored_total", kind="ConfigMap") == restored + 1, "restore counted")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_health_and_metrics_endpoints(emulator: KubeEmulator, start_operator: Any) -> None:
    import aiohttp

    health, metrics = _free_port(), _free_port()
    await start_operator(liveness=f"http://127.0.0.1:{health}/healthz", metrics_port=metrics)

    async def body(url: str) -> str | None:
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                return await resp.text() if resp.status == 200 else None
        except aiohttp.ClientError:
            return None

    await eventually(lambda: body(f"http://127.0.0.1:{health}/healthz"), "kopf liveness endpoint answers 200")
    name = _create(emulator)
    await _ready(emulator, name)
    text = await body(f"http://127.0.0.1:{metrics}/metrics")
    assert text is not None and 'llmfleet_operator_reconciles_total{result="applied"}' in text
    assert "llmfleet_operator_child_applies_total" in text


async def test_periodic_resync_restores_drift_whose_events_were_lost(emulator: KubeEmulator, start_operator: Any) -> None:
    await start_operator(resync_seconds=0.5)
    name = _create(emulator)
    await _ready(emulator, name)
    emulator.deliver_events = False  # the operator never hears about the next edit
    emulator.patch_object("services", NS, "qwen-small-dispatcher", {"spec": {"type": "NodePort"}})
    emulator.deliver_events = True
    await eventually(lambda: emulator.get_object("services", NS, "qwen-small-dispatcher")["spec"]["type"] == "ClusterIP",
                     "resync restored the Service")  # fmt: skip
