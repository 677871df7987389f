"""Pure rendering: the children of a fleet, checked against the real Kubernetes schemas and the data-plane contracts."""

from __future__ import annotations

from typing import Any

import pytest

from llmfleet.core.config import SchedulingConfig
from llmfleet.operator import render as r
from llmfleet.operator.drift import child_key, drifted
from llmfleet.operator.handlers import parse_spec

from .conftest import load_example

REF = r.FleetRef(name="llama-8b", namespace="inference", uid="1b4e28ba-2fa1-11d2-883f-0016d3cca427")


def _children(example: str = "full.yaml", **spec_changes: Any) -> dict[tuple[str, str], dict[str, Any]]:
    doc = load_example(example)
    doc["spec"].update(spec_changes)
    return {child_key(c): c for c in r.render_children(REF, parse_spec(doc["spec"]))}


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


@pytest.mark.parametrize("example", ["minimal.yaml", "full.yaml", "auto-groups.yaml"])
def test_children_are_valid_kubernetes_objects(example: str, kubernetes_validate_version: str) -> None:
    import kubernetes_validate

    for child in _children(example).values():
        kubernetes_validate.validate(child, kubernetes_validate_version, strict=True)


def test_full_example_renders_every_child_kind() -> None:
    keys = set(_children())
    assert keys == {
        ("ConfigMap", "llama-8b-scheduling"),
        ("Deployment", "llama-8b-short"), ("Deployment", "llama-8b-medium"), ("Deployment", "llama-8b-long"),
        ("Service", "llama-8b-short"), ("Service", "llama-8b-medium"), ("Service", "llama-8b-long"),
        ("PodDisruptionBudget", "llama-8b-engines"),
        ("ServiceAccount", "llama-8b-dispatcher"), ("Role", "llama-8b-dispatcher"), ("RoleBinding", "llama-8b-dispatcher"),
        ("Deployment", "llama-8b-dispatcher"), ("Service", "llama-8b-dispatcher"),
        ("NetworkPolicy", "llama-8b-engines"), ("NetworkPolicy", "llama-8b-dispatcher"),
    }  # fmt: skip


def test_every_child_is_controlled_by_the_fleet() -> None:
    for child in _children().values():
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "llmfleet.io/v1alpha1", "kind": "LLMFleet", "name": "llama-8b",
                         "uid": REF.uid, "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        assert child["metadata"]["namespace"] == "inference"
        assert child["metadata"]["labels"][r.MANAGED_BY] == r.OPERATOR_NAME


def test_engine_pod_contract() -> None:
    deployment = _children()[("Deployment", "llama-8b-medium")]
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"].items() >= {
        "llmfleet.io/fleet": "llama-8b", "llmfleet.io/component": "engine", "llmfleet.io/group": "medium"
    }.items()  # fmt: skip
    vllm = _container(deployment, "vllm")
    assert vllm["image"] == "vllm/vllm-openai:v0.11.0"
    assert vllm["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert vllm["args"] == [
        "--model", "/models/llama-3.1-8b-instruct", "--served-model-name", "llama-8b", "--port", "8000",
        "--max-model-len", "8192", "--gpu-memory-utilization", "0.9", "--kv-cache-dtype", "fp8",
        "--tensor-parallel-size", "1", "--scheduling-policy", "priority", "--enable-prefix-caching", "--max-num-seqs", "256",
    ]  # fmt: skip
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert vllm["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in vllm["env"]
    sidecar = _container(deployment, "sidecar")
    token = "/etc/llmfleet/sidecar-auth/token"
    assert sidecar["command"] == ["llmfleet", "sidecar", "--host", "[::]", "--port", "50061",
                                  "--engine-url", "http://127.0.0.1:8000", "--metrics-port", "9091", "--group", "medium",
                                  "--auth-token-file", token]  # fmt: skip
    assert sidecar["readinessProbe"]["grpc"] == {"port": 50061}
    assert sidecar["livenessProbe"]["grpc"] == {"port": 50061, "service": "liveness"}  # not readiness: engine may be loading
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"] == [
        "llmfleet", "sidecar", "drain", "--port", "50061", "--auth-token-file", token]  # fmt: skip
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["sidecar-auth"]["secret"]["secretName"] == "llama-8b-sidecar-token"
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "podAntiAffinity" in spec["affinity"]


