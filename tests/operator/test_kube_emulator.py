"""The API test double honours the parts of the Kubernetes API contract the operator and dispatcher rely on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from llmfleet.operator.kube import KubeApiError, KubeClient, load_api_client
from llmfleet.testing import kube_ops
from llmfleet.testing.kube_emulator import KubeEmulator

from .conftest import FLEETS, NS, eventually


@pytest.fixture()
def client(kubeconfig: str) -> KubeClient:
    return KubeClient(load_api_client(kubeconfig))


def _cm(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}}, "data": data}


async def _call(fn: Any, *args: Any) -> Any:
    """The kubernetes client blocks; the emulator shares this event loop, so call from a thread."""
    return await asyncio.to_thread(fn, *args)


async def test_server_sets_identity_and_versions(client: KubeClient) -> None:
    created = await _call(client.request, "POST", f"/api/v1/namespaces/{NS}/configmaps", _cm("a", x="1"))
    meta = created["metadata"]
    assert meta["namespace"] == NS and meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    patched = await _call(client.request, "PATCH", f"/api/v1/namespaces/{NS}/configmaps/a", {"data": {"x": "2"}},
                          None, "application/merge-patch+json")  # fmt: skip
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert patched["metadata"]["generation"] == 2 and patched["metadata"]["uid"] == meta["uid"]
    with pytest.raises(KubeApiError) as conflict:
        await _call(client.request, "POST", f"/api/v1/namespaces/{NS}/configmaps", _cm("a"))
    assert conflict.value.status == 409


async def test_stale_resource_version_is_rejected(client: KubeClient) -> None:
    created = await _call(client.request, "POST", f"/api/v1/namespaces/{NS}/configmaps", _cm("b", x="1"))
    stale = created["metadata"]["resourceVersion"]
    await _call(client.request, "PATCH", f"/api/v1/namespaces/{NS}/configmaps/b", {"data": {"x": "2"}},
                None, "application/merge-patch+json")  # fmt: skip
    body = {"metadata": {"resourceVersion": stale}, "data": {"x": "3"}}
    with pytest.raises(KubeApiError) as exc:
        await _call(client.request, "PATCH", f"/api/v1/namespaces/{NS}/configmaps/b", body, None, "application/merge-patch+json")
    assert exc.value.status == 409
    test_op = [{"op": "test", "path": "/metadata/resourceVersion", "value": stale}, {"op": "replace", "path": "/data/x", "value": "4"}]
    with pytest.raises(KubeApiError) as exc:
        await _call(client.request, "PATCH", f"/api/v1/namespaces/{NS}/configmaps/b", test_op, None, "application/json-patch+json")
    assert exc.value.status == 422


async def test_label_and_field_selectors(client: KubeClient) -> None:
    for name, labels in [("e1", {"app": "x", "tier": "a"}), ("e2", {"app": "x", "tier": "b"}), ("e3", {"app": "y"})]:
        await _call(client.request, "POST", f"/api/v1/namespaces/{NS}/configmaps", _cm(name, labels))
    names = lambda items: sorted(i["metadata"]["name"] for i in items)  # noqa: E731
    assert names(await _call(client.list, "ConfigMap", NS, "app=x")) == ["e1", "e2"]
    assert names(await _call(client.list, "ConfigMap", NS, "app=x,tier!=a")) == ["e2"]
    assert names(await _call(client.list, "ConfigMap", NS, "tier in (a,b)")) == ["e1", "e2"]
    assert names(await _call(client.list, "ConfigMap", NS, "!tier")) == ["e3"]
    got = await _call(client.request, "GET", f"/api/v1/namespaces/{NS}/configmaps", None, [("fieldSelector", "metadata.name=e3")])
    assert names(got["items"]) == ["e3"]


async def test_server_side_apply_is_idempotent_and_removes_dropped_fields(emulator: KubeEmulator, client: KubeClient) -> None:
    obj = {**_cm("s", {"a": "1"}, x="1", y="2"), "metadata": {"name": "s", "namespace": NS, "labels": {"a": "1"}}}
    first = await _call(client.apply, obj)
    again = await _call(client.apply, obj)
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]  # no-op: nothing written
    emulator.patch_object("configmaps", NS, "s", {"metadata": {"annotations": {"someone": "else"}}, "data": {"x": "hand-edit"}})
    smaller = {**obj, "data": {"x": "1"}}
    result = await _call(client.apply, smaller)
    assert result["data"] == {"x": "1"}  # our field restored, our dropped field removed
    assert result["metadata"]["annotations"] == {"someone": "else"}  # fields of other managers stay


async def test_status_subresource_is_kept_apart(emulator: KubeEmulator, client: KubeClient) -> None:
    fleet = {"apiVersion": "llmfleet.io/v1alpha1", "kind": "LLMFleet", "metadata": {"name": "f"},
             "spec": {"model": {"name": "m"}}, "status": {"phase": "Ready"}}  # fmt: skip
    created = emulator.create_object("llmfleets", NS, fleet, **FLEETS)
    assert "status" not in created, "status is ignored on create"
    assert created["spec"]["engine"]["maxModelLen"] == 4096, "schema defaults applied"
    await _call(client.patch_status, "LLMFleet", NS, "f", {"phase": "Progressing"})
    main = await _call(client.request, "PATCH", f"/apis/llmfleet.io/v1alpha1/namespaces/{NS}/llmfleets/f",
                       {"status": {"phase": "Ready"}, "spec": {"replicas": 3}}, None, "application/merge-patch+json")  # fmt: skip
    assert main["status"]["phase"] == "Progressing" and main["spec"]["replicas"] == 3
    assert main["metadata"]["generation"] == 2
    status_only = await _call(client.patch_status, "LLMFleet", NS, "f", {"phase": "Ready"})
    assert status_only["metadata"]["generation"] == 2, "status writes do not bump generation"


async def test_custom_resources_are_validated_and_pruned(emulator: KubeEmulator, client: KubeClient) -> None:
    bad = {"apiVersion": "llmfleet.io/v1alpha1", "kind": "LLMFleet", "metadata": {"name": "bad"},
           "spec": {"model": {"name": "m"}, "replicas": -3}}  # fmt: skip
    with pytest.raises(KubeApiError) as exc:
        await _call(client.request, "POST", f"/apis/llmfleet.io/v1alpha1/namespaces/{NS}/llmfleets", bad)
    assert exc.value.status == 422 and "replicas" in exc.value.message
    extra = {**bad, "metadata": {"name": "ok"}, "spec": {"model": {"name": "m"}, "unknownField": 1}}
    created = await _call(client.request, "POST", f"/apis/llmfleet.io/v1alpha1/namespaces/{NS}/llmfleets", extra)
    assert "unknownField" not in created["spec"]


async def test_scale_subresource(emulator: KubeEmulator, client: KubeClient) -> None:
    emulator.create_object("llmfleets", NS, {"metadata": {"name": "sc"}, "spec": {"model": {"name": "m"}}}, **FLEETS)
    path = f"/apis/llmfleet.io/v1alpha1/namespaces/{NS}/llmfleets/sc/scale"
    scale = await _call(client.request, "PATCH", path, {"spec": {"replicas": 4}}, None, "application/merge-patch+json")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 4
    assert emulator.get_object("llmfleets", NS, "sc", **FLEETS)["spec"]["replicas"] == 4


async def test_finalizers_delay_deletion(emulator: KubeEmulator, client: KubeClient) -> None:
    emulator.create_object("configmaps", NS, {**_cm("fin"), "metadata": {"name": "fin", "finalizers": ["x/y"]}})
    assert await _call(client.delete, "ConfigMap", NS, "fin")
    marked = emulator.get_object("configmaps", NS, "fin")
    assert marked["metadata"]["deletionTimestamp"]
    emulator.patch_object("configmaps", NS, "fin", {"metadata": {"finalizers": None}})
    assert emulator.get_object("configmaps", NS, "fin") is None


async def test_garbage_collection_when_enabled(emulator: KubeEmulator) -> None:
    emulator.gc = True
    owner = emulator.create_object("configmaps", NS, _cm("owner"))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    emulator.create_object("configmaps", NS, {**_cm("child"), "metadata": {"name": "child", "ownerReferences": [ref]}})
    emulator.delete_object("configmaps", NS, "owner")
    assert emulator.get_object("configmaps", NS, "child") is None


async def _read_events(emulator: KubeEmulator, url: str, count: int) -> list[dict[str, Any]]:
    events = []
    async with emulator.get(url) as resp:
        while len(events) < count:
            line = await asyncio.wait_for(resp.content.readline(), 5)
            if line.strip():
                events.append(json.loads(line))
    return events


async def test_endpointslice_watch_with_selector_and_resume(emulator: KubeEmulator) -> None:
    """What the dispatcher's Kubernetes discovery does: list, then watch from the list's resourceVersion."""

    def slice_(name: str, group: str, ready: bool) -> dict[str, Any]:
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": name, "labels": {"llmfleet.io/fleet": "f", "llmfleet.io/component": "engine",
                                                      "llmfleet.io/group": group}},
                "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": ready}}],
                "ports": [{"name": "grpc", "port": 50061}]}  # fmt: skip

    es = dict(group="discovery.k8s.io", version="v1")
    emulator.create_object("endpointslices", NS, slice_("f-short-1", "short", True), **es)
    emulator.create_object("endpointslices", NS, {**slice_("other", "x", True), "metadata": {"name": "other", "labels": {}}}, **es)
    selector = "llmfleet.io/fleet%3Df,llmfleet.io/component%3Dengine"
    base = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
    async with emulator.get(f"{base}?labelSelector={selector}") as resp:
        listing = await resp.json()
    assert [i["metadata"]["name"] for i in listing["items"]] == ["f-short-1"]
    rv = listing["metadata"]["resourceVersion"]

    watch = asyncio.create_task(_read_events(emulator, f"{base}?watch=true&resourceVersion={rv}&labelSelector={selector}", 2))
    await asyncio.sleep(0.1)
    emulator.create_object("endpointslices", NS, {**slice_("noise", "x", True), "metadata": {"name": "noise"}}, **es)
    emulator.create_object("endpointslices", NS, slice_("f-long-1", "long", False), **es)
    emulator.delete_object("endpointslices", NS, "f-short-1", **es)
    events = await watch
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "f-long-1"), ("DELETED", "f-short-1")]

    # Resuming from the listing's version replays exactly what happened since.
    replay = await _read_events(emulator, f"{base}?watch=true&resourceVersion={rv}&labelSelector={selector}", 2)
    assert [e["type"] for e in replay] == ["ADDED", "DELETED"]


async def test_watch_from_a_compacted_version_answers_410(emulator: KubeEmulator) -> None:
    emulator.history = 2
    for i in range(5):
        emulator.create_object("configmaps", NS, _cm(f"c{i}"))
    (event,) = await _read_events(emulator, f"/api/v1/namespaces/{NS}/configmaps?watch=true&resourceVersion=1", 1)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


async def test_watch_times_out_when_asked(emulator: KubeEmulator) -> None:
    async with emulator.get(f"/api/v1/namespaces/{NS}/configmaps?watch=true&resourceVersion=999&timeoutSeconds=0.2") as resp:
        body = await asyncio.wait_for(resp.read(), 5)
    assert body == b""


async def test_strategic_merge_patch_is_refused_not_faked(client: KubeClient) -> None:
    await _call(client.request, "POST", f"/api/v1/namespaces/{NS}/configmaps", _cm("smp"))
    with pytest.raises(KubeApiError) as exc:
        await _call(client.request, "PATCH", f"/api/v1/namespaces/{NS}/configmaps/smp", {"data": {}}, None,
                    "application/strategic-merge-patch+json")  # fmt: skip
    assert exc.value.status == 415


async def test_deployment_controller_stand_in_reports_rollout(emulator: KubeEmulator) -> None:
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
           "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}}}}  # fmt: skip
    emulator.create_object("deployments", NS, dep, group="apps")
    await eventually(lambda: (emulator.get_object("deployments", NS, "d", group="apps").get("status") or {}).get("readyReplicas") == 3,
                     "rollout")  # fmt: skip
    status = emulator.get_object("deployments", NS, "d", group="apps")["status"]
    assert status["observedGeneration"] == 1


@pytest.mark.parametrize(
    "selector, labels, expected",
    [("a=b", {"a": "b"}, True), ("a==b", {"a": "c"}, False), ("a!=b", {}, True), ("a", {"a": ""}, True),
     ("!a", {"a": "x"}, False), ("a notin (x, y)", {"a": "z"}, True), ("a in (x,y),b", {"a": "x"}, False)],
)  # fmt: skip
def test_label_selector_grammar(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert kube_ops.label_matcher(selector)(labels) is expected


def test_json_patch_ops() -> None:
    doc = {"a": {"b": [1, 2]}, "c": 1}
    ops = [{"op": "add", "path": "/a/b/-", "value": 3}, {"op": "remove", "path": "/c"},
           {"op": "replace", "path": "/a/b/0", "value": 0}, {"op": "test", "path": "/a/b/2", "value": 3}]  # fmt: skip
    assert kube_ops.json_patch(doc, ops) == {"a": {"b": [0, 2, 3]}}
    assert doc == {"a": {"b": [1, 2]}, "c": 1}


async def test_typed_client_list_and_watch_of_endpointslices(emulator: KubeEmulator, kubeconfig: str) -> None:
    """The official client's DiscoveryV1Api + watch.Watch, as the dispatcher's Kubernetes discovery uses them."""
    import kubernetes

    api = kubernetes.client.DiscoveryV1Api(load_api_client(kubeconfig))
    es = dict(group="discovery.k8s.io", version="v1")
    labels = {"llmfleet.io/fleet": "f", "llmfleet.io/component": "engine", "llmfleet.io/group": "short"}
    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "f-short-abc", "labels": labels},
            "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": True}}],
            "ports": [{"name": "grpc", "port": 50061, "protocol": "TCP"}]}  # fmt: skip
    emulator.create_object("endpointslices", NS, body, **es)
    selector = "llmfleet.io/fleet=f,llmfleet.io/component=engine"
    listing = await asyncio.to_thread(api.list_namespaced_endpoint_slice, NS, label_selector=selector)
    assert [s.metadata.name for s in listing.items] == ["f-short-abc"]
    assert listing.items[0].endpoints[0].addresses == ["10.1.2.3"] and listing.items[0].ports[0].port == 50061

    def watch_two() -> list[tuple[str, str]]:
        w = kubernetes.watch.Watch()
        seen = []
        for event in w.stream(api.list_namespaced_endpoint_slice, NS, label_selector=selector,
                              resource_version=listing.metadata.resource_version, timeout_seconds=5):  # fmt: skip
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 2:
                w.stop()
        return seen

    watcher = asyncio.create_task(asyncio.to_thread(watch_two))
    await asyncio.sleep(0.3)
    emulator.create_object("endpointslices", NS, {**body, "metadata": {"name": "f-long-xyz", "labels": labels}}, **es)
    emulator.delete_object("endpointslices", NS, "f-short-abc", **es)
    assert await asyncio.wait_for(watcher, 10) == [("ADDED", "f-long-xyz"), ("DELETED", "f-short-abc")]
