"""The real kopf operator, in a thread, against the real kube-apiserver and controller manager:
the lifecycle of an LLMFleet. A stand-in kubelet marks Pods Ready, so rollouts are reported by the
real Deployment and ReplicaSet controllers."""

from __future__ import annotations

from typing import Any

from llmfleet.core.config import SchedulingConfig
from llmfleet.operator.kube import CHILD_KINDS, KubeClient
from llmfleet.operator.render import MANAGED_BY, OPERATOR_NAME
from llmfleet.testing.cluster import ControlPlane, FakeKubelet, Namespace

from .conftest import eventually, load_example, settle

TIMEOUT = 45.0  # a real server and controllers on a busy 2-core machine


def _fleet(ns: Namespace, name: str) -> dict[str, Any]:
    return ns.get("LLMFleet", name) or {}


def _status(ns: Namespace, name: str) -> dict[str, Any]:
    return _fleet(ns, name).get("status") or {}


def _condition(ns: Namespace, name: str, ctype: str) -> dict[str, Any]:
    return next((c for c in _status(ns, name).get("conditions", []) if c["type"] == ctype), {})


def _children(ns: Namespace) -> list[tuple[str, str]]:
    return sorted(
        (kind, obj["metadata"]["name"]) for kind in CHILD_KINDS for obj in ns.objects(kind, f"{MANAGED_BY}={OPERATOR_NAME}")
    )


def _deployment(ns: Namespace, name: str) -> dict[str, Any]:
    return ns.get("Deployment", name) or {}


def _create(ns: Namespace, example: str = "minimal.yaml", **spec: Any) -> str:
    doc = load_example(example)
    doc["metadata"].pop("namespace", None)
    doc["spec"].update(spec)
    ns.create_object("LLMFleet", doc)
    name: str = doc["metadata"]["name"]
    return name


def _drift_restored() -> float:
    from prometheus_client import REGISTRY

    return sum(REGISTRY.get_sample_value("llmfleet_operator_drift_restored_total", {"kind": k}) or 0.0 for k in CHILD_KINDS)


async def _ready(ns: Namespace, name: str) -> None:
    await eventually(lambda: _status(ns, name).get("phase") == "Ready", f"fleet {ns.name}/{name} Ready", TIMEOUT)


async def _degraded(ns: Namespace, name: str, reason: str) -> dict[str, Any]:
    await eventually(lambda: _condition(ns, name, "Degraded").get("reason") == reason, f"Degraded for {reason}", TIMEOUT)
    return _condition(ns, name, "Degraded")


async def test_create_makes_every_child_and_status_converges(namespace: Namespace, kubelet: FakeKubelet, operator: Any) -> None:
    ns = namespace
    restored_before = _drift_restored()
    name = _create(ns, "full.yaml", replicas=3, autoscaling={"minReplicas": 1, "maxReplicas": 6})
    await _ready(ns, name)
    assert _children(ns) == sorted([
        ("ConfigMap", "llama-8b-scheduling"), ("Deployment", "llama-8b-dispatcher"), ("Deployment", "llama-8b-long"),
        ("Deployment", "llama-8b-medium"), ("Deployment", "llama-8b-short"), ("PodDisruptionBudget", "llama-8b-engines"),
        ("RoleBinding", "llama-8b-dispatcher"), ("Role", "llama-8b-dispatcher"), ("ServiceAccount", "llama-8b-dispatcher"),
        ("Service", "llama-8b-dispatcher"), ("Service", "llama-8b-long"), ("Service", "llama-8b-medium"),
        ("Service", "llama-8b-short"), ("NetworkPolicy", "llama-8b-dispatcher"), ("NetworkPolicy", "llama-8b-engines"),
    ])  # fmt: skip
    secret = ns.get("Secret", "llama-8b-sidecar-token")
    assert secret is not None and secret["data"]["token"], "the sidecar token the pods mount"
    status = _status(ns, name)
    assert status["observedGeneration"] == 1
    assert status["ready"] == "3/3" and status["replicas"] == 3
    assert [(g["name"], g["readyReplicas"]) for g in status["groups"]] == [("short", 1), ("medium", 1), ("long", 1)]
    assert status["groups"][1]["minTokens"] == 256 and status["groups"][1]["maxTokens"] == 1024
    assert status["dispatcherEndpoint"] == f"llama-8b-dispatcher.{ns.name}.svc:50051"
    assert status["openaiBaseUrl"] == f"http://llama-8b-dispatcher.{ns.name}.svc:8000/v1"
    assert _condition(ns, name, "Ready")["status"] == "True"
    assert _condition(ns, name, "Degraded")["status"] == "False"
    fleet = _fleet(ns, name)
    assert fleet["metadata"]["finalizers"] == ["llmfleet.io/cleanup"]
    # Every Deployment event of the rollout compared its child with what the server stores
    # (defaults added, `env: []` dropped, quantities rewritten): none of it was drift.
    assert _drift_restored() == restored_before, "spurious drift restorations"
    for kind in CHILD_KINDS:
        for obj in ns.objects(kind, f"{MANAGED_BY}={OPERATOR_NAME}"):
            assert obj["metadata"]["ownerReferences"][0]["uid"] == fleet["metadata"]["uid"]