def test_engine_services_are_headless_per_group_so_endpointslices_carry_the_group() -> None:
    svc = _children()[("Service", "llama-8b-long")]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["metadata"]["labels"].items() >= {"llmfleet.io/fleet": "llama-8b", "llmfleet.io/component": "engine",
                                                 "llmfleet.io/group": "long"}.items()  # fmt: skip
    assert {p["port"] for p in svc["spec"]["ports"]} == {50061, 9091}, "vLLM's own port is not published"


def test_dispatcher_contract_with_tls_and_auth() -> None:
    children = _children()
    dep = children[("Deployment", "llama-8b-dispatcher")]
    c = _container(dep, "dispatcher")
    assert c["command"] == [
        "llmfleet", "dispatcher", "--host", "[::]", "--port", "50051", "--metrics-port", "9090",
        "--config", "/etc/llmfleet/scheduling.yaml", "--discovery", "kubernetes", "--namespace", "$(POD_NAMESPACE)",
        "--selector", "llmfleet.io/fleet=llama-8b,llmfleet.io/component=engine", "--sidecar-port", "50061",
        "--sidecar-token-file", "/etc/llmfleet/sidecar-auth/token",
        "--tls-cert", "/etc/llmfleet/tls/tls.crt", "--tls-key", "/etc/llmfleet/tls/tls.key", "--health-port", "50052",
        "--auth-token-file", "/etc/llmfleet/auth/token", "--openai-port", "8000",
    ]  # fmt: skip
    # kubelet's grpc probes speak plaintext only: with TLS they ask the plaintext health port.
    # Liveness asks the "liveness" service: a dispatcher with no ready pod is not restarted.
    assert c["readinessProbe"]["grpc"] == {"port": 50052}
    assert c["livenessProbe"]["grpc"] == {"port": 50052, "service": "liveness"}
    assert {"name": "health", "containerPort": 50052} in c["ports"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "llama-8b-dispatcher-tls"
    assert volumes["auth"]["secret"]["secretName"] == "llama-8b-dispatcher-auth"
    assert volumes["ranker"]["configMap"]["name"] == "llama-8b-ranker"
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "llama-8b-dispatcher"
    assert dep["spec"]["replicas"] == 2
    role = children[("Role", "llama-8b-dispatcher")]
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]  # fmt: skip
    svc = children[("Service", "llama-8b-dispatcher")]
    assert svc["spec"]["ports"][0] == {"name": "grpc", "port": 50051, "targetPort": 50051, "appProtocol": "grpc"}
    # The OpenAI-compatible front: on by default, behind the same Service and auth token.
    assert svc["spec"]["ports"][1] == {"name": "http", "port": 8000, "targetPort": 8000, "appProtocol": "http"}
    assert {"name": "http", "containerPort": 8000} in c["ports"]


def test_the_openai_front_follows_dispatcher_openai_port() -> None:
    doc = load_example("minimal.yaml")
    doc["spec"]["dispatcher"] = {"openaiPort": 8443}
    children = r.render_children(r.FleetRef("x", "ns", "0"), parse_spec(doc["spec"]))
    svc = next(c for c in children if c["kind"] == "Service" and c["metadata"]["name"] == "x-dispatcher")
    assert ("http", 8443, 8000) in [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]]
    doc["spec"]["dispatcher"] = {"openaiPort": None}
    children = r.render_children(r.FleetRef("x", "ns", "0"), parse_spec(doc["spec"]))
    dep = next(c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == "x-dispatcher")
    assert "--openai-port" not in _container(dep, "dispatcher")["command"]
    svc = next(c for c in children if c["kind"] == "Service" and c["metadata"]["name"] == "x-dispatcher")
    assert "http" not in [p["name"] for p in svc["spec"]["ports"]]


def test_dispatcher_without_secrets_gets_no_tls_or_auth_flags() -> None:
    c = _container(_children("minimal.yaml")[("Deployment", "llama-8b-dispatcher")], "dispatcher")
    assert "--tls-cert" not in c["command"] and "--auth-token-file" not in c["command"]
    assert "--health-port" not in c["command"] and c["readinessProbe"]["grpc"] == {"port": 50051}


