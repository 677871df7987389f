"""Pod discovery: the static list, and EndpointSlices watched through the Kubernetes API test
double with the official `kubernetes` client (config loaded explicitly from the emulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from llmfleet.client import DispatcherClient
from llmfleet.core.clock import wait_for_condition
from llmfleet.dispatcher import serve_dispatcher
from llmfleet.dispatcher.discovery import EndpointSliceDiscovery, endpoints_of, parse_static
from llmfleet.testing.kube_emulator import KubeEmulator
from tests.dispatcher.fake_sidecar import reference

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


async def test_endpointslice_discovery_follows_the_api(tmp_path: Path, fake_pods):
    async with KubeEmulator() as emu, kmock.Server(emu):
        emu.create_object("namespaces", None, {"metadata": {"name": NS}})
        path = tmp_path / "kubeconfig.yaml"
        path.write_text(yaml.safe_dump(emu.kubeconfig()))
        from kubernetes import config

        api_client = config.new_client_from_config(config_file=str(path))
        # Every pod's sidecar listens on the same port (as in a cluster): the first fake pod's.
        port = fake_pods[0].port
        emu.create_object("endpointslices", NS, _slice("demo-a", [("engine-0", "127.0.0.1", True)]), group="discovery.k8s.io")
        emu.create_object(
            "endpointslices", NS,
            _slice("other", [("x", "10.9.9.9", True)], labels={"llmfleet.io/fleet": "other", "llmfleet.io/component": "engine"}),
            group="discovery.k8s.io",
        )  # fmt: skip
        discovery = EndpointSliceDiscovery(NS, SELECTOR, port, api_client=api_client, watch_timeout_s=2)
        handle = await serve_dispatcher(discovery=discovery)
        try:
            d = handle.dispatcher
            await wait_for_condition(lambda: set(d.pods) == {"engine-0"}, 15, what="engine-0 discovered")
            await handle.wait_ready(1, timeout_s=10)
            async with DispatcherClient(handle.address) as c:
                g = await c.generate(prompt_ids=[1, 2], max_tokens=4, timeout=10)
            assert g.token_ids == reference([1, 2], 4)
            # A second ready endpoint appears, a not-ready one is ignored.
            emu.create_object(
                "endpointslices", NS,
                _slice("demo-b", [("engine-1", "127.0.0.2", True), ("engine-2", "127.0.0.3", False)]),
                group="discovery.k8s.io",
            )  # fmt: skip
            await wait_for_condition(lambda: set(d.pods) == {"engine-0", "engine-1"}, 15, what="engine-1 discovered")
            assert d.pods["engine-1"].address == f"127.0.0.2:{port}"
            # engine-0 turns not ready, then its slice goes away entirely.
            emu.patch_object(
                "endpointslices", NS, "demo-a",
                {"endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": False}, "targetRef": {"name": "engine-0"}}]},
                group="discovery.k8s.io",
            )  # fmt: skip
            await wait_for_condition(lambda: set(d.pods) == {"engine-1"}, 15, what="engine-0 gone")
            emu.delete_object("endpointslices", NS, "demo-b", group="discovery.k8s.io")
            await wait_for_condition(lambda: not d.pods, 15, what="all pods gone")
        finally:
            await handle.stop()
            api_client.close()