async def test_status_follows_what_the_children_report(namespace: Namespace, kubelet: FakeKubelet, operator: Any) -> None:
    ns = namespace
    kubelet.paused = True  # Pods stay Pending: the Deployment controller reports 0 ready
    name = _create(ns)
    await eventually(lambda: _status(ns, name).get("phase") == "Progressing", "Progressing", TIMEOUT)
    assert _condition(ns, name, "Ready")["status"] == "False"
    assert "waiting for group default 0/1" in _condition(ns, name, "Ready")["message"]
    kubelet.paused = False
    await _ready(ns, name)


async def test_spec_changes_roll_the_children(namespace: Namespace, kubelet: FakeKubelet, operator: Any) -> None:
    ns = namespace
    name = _create(ns)
    await _ready(ns, name)
    before = _deployment(ns, "qwen-small-dispatcher")["spec"]["template"]["metadata"]["annotations"]
    ns.patch("LLMFleet", name, {"spec": {"replicas": 3, "engine": {"image": "vllm/vllm-openai:v0.12.0"},
                                         "scheduling": {"policy": "scls"}}})  # fmt: skip

    def rolled() -> bool:
        engine = _deployment(ns, "qwen-small-default")
        vllm = engine["spec"]["template"]["spec"]["containers"][0]
        cm = ns.get("ConfigMap", "qwen-small-scheduling") or {}
        dispatcher = _deployment(ns, "qwen-small-dispatcher")["spec"]["template"]["metadata"]["annotations"]
        return (engine["spec"]["replicas"] == 3 and vllm["image"] == "vllm/vllm-openai:v0.12.0"
                and SchedulingConfig.from_yaml(cm["data"]["scheduling.yaml"]).policy == "scls"
                and dispatcher != before)  # the config hash rolls the dispatcher  # fmt: skip

    await eventually(rolled, "children updated", TIMEOUT)
    await eventually(lambda: _status(ns, name).get("observedGeneration") == 2 and _status(ns, name)["ready"] == "3/3",
                     "status of generation 2", TIMEOUT)  # fmt: skip


async def test_the_sidecar_token_is_made_once_and_remade_when_deleted(namespace: Namespace, kubelet: FakeKubelet,
                                                                      operator: Any) -> None:  # fmt: skip
    ns = namespace
    name = _create(ns)
    await _ready(ns, name)
    token = (ns.get("Secret", "qwen-small-sidecar-token") or {})["data"]["token"]
    ns.patch("LLMFleet", name, {"spec": {"replicas": 2}})
    await eventually(lambda: _deployment(ns, "qwen-small-default")["spec"]["replicas"] == 2, "reconciled", TIMEOUT)
    assert ns.get("Secret", "qwen-small-sidecar-token")["data"]["token"] == token, "a reconcile keeps the token"
    assert ns.delete("Secret", "qwen-small-sidecar-token")
    ns.patch("LLMFleet", name, {"spec": {"replicas": 1}})
    await eventually(lambda: ns.get("Secret", "qwen-small-sidecar-token") is not None, "token Secret remade", TIMEOUT)
    assert ns.get("Secret", "qwen-small-sidecar-token")["data"]["token"] != token, "a new random token"


async def test_removed_group_is_pruned(namespace: Namespace, kubelet: FakeKubelet, operator: Any) -> None:
    ns = namespace
    name = _create(ns, "auto-groups.yaml")
    await _ready(ns, name)
    assert _deployment(ns, "mistral-auto-g1")
    ns.patch("LLMFleet", name, {"spec": {"scheduling": {"lengthGroups": {"auto": {"groups": 1}}}}})
    await eventually(lambda: not _deployment(ns, "mistral-auto-g1") and not ns.get("Service", "mistral-auto-g1"),
                     "group g1 pruned", TIMEOUT)  # fmt: skip
    await eventually(lambda: _deployment(ns, "mistral-auto-g0")["spec"]["replicas"] == 4, "g0 takes all replicas", TIMEOUT)


