"""Pod discovery: the static list, and EndpointSlices watched on the real kube-apiserver with the
official `kubernetes` client (config loaded explicitly from the test control plane's kubeconfig)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from llmfleet.client import DispatcherClient
from llmfleet.core.clock import wait_for_condition
from llmfleet.dispatcher import serve_dispatcher
from llmfleet.dispatcher.discovery import EndpointSliceDiscovery, endpoints_of, parse_static
from llmfleet.testing.cluster import ControlPlane, Namespace
from tests.dispatcher.fake_sidecar import reference, start_fake_pod

NS = "fleet-ns"
SELECTOR = "llmfleet.io/fleet=demo,llmfleet.io/component=engine"
LABELS = {"llmfleet.io/fleet": "demo", "llmfleet.io/component": "engine", "kubernetes.io/service-name": "demo-engine"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a:1", {"a:1": "a:1"}),
        ("10.0.0.1:50061, 10.0.0.2:50061,", {"10.0.0.1:50061": "10.0.0.1:50061", "10.0.0.2:50061": "10.0.0.2:50061"}),
    ],
)
def test_parse_static(text, expected):
    assert parse_static(text) == expected


@pytest.mark.parametrize("bad", ["", "host", "host:port", ":80", "h:99999"])
def test_parse_static_rejects_junk(bad):
    with pytest.raises(ValueError):
        parse_static(bad)


def _slice(name: str, endpoints: list[tuple[str, str, bool]], labels: dict[str, str] = LABELS) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": labels},
        "addressType": "IPv4",
        "ports": [{"name": "sidecar", "port": 50061}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready}, "targetRef": {"kind": "Pod", "name": pod}}
            for pod, ip, ready in endpoints
        ],
    }


def test_endpoints_of_keeps_ready_non_terminating_ones():
    s = _slice("x", [("p1", "10.0.0.1", True), ("p2", "10.0.0.2", False)])
    s["endpoints"].append({"addresses": ["10.0.0.3"], "conditions": {"ready": True, "terminating": True}})
    s["endpoints"].append({"addresses": ["fd00::1"], "conditions": {}})
    assert endpoints_of(s, 7) == {"p1": "10.0.0.1:7", "[fd00::1]:7": "[fd00::1]:7"}


def _host_ip() -> str:
    """This machine's own non-loopback IPv4: the API server refuses loopback endpoint addresses."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent; this only picks the outgoing interface
        ip: str = probe.getsockname()[0]
    if ip.startswith("127."):
        pytest.fail("no non-loopback IPv4 address to give the EndpointSlice")
    return ip


async def test_endpointslice_discovery_follows_the_api(control_plane: ControlPlane, namespace: Namespace) -> None:
    ns = namespace
    ip = _host_ip()
    pod = await start_fake_pod(host=ip)
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    try:
        # Every pod's sidecar listens on the same port, as in a cluster: this fake pod's.
        port = pod.port
        ns.create_object("EndpointSlice", _slice("demo-a", [("engine-0", ip, True)]))
        other = {"llmfleet.io/fleet": "other", "llmfleet.io/component": "engine"}
        ns.create_object("EndpointSlice", _slice("other", [("x", "10.9.9.9", True)], labels=other))
        discovery = EndpointSliceDiscovery(ns.name, SELECTOR, port, api_client=api_client, watch_timeout_s=2)
        handle = await serve_dispatcher(discovery=discovery)
        try:
            d = handle.dispatcher
            await wait_for_condition(lambda: set(d.pods) == {"engine-0"}, 15, what="engine-0 discovered")
            await handle.wait_ready(1, timeout_s=10)
            async with DispatcherClient(handle.address) as c:
                g = await c.generate(prompt_ids=[1, 2], max_tokens=4, timeout=10)
            assert g.token_ids == reference([1, 2], 4)
            # A second ready endpoint appears, a not-ready one is ignored.
            ns.create_object("EndpointSlice", _slice("demo-b", [("engine-1", "10.0.0.2", True), ("engine-2", "10.0.0.3", False)]))
            await wait_for_condition(lambda: set(d.pods) == {"engine-0", "engine-1"}, 15, what="engine-1 discovered")
            assert d.pods["engine-1"].address == f"10.0.0.2:{port}"
            # engine-0 turns not ready, then its slice goes away entirely.
            not_ready = [{"addresses": [ip], "conditions": {"ready": False}, "targetRef": {"kind": "Pod", "name": "engine-0"}}]
            ns.patch("EndpointSlice", "demo-a", {"endpoints": not_ready})
            await wait_for_condition(lambda: set(d.pods) == {"engine-1"}, 15, what="engine-0 gone")
            ns.delete("EndpointSlice", "demo-b")
            await wait_for_condition(lambda: not d.pods, 15, what="all pods gone")
        finally:
            await handle.stop()
    finally:
        api_client.close()
        await pod.stop()