def test_scheduling_config_round_trips_through_the_shared_model() -> None:
    cm = _children()[("ConfigMap", "llama-8b-scheduling")]
    config = SchedulingConfig.from_yaml(cm["data"]["scheduling.yaml"])
    assert config.policy == "llmfleet" and config.slice_tokens == 256 and config.max_queue == 8192
    assert config.length_groups is not None and config.length_groups.names() == ["short", "medium", "long"]
    assert config.ranker == r.RANKER_DIR
    auto = _children("auto-groups.yaml")[("ConfigMap", "llama-8b-scheduling")]
    groups = SchedulingConfig.from_yaml(auto["data"]["scheduling.yaml"]).length_groups
    assert groups is not None and groups.auto is not None and groups.names() == [f"g{i}" for i in range(groups.auto.groups)]


def test_policy_change_rolls_the_dispatcher_through_the_config_hash() -> None:
    def hash_of(children: dict) -> str:
        return children[("Deployment", "llama-8b-dispatcher")]["spec"]["template"]["metadata"]["annotations"][r.CONFIG_HASH]

    doc = load_example("full.yaml")
    before = _children()
    doc["spec"]["scheduling"]["policy"] = "scls"
    after = {child_key(c): c for c in r.render_children(REF, parse_spec(doc["spec"]))}
    assert hash_of(before) != hash_of(after)
    assert hash_of(before) == hash_of(_children())  # deterministic


@pytest.mark.parametrize(
    "replicas, pinned, groups, expected",
    [
        (1, None, None, {"default": 1}),
        (6, {"long": 1}, ["short", "medium", "long"], {"short": 3, "medium": 2, "long": 1}),
        (7, None, ["short", "medium", "long"], {"short": 3, "medium": 2, "long": 2}),
        (0, None, ["short", "long"], {"short": 0, "long": 0}),
        (4, {"short": 2, "long": 2}, ["short", "long"], {"short": 2, "long": 2}),
    ],
)
def test_group_replicas(replicas: int, pinned: dict | None, groups: list[str] | None, expected: dict) -> None:
    spec: dict[str, Any] = {"model": {"name": "m"}, "replicas": replicas, "replicasPerGroup": pinned}
    if groups:
        bounds = list(range(0, 100 * len(groups), 100))
        spec["scheduling"] = {"lengthGroups": {"ranges": [
            {"name": g, "minTokens": lo, **({"maxTokens": lo + 100} if i < len(groups) - 1 else {})}
            for i, (g, lo) in enumerate(zip(groups, bounds, strict=True))
        ]}}  # fmt: skip
    assert r.group_replicas(parse_spec(spec)) == expected


@pytest.mark.parametrize(
    "spec, reason",
    [
        ({"replicas": 2, "replicasPerGroup": {"huge": 1}}, "unknown length groups"),
        ({"replicas": 1, "replicasPerGroup": {"default": 3}}, "pins 3 pods"),
        ({"replicas": 1, "scheduling": {"lengthGroups": {"auto": {"groups": 3}}}}, "each needs one"),
        ({"scheduling": {"lengthGroups": {"ranges": [{"name": "a", "minTokens": 0, "maxTokens": 10},
                                                     {"name": "b", "minTokens": 20}]}}}, "contiguous"),  # fmt: skip
        ({"scheduling": {"lengthGroups": {"ranges": [{"name": "a", "minTokens": 5}]}}}, "minTokens: 0"),
    ],
)
def test_specs_that_cannot_run_raise_invalid_fleet(spec: dict, reason: str) -> None:
    with pytest.raises(r.InvalidFleet, match=reason):
        r.render_children(REF, parse_spec({"model": {"name": "m"}, **spec}))


def test_drift_ignores_server_defaults_but_not_edits() -> None:
    desired = _children()[("Deployment", "llama-8b-short")]
    import copy

    live = copy.deepcopy(desired)
    live["metadata"]["resourceVersion"] = "7"
    live["spec"]["progressDeadlineSeconds"] = 600  # a server-side default
    live["status"] = {"readyReplicas": 3}
    assert not drifted(desired, live)
    live["spec"]["replicas"] = 0
    assert drifted(desired, live)
    assert drifted(desired, None)