async def test_deleted_or_edited_children_are_restored(namespace: Namespace, kubelet: FakeKubelet, operator: Any) -> None:
    ns = namespace
    name = _create(ns)
    await _ready(ns, name)
    uid = _deployment(ns, "qwen-small-default")["metadata"]["uid"]
    for kind, child in (("Deployment", "qwen-small-default"), ("ConfigMap", "qwen-small-scheduling"), ("Role", "qwen-small-dispatcher")):
        ns.delete(kind, child)
    await eventually(lambda: _deployment(ns, "qwen-small-default").get("metadata", {}).get("uid") not in (None, uid)
                     and ns.get("ConfigMap", "qwen-small-scheduling") and ns.get("Role", "qwen-small-dispatcher"),
                     "deleted children recreated", TIMEOUT)  # fmt: skip

    ns.patch("Deployment", "qwen-small-dispatcher", {"spec": {"replicas": 0}})
    ns.patch("Service", "qwen-small-dispatcher", {"spec": {"type": "NodePort"}})
    await eventually(lambda: _deployment(ns, "qwen-small-dispatcher")["spec"]["replicas"] == 1
                     and ns.get("Service", "qwen-small-dispatcher")["spec"]["type"] == "ClusterIP",
                     "hand edits reverted", TIMEOUT)  # fmt: skip
    await _ready(ns, name)


async def test_a_hand_edited_service_port_is_restored_and_blocks_nothing(
    namespace: Namespace, kubelet: FakeKubelet, operator: Any
) -> None:
    """Service ports merge by port number: after a hand edit of 50051 to 1234, applying ours adds a
    second port named "grpc" and the server refuses it (422) until the edited entry is replaced."""
    ns = namespace
    name = _create(ns)
    await _ready(ns, name)
    ns.patch("Service", "qwen-small-dispatcher", [{"op": "replace", "path": "/spec/ports/0/port", "value": 1234}])

    def ports() -> list[tuple[str, int]]:
        return sorted((p["name"], p["port"]) for p in ns.get("Service", "qwen-small-dispatcher")["spec"]["ports"])

    await eventually(lambda: ports() == [("grpc", 50051), ("http", 8000), ("metrics", 9090)], "the Service port restored", TIMEOUT)
    # Later spec edits still reach every child, the engine Deployment applied after the Service too.
    ns.patch("LLMFleet", name, {"spec": {"engine": {"maxModelLen": 1024}}})

    def engine_args() -> list[str]:
        args: list[str] = _deployment(ns, "qwen-small-default")["spec"]["template"]["spec"]["containers"][0]["args"]
        return args

    await eventually(lambda: "1024" == engine_args()[engine_args().index("--max-model-len") + 1], "new max-model-len", TIMEOUT)
    await eventually(lambda: _status(ns, name).get("observedGeneration") == 2 and _status(ns, name)["phase"] == "Ready",
                     "Ready at generation 2", TIMEOUT)  # fmt: skip


async def test_a_child_the_server_refuses_degrades_the_fleet_and_the_rest_is_applied(
    namespace: Namespace, kubelet: FakeKubelet, operator: Any
) -> None:
    ns = namespace
    name = _create(ns)
    await _ready(ns, name)
    # Someone marks the scheduling ConfigMap immutable: the next change of its data is refused (422).
    ns.patch("ConfigMap", "qwen-small-scheduling", {"immutable": True})
    ns.patch("LLMFleet", name, {"spec": {"replicas": 2, "scheduling": {"policy": "scls"}}})
    degraded = await _degraded(ns, name, "ApplyFailed")
    assert "ConfigMap qwen-small-scheduling" in degraded["message"] and "422" in degraded["message"]
    assert _status(ns, name)["observedGeneration"] == 2
    assert _condition(ns, name, "Progressing")["status"] == "False"
    await eventually(lambda: _deployment(ns, "qwen-small-default")["spec"]["replicas"] == 2, "the others applied", TIMEOUT)
    ns.delete("ConfigMap", "qwen-small-scheduling")  # the person undoes it; the restore and retry recover
    await _ready(ns, name)
    assert _condition(ns, name, "Degraded")["status"] == "False"
    cm = ns.get("ConfigMap", "qwen-small-scheduling") or {}
    assert SchedulingConfig.from_yaml(cm["data"]["scheduling.yaml"]).policy == "scls"


