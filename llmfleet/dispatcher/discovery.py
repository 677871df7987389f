"""Where the dispatcher finds its pods: a static list, or Kubernetes EndpointSlices.

A discovery source calls `on_change({pod_id: "host:port"})` with the full current set every time
it changes. `EndpointSliceDiscovery` lists and watches `discovery.k8s.io/v1` EndpointSlices that
match a label selector with the official `kubernetes` client (in a worker thread, since that
client is synchronous), keeps only ready, non-terminating endpoints, and addresses each one's
sidecar port.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

OnChange = Callable[[dict[str, str]], Awaitable[None]]


class Discovery(Protocol):
    async def run(self, on_change: OnChange) -> None: ...


def parse_static(pods: str) -> dict[str, str]:
    """`host:port,host:port` -> {"host:port": "host:port"}; raises ValueError on junk."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in pods.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"pod address {part!r} is not host:port")
        out[part] = part
    if not out:
        raise ValueError("--pods lists no pods")
    return out


class StaticDiscovery:
    def __init__(self, pods: dict[str, str]) -> None:
        self.pods = dict(pods)

    async def run(self, on_change: OnChange) -> None:
        await on_change(dict(self.pods))
        await asyncio.Event().wait()  # nothing ever changes; run until cancelled


def endpoints_of(slice_obj: Any, port: int) -> dict[str, str]:
    """Ready endpoints of one EndpointSlice (a dict or a kubernetes model) -> {pod: address}."""
    data = slice_obj if isinstance(slice_obj, dict) else slice_obj.to_dict()
    out: dict[str, str] = {}
    for ep in data.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        if cond.get("ready") is False or cond.get("terminating") is True:
            continue
        addresses = ep.get("addresses") or []
        if not addresses:
            continue
        ref = ep.get("target_ref") or ep.get("targetRef") or {}
        host = addresses[0]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        out[ref.get("name") or address] = address
    return out


class EndpointSliceDiscovery:
    """Watch EndpointSlices in `namespace` matching `selector`; pods are addressed on `port`."""

    def __init__(self, namespace: str, selector: str, port: int, api_client: Any | None = None, watch_timeout_s: int = 30) -> None:
        self.namespace = namespace
        self.selector = selector
        self.port = port
        self.api_client = api_client
        self.watch_timeout_s = watch_timeout_s
        self._stop = threading.Event()

    def _api(self) -> Any:
        from kubernetes import client, config

        if self.api_client is None:
            try:
                config.load_incluster_config()
                self.api_client = client.ApiClient()
            except config.ConfigException:
                self.api_client = config.new_client_from_config()
        return client.DiscoveryV1Api(self.api_client)

    async def run(self, on_change: OnChange) -> None:
        loop = asyncio.get_running_loop()
        changes: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        thread = threading.Thread(target=self._watch_thread, args=(loop, changes), daemon=True, name="endpointslice-watch")
        thread.start()
        try:
            last: dict[str, str] | None = None
            while True:
                pods = await changes.get()
                if pods != last:
                    last = pods
                    await on_change(pods)
        finally:
            self._stop.set()

    def _watch_thread(self, loop: asyncio.AbstractEventLoop, changes: asyncio.Queue[dict[str, str]]) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        api = self._api()
        slices: dict[str, dict[str, str]] = {}

        def publish() -> None:
            merged: dict[str, str] = {}
            for eps in slices.values():
                merged.update(eps)
            loop.call_soon_threadsafe(changes.put_nowait, merged)

        while not self._stop.is_set():
            try:
                listing = api.list_namespaced_endpoint_slice(self.namespace, label_selector=self.selector)
                slices = {s.metadata.name: endpoints_of(s, self.port) for s in listing.items}
                publish()
                rv = listing.metadata.resource_version
                w = watch.Watch()
                for event in w.stream(
                    api.list_namespaced_endpoint_slice,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=rv,
                    timeout_seconds=self.watch_timeout_s,
                ):
                    if self._stop.is_set():
                        w.stop()
                        break
                    obj = event["object"]
                    name = obj.metadata.name
                    if event["type"] == "DELETED":
                        slices.pop(name, None)
                    else:
                        slices[name] = endpoints_of(obj, self.port)
                    publish()
            except ApiException as exc:
                log.warning("EndpointSlice watch failed (%s); relisting", exc.status)
                self._stop.wait(1.0)
            except Exception as exc:  # connection errors: retry with a pause
                log.warning("EndpointSlice watch broke (%r); relisting", exc)
                self._stop.wait(1.0)