def test_network_policies_let_only_the_dispatcher_call_sidecars_and_only_scrapers_read_metrics() -> None:
    children = _children()
    engines = children[("NetworkPolicy", "llama-8b-engines")]["spec"]
    assert engines["podSelector"] == {"matchLabels": {"llmfleet.io/fleet": "llama-8b", "llmfleet.io/component": "engine"}}
    assert engines["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in engines["ingress"]}
    assert set(by_port) == {50061, 9091}, "vLLM's port 8000 is reachable from no other pod"
    assert by_port[50061]["from"] == [{"podSelector": {"matchLabels": {"llmfleet.io/fleet": "llama-8b",
                                                                       "llmfleet.io/component": "dispatcher"}}}]  # fmt: skip
    prometheus = [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    assert by_port[9091]["from"] == prometheus
    dispatcher = children[("NetworkPolicy", "llama-8b-dispatcher")]["spec"]
    api, metrics = dispatcher["ingress"]
    assert [p["port"] for p in api["ports"]] == [50051, 8000, 50052] and "from" not in api, "clients: anyone by default"
    assert metrics["ports"] == [{"protocol": "TCP", "port": 9090}] and metrics["from"] == prometheus


@pytest.mark.parametrize(
    "network_policy, engine_rules, dispatcher_from",
    [
        ({"enabled": False}, None, None),
        # No scraper at all: the metrics rule goes (an empty `from` would let everyone in).
        ({"metricsFrom": []}, [[50061]], "anyone"),
        ({"clientsFrom": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}, [[50061], [9091]],
         [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]),
        ({"clientsFrom": []}, [[50061], [9091]], "nobody"),
    ],
)  # fmt: skip
def test_network_policy_settings(network_policy: dict, engine_rules: list | None, dispatcher_from: Any) -> None:
    children = _children("minimal.yaml", networkPolicy=network_policy)
    if engine_rules is None:
        assert not any(kind == "NetworkPolicy" for kind, _ in children)
        return
    engines = children[("NetworkPolicy", "llama-8b-engines")]["spec"]["ingress"]
    assert [[p["port"] for p in rule["ports"]] for rule in engines] == engine_rules
    api = [r for r in children[("NetworkPolicy", "llama-8b-dispatcher")]["spec"]["ingress"] if r["ports"][0]["port"] == 50051]
    if dispatcher_from == "nobody":
        assert api == []
    elif dispatcher_from == "anyone":
        assert "from" not in api[0]
    else:
        assert api[0]["from"] == dispatcher_from


def test_sidecar_tls_serves_tls_probes_plaintext_health_and_the_dispatcher_verifies_the_fleet_name() -> None:
    children = _children("minimal.yaml", sidecar={"tlsSecret": "sidecar-certs"})
    engine = children[("Deployment", "llama-8b-default")]
    sidecar = _container(engine, "sidecar")
    cmd = sidecar["command"]
    assert cmd[cmd.index("--tls-cert") + 1] == "/etc/llmfleet/sidecar-tls/tls.crt"
    assert cmd[cmd.index("--tls-key") + 1] == "/etc/llmfleet/sidecar-tls/tls.key"
    assert cmd[cmd.index("--health-port") + 1] == "50062"
    assert sidecar["readinessProbe"]["grpc"] == {"port": 50062}, "kubelet probes speak plaintext only"
    drain = sidecar["lifecycle"]["preStop"]["exec"]["command"]
    assert drain[drain.index("--tls-server-name") + 1] == "llama-8b-sidecar"
    volumes = {v["name"]: v for v in engine["spec"]["template"]["spec"]["volumes"]}
    assert volumes["sidecar-tls"]["secret"] == {"secretName": "sidecar-certs"}
    dispatcher = children[("Deployment", "llama-8b-dispatcher")]
    dcmd = _container(dispatcher, "dispatcher")["command"]
    assert dcmd[dcmd.index("--sidecar-tls-ca") + 1] == "/etc/llmfleet/sidecar-tls/ca.crt"
    assert dcmd[dcmd.index("--sidecar-tls-server-name") + 1] == "llama-8b-sidecar"
    dvolumes = {v["name"]: v for v in dispatcher["spec"]["template"]["spec"]["volumes"]}
    assert dvolumes["sidecar-tls"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "no sidecar key"


def test_the_sidecar_token_secret_is_random_and_owned_by_the_fleet() -> None:
    from llmfleet.operator.security import new_sidecar_token_secret

    a, b = new_sidecar_token_secret(REF), new_sidecar_token_secret(REF)
    assert a["metadata"]["name"] == "llama-8b-sidecar-token" and a["type"] == "Opaque"
    assert len(a["stringData"]["token"]) >= 40 and a["stringData"]["token"] != b["stringData"]["token"]
    assert a["metadata"]["ownerReferences"][0]["uid"] == REF.uid, "deleted with the fleet by the garbage collector"