async def test_a_rollout_the_cluster_refuses_shows_as_degraded_with_the_child_and_reason(
    control_plane: ControlPlane, namespace: Namespace, kubelet: FakeKubelet, operator: Any
) -> None:
    ns = namespace
    ns.create_object("ResourceQuota", {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "2"}}})
    name = _create(ns)
    await _ready(ns, name)
    ns.patch("LLMFleet", name, {"spec": {"replicas": 3}})  # two more engine pods than the quota allows
    degraded = await _degraded(ns, name, "RolloutFailed")
    assert "Deployment qwen-small-default: FailedCreate" in degraded["message"] and "exceeded quota" in degraded["message"]
    assert _status(ns, name)["phase"] == "Degraded" and _condition(ns, name, "Ready")["status"] == "False"
    table = control_plane.kubectl("get", "llmf", "-n", ns.name, "-o", "wide")
    header, row = table.splitlines()[:2]
    assert "PHASE" in header and "MESSAGE" in header, header
    assert "Degraded" in row and "Deployment qwen-small-default: FailedCreate" in row, row
    ns.delete("ResourceQuota", "pods")
    await _ready(ns, name)

    kubelet.paused = True  # the new Pods never become ready; the Deployment's deadline passes
    ns.patch("Deployment", "qwen-small-default", {"spec": {"progressDeadlineSeconds": 1}})  # a field we leave to users
    ns.patch("LLMFleet", name, {"spec": {"engine": {"image": "vllm/vllm-openai:never-ready"}}})
    degraded = await _degraded(ns, name, "RolloutFailed")
    assert "Deployment qwen-small-default: ProgressDeadlineExceeded" in degraded["message"]


async def test_engine_pods_pass_pod_security_restricted(namespace: Namespace, kubelet: FakeKubelet,
                                                        start_operator: Any) -> None:  # fmt: skip
    ns = namespace
    ns.label({"pod-security.kubernetes.io/enforce": "restricted"})
    await start_operator()
    name = _create(ns, "full.yaml")
    await _ready(ns, name)
    pods = ns.objects("Pod", f"llmfleet.io/fleet={name}")
    assert {p["metadata"]["labels"]["llmfleet.io/component"] for p in pods} == {"engine", "dispatcher"}


async def test_invalid_spec_degrades_with_an_event_and_no_retry_storm(
    namespace: Namespace, kubelet: FakeKubelet, operator: Any
) -> None:
    ns = namespace
    name = _create(ns, scheduling={"policy": "shortest-first"})  # passes the CRD's name pattern, not the operator
    degraded = await _degraded(ns, name, "InvalidSpec")
    assert degraded["status"] == "True"
    assert "unknown policy 'shortest-first'" in degraded["message"] and "llmfleet" in degraded["message"]
    assert _status(ns, name)["phase"] == "Degraded"
    assert _status(ns, name)["replicas"] == 1, "/scale reads status.replicas: it follows the spec while Degraded"

    def warnings() -> list[dict[str, Any]]:
        return [e for e in ns.objects("Event") if e.get("reason") == "InvalidSpec" and e.get("type") == "Warning"]

    await eventually(warnings, "a Warning event", TIMEOUT)
    assert _children(ns) == [], "nothing half-applied: no dispatcher starts with a policy it cannot build"
    version, events = _fleet(ns, name)["metadata"]["resourceVersion"], len(warnings())
    await settle(2.0)
    assert (_fleet(ns, name)["metadata"]["resourceVersion"], len(warnings())) == (version, events), "no retries"
    ns.patch("LLMFleet", name, {"spec": {"replicas": 2}})  # /scale while Degraded
    await eventually(lambda: _status(ns, name).get("replicas") == 2, "status.replicas follows", TIMEOUT)
    assert _status(ns, name)["ready"] == "0/2"

    ns.patch("LLMFleet", name, {"spec": {"scheduling": {"policy": "llmfleet"}}})
    await _ready(ns, name)
    assert _condition(ns, name, "Degraded")["status"] == "False"

    # Ready -> broken again -> fixed again: each transition shows, children of the good spec stay.
    ns.patch("LLMFleet", name, {"spec": {"scheduling": {"lengthGroups": {"ranges": [
        {"name": "a", "minTokens": 0, "maxTokens": 100}, {"name": "b", "minTokens": 200}]}}}})  # fmt: skip
    degraded = await _degraded(ns, name, "InvalidSpec")
    assert "contiguous" in degraded["message"]
    assert _deployment(ns, "qwen-small-default"), "the last good children keep serving"
    ns.patch("LLMFleet", name, {"spec": {"scheduling": {"lengthGroups": None}}})
    await _ready(ns, name)


async def test_deleting_the_fleet_removes_everything(namespace: Namespace, kubelet: FakeKubelet, operator: Any) -> None:
    ns = namespace
    name = _create(ns, "full.yaml")
    await _ready(ns, name)
    ns.delete("LLMFleet", name)
    await eventually(lambda: not _fleet(ns, name) and _children(ns) == [], "fleet and children gone", TIMEOUT)


async def test_operator_restart_duplicates_nothing(namespace: Namespace, kubelet: FakeKubelet, start_operator: Any) -> None:
    ns = namespace
    first = await start_operator()
    name = _create(ns, "full.yaml")
    await _ready(ns, name)
    children = _children(ns)
    before = {(kind, n): ns.get(kind, n) for kind, n in children}
    await first.stop()

    await start_operator()
    await settle(2.0)  # the resumed operator re-applies everything once
    assert _children(ns) == children
    for (kind, n), old in before.items():
        new = ns.get(kind, n)
        assert old and new and new["metadata"]["uid"] == old["metadata"]["uid"], f"{kind}/{n} was recreated"
        # Controllers write the status of Deployments and PDBs; a rewrite by us would bump the generation.
        field = "generation" if kind in ("Deployment", "PodDisruptionBudget") else "resourceVersion"
        assert new["metadata"][field] == old["metadata"][field], f"{kind}/{n} was rewritten"
    assert _status(ns, name)["phase"] == "Ready"


async def test_all_namespaces_mode(namespace: Namespace, kube: KubeClient, kubelet: FakeKubelet, start_operator: Any) -> None:
    other = Namespace.create(kube, f"{namespace.name}-b")
    kubelet.namespaces.append(other.name)
    await start_operator(namespaces=[], all_namespaces=True)
    a, b = _create(namespace), _create(other)
    await _ready(namespace, a)
    await _ready(other, b)
    assert _children(other) == _children(namespace)


async def test_namespaced_mode_ignores_other_namespaces(namespace: Namespace, kube: KubeClient, kubelet: FakeKubelet,
                                                        operator: Any) -> None:  # fmt: skip
    other = Namespace.create(kube, f"{namespace.name}-b")
    elsewhere = _create(other)
    mine = _create(namespace, "auto-groups.yaml")
    await _ready(namespace, mine)
    assert _status(other, elsewhere) == {} and _children(other) == []


async def test_metrics_count_reconciles_and_restorations(namespace: Namespace, kubelet: FakeKubelet, operator: Any) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    ns = namespace
    applied = value("llmfleet_operator_reconciles_total", result="applied")
    restored = value("llmfleet_operator_drift_restored_total", kind="ConfigMap")
    name = _create(ns)
    await _ready(ns, name)
    ns.delete("ConfigMap", "qwen-small-scheduling")
    await eventually(lambda: ns.get("ConfigMap", "qwen-small-scheduling"), "configmap restored", TIMEOUT)
    await eventually(lambda: value("llmfleet_operator_reconciles_total", result="applied") == applied + 1, "reconcile counted")
    await eventually(lambda: value("llmfleet_operator_drift_restored_total", kind="ConfigMap") == restored + 1, "restore counted")


async def test_health_and_metrics_endpoints(namespace: Namespace, kubelet: FakeKubelet, start_operator: Any) -> None:
    import aiohttp

    from llmfleet.engine.process import free_port

    health, metrics = free_port(), free_port()
    await start_operator(liveness=f"http://127.0.0.1:{health}/healthz", metrics_port=metrics)

    async def body(url: str) -> str | None:
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                return await resp.text() if resp.status == 200 else None
        except aiohttp.ClientError:
            return None

    await eventually(lambda: body(f"http://127.0.0.1:{health}/healthz"), "kopf liveness endpoint answers 200")
    name = _create(namespace)
    await _ready(namespace, name)
    text = await body(f"http://127.0.0.1:{metrics}/metrics")
    assert text is not None and 'llmfleet_operator_reconciles_total{result="applied"}' in text
    assert "llmfleet_operator_child_applies_total" in text


async def test_periodic_resync_restores_drift_that_child_events_ignore(
    namespace: Namespace, kubelet: FakeKubelet, start_operator: Any
) -> None:
    """Child events act only on children that still carry the fleet's ownerReference; an edit that
    also strips it is invisible to them, and only the resync puts both back."""
    ns = namespace
    await start_operator(resync_seconds=0.5)
    name = _create(ns)
    await _ready(ns, name)
    ns.patch("Service", "qwen-small-dispatcher", {"metadata": {"ownerReferences": None}, "spec": {"type": "NodePort"}})

    def restored() -> bool:
        svc = ns.get("Service", "qwen-small-dispatcher") or {}
        return svc["spec"]["type"] == "ClusterIP" and bool(svc["metadata"].get("ownerReferences"))

    await eventually(restored, "resync restored the Service", TIMEOUT)
