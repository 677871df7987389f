"""A Kubernetes API test double: kmock's KubernetesEmulator with the API contract gaps filled.

kmock 0.8 serves discovery and a dict store, but (see shared FIELD-NOTES) sets no resourceVersion,
uid, creationTimestamp or generation, ignores selectors and watch resourceVersions, has no PUT,
no server-side apply, no /status split and no 409 on stale writes. This subclass keeps kmock's HTTP
server, request parsing, discovery and error format, and serves object requests itself:

- metadata: uid, resourceVersion (one global counter), creationTimestamp, generation (bumped when
  anything outside metadata/status changes), namespace from the URL, generateName;
- list/watch with labelSelector and fieldSelector (metadata.name/namespace); watches resume from
  `?resourceVersion=` out of a bounded event history and answer 410 Gone once it was compacted;
  `timeoutSeconds` ends a watch;
- PATCH as merge-patch, JSON patch (with `test`) and server-side apply (simplified, see
  kube_ops.apply_ssa); strategic-merge-patch answers 415 rather than pretending; PUT replaces;
  a stale metadata.resourceVersion answers 409; a no-op write changes nothing and sends no event;
- `/status` kept apart from the main object for resources with a status subresource; `/scale`
  for registered custom resources; custom resources are defaulted, pruned and validated against
  their openAPIV3Schema (CEL rules are not evaluated; the operator re-checks them itself);
- finalizers and deletionTimestamp as the API server does.

What it does not do, unless asked: garbage collection of ownerReferences (`gc=True` turns on a
background cascade like the GC controller's), and workload controllers (`rollout_delay=` makes a
stand-in for the Deployment controller mark each rolled-out generation available after a delay).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import itertools
import json
import re
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonschema
import kmock
import yaml

from llmfleet.testing import kube_ops

_NAMESPACES = re.compile(r"/api/v1/namespaces(?:/([^/]+))?/?")
RKey = tuple[str, str, str]  # group, version, plural
OKey = tuple[str, str, str, str | None, str]  # group, version, plural, namespace, name


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _err(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    gc: bool = False
    rollout_delay: float | None = None
    history: int = 5000
    # False simulates lost watch events (a partition): changes are stored and replayable, not pushed.
    deliver_events: bool = True

    _store: dict[OKey, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _applied: dict[tuple[OKey, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    _log: dict[RKey, collections.deque] = attrs.field(factory=dict, init=False)
    _compacted: dict[RKey, int] = attrs.field(factory=dict, init=False)
    _watchers: dict[RKey, set[asyncio.Queue]] = attrs.field(factory=lambda: collections.defaultdict(set), init=False)
    _schemas: dict[RKey, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _scale: dict[RKey, dict[str, str]] = attrs.field(factory=dict, init=False)
    _rv: itertools.count = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    writes: collections.Counter = attrs.field(factory=collections.Counter, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated importlib call
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()

    # ----- set-up -----------------------------------------------------------------------------

    def register_crd(self, crd: dict[str, Any]) -> None:
        """Serve a CustomResourceDefinition: discovery, schema, status and scale subresources."""
        spec = crd["spec"]
        for version in spec["versions"]:
            rkey = (spec["group"], version["name"], spec["names"]["plural"])
            subresources = version.get("subresources", {})
            self.resources[kmock.resource(*rkey)] = kmock.ResourceInfo(
                kind=spec["names"]["kind"],
                singular=spec["names"].get("singular"),
                namespaced=spec["scope"] == "Namespaced",
                shortnames=spec["names"].get("shortNames", []),
                verbs=["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
                subresources=list(subresources),
            )
            self._schemas[rkey] = version["schema"]["openAPIV3Schema"]
            if "scale" in subresources:
                self._scale[rkey] = subresources["scale"]

    def kubeconfig(self) -> dict[str, Any]:
        server = str(self.url).rstrip("/")
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": server}}],
            "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator"}}],
            "current-context": "emulator",
        }

    # ----- direct access for tests (same code paths as HTTP, so watchers see every change) -------

    def get_object(self, plural: str, namespace: str | None, name: str, group: str = "", version: str = "v1") -> dict | None:
        obj = self._store.get((group, version, plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, plural: str, namespace: str | None = None, group: str = "", version: str = "v1",
             labels: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
        match = kube_ops.label_matcher(labels)
        return [
            copy.deepcopy(o) for (g, v, p, ns, _), o in self._store.items()
            if (g, v, p) == (group, version, plural) and (namespace is None or ns == namespace)
            and match(o.get("metadata", {}).get("labels", {}))
        ]  # fmt: skip

    def create_object(self, plural: str, namespace: str | None, obj: dict, group: str = "", version: str = "v1") -> dict:
        return self._create((group, version, plural), namespace, copy.deepcopy(obj))

    def patch_object(self, plural: str, namespace: str | None, name: str, patch: dict, group: str = "", version: str = "v1",
              subresource: str | None = None) -> dict:  # fmt: skip
        key = (group, version, plural, namespace, name)
        live = self._require(key)
        return self._update(key, kube_ops.merge_patch(live, patch), subresource)

    def delete_object(self, plural: str, namespace: str | None, name: str, group: str = "", version: str = "v1") -> dict:
        return self._delete((group, version, plural, namespace, name))

    # ----- state transitions -------------------------------------------------------------------

    def _require(self, key: OKey) -> dict[str, Any]:
        if key not in self._store:
            raise _err(404, "NotFound", f'{key[2]} "{key[4]}" not found')
        return self._store[key]

    def _info(self, rkey: RKey) -> Any:
        res = kmock.resource(*rkey)
        if res not in self.resources:
            raise _err(404, "NotFound", f"the server could not find the requested resource {rkey}")
        return self.resources[res]

    def _commit(self, key: OKey, obj: dict[str, Any] | None, event: str, old: dict[str, Any] | None = None) -> None:
        rkey = key[:3]
        rv = next(self._rv)
        self._last_rv = rv
        self.writes[(rkey[2], event)] += 1
        if obj is not None:
            obj["metadata"]["resourceVersion"] = str(rv)
            self._store[key] = obj
            snapshot = copy.deepcopy(obj)
        else:
            self._store.pop(key, None)
            snapshot = copy.deepcopy(old or {})
            snapshot.setdefault("metadata", {})["resourceVersion"] = str(rv)
        log = self._log.setdefault(rkey, collections.deque())
        log.append((rv, event, snapshot))
        while len(log) > self.history:
            self._compacted[rkey] = log.popleft()[0]
        if self.deliver_events:
            for queue in list(self._watchers[rkey]):
                queue.put_nowait((rv, event, snapshot))

    def _validate(self, rkey: RKey, obj: dict[str, Any]) -> None:
        schema = self._schemas.get(rkey)
        if schema is None:
            return
        kube_ops.apply_defaults(schema, obj)
        metadata = obj.pop("metadata")
        kube_ops.prune(schema, obj)
        obj["metadata"] = metadata
        errors = sorted(jsonschema.Draft4Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
        if errors:
            where = ".".join(str(p) for p in errors[0].path) or "<root>"
            raise _err(422, "Invalid", f"{obj.get('kind')} {metadata.get('name')!r} is invalid: {where}: {errors[0].message}")

    def _create(self, rkey: RKey, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        info = self._info(rkey)
        meta = obj.setdefault("metadata", {})
        if namespace and meta.get("namespace") not in (None, namespace):
            raise _err(400, "BadRequest", "the namespace of the object does not match the namespace of the URL")
        if info.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise _err(422, "Invalid", "metadata.name: Required value")
        key = (*rkey, meta.get("namespace"), meta["name"])
        if key in self._store:
            raise _err(409, "AlreadyExists", f'{rkey[2]} "{meta["name"]}" already exists')
        if "status" in info.subresources:
            obj.pop("status", None)
        self._validate(rkey, obj)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        meta.pop("deletionTimestamp", None)
        self._commit(key, obj, "ADDED")
        self._after_write(key)
        return copy.deepcopy(obj)

    def _update(self, key: OKey, new: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        live = self._store[key]
        info = self._info(key[:3])
        new = copy.deepcopy(new)
        want_rv = new.get("metadata", {}).get("resourceVersion")
        if want_rv and want_rv != live["metadata"]["resourceVersion"]:
            raise _err(409, "Conflict", "the object has been modified; please apply your changes to the latest version")
        if subresource == "status":
            new = {**copy.deepcopy(live), "status": new.get("status")}
        elif "status" in info.subresources:
            new["status"] = copy.deepcopy(live.get("status"))
        if new.get("status") is None:
            new.pop("status", None)
        system = {k: live["metadata"][k] for k in ("uid", "creationTimestamp", "generation", "namespace", "name") if k in live["metadata"]}
        if "deletionTimestamp" in live["metadata"]:
            system["deletionTimestamp"] = live["metadata"]["deletionTimestamp"]
        new.setdefault("metadata", {}).update(system)
        new["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        self._validate(key[:3], new)
        if new == live:
            return copy.deepcopy(live)  # a no-op write: no new resourceVersion, no event
        body = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
        if body(new) != body(live):
            new["metadata"]["generation"] = int(live["metadata"].get("generation", 1)) + 1
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._commit(key, None, "DELETED", old=new)
            self._collect(new)
            return new
        self._commit(key, new, "MODIFIED")
        self._after_write(key)
        return copy.deepcopy(new)

    def _delete(self, key: OKey) -> dict[str, Any]:
        live = self._require(key)
        if live["metadata"].get("finalizers"):
            if not live["metadata"].get("deletionTimestamp"):
                marked = copy.deepcopy(live)
                marked["metadata"]["deletionTimestamp"] = _now()
                self._commit(key, marked, "MODIFIED")
            return copy.deepcopy(self._store[key])
        self._commit(key, None, "DELETED", old=live)
        self._collect(live)
        return live

    def _collect(self, owner: dict[str, Any]) -> None:
        if not self.gc:
            return
        uid = owner["metadata"].get("uid")
        for key, obj in list(self._store.items()):
            refs = obj.get("metadata", {}).get("ownerReferences", [])
            if any(r.get("uid") == uid for r in refs) and key in self._store:
                self._delete(key)

    def _after_write(self, key: OKey) -> None:
        """The Deployment-controller stand-in: a new generation becomes available after a delay."""
        if self.rollout_delay is None or key[:3] != ("apps", "v1", "deployments"):
            return
        generation = self._store[key]["metadata"]["generation"]
        status = self._store[key].get("status") or {}
        if status.get("observedGeneration") == generation:
            return
        asyncio.get_running_loop().call_later(self.rollout_delay, self._roll_out, key, generation)

    def _roll_out(self, key: OKey, generation: int) -> None:
        live = self._store.get(key)
        if live is None or live["metadata"]["generation"] != generation:
            return
        n = int(live.get("spec", {}).get("replicas", 1))
        status = {"observedGeneration": generation, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
                  "availableReplicas": n}  # fmt: skip
        self._update(key, {**live, "status": status}, subresource="status")

    # ----- HTTP --------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's URL parser reads /api/v1/namespaces[/NAME] as a namespace prefix and fails;
        # route those paths to the namespaces resource ourselves.
        m = _NAMESPACES.fullmatch(raw_request.path)
        if m is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        request = kmock.Request(
            method=raw_request.method, url=raw_request.rel_url, params=dict(raw_request.query),
            headers=dict(raw_request.headers), body=body, text=body.decode() if body else "",
            data=json.loads(body) if body else None, resource=kmock.resource("", "v1", "namespaces"),
            namespace=None, name=m.group(1), raw_request=raw_request,
        )  # fmt: skip
        try:
            return await self._handle(request)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or res.plural is None or res.group is None or res.version is None:
            return await kmock.KubernetesScaffold._handle(self, request)
        rkey = (res.group, res.version, res.plural)
        key = (*rkey, request.namespace, request.name or "")
        method = request.method.value
        params = dict(request.params)
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(request, rkey, params)
        if method == "GET" and request.name is None:
            return self._json(self._list(rkey, request.namespace, params))
        if request.subresource == "scale" and rkey in self._scale:
            return self._json(self._scale_op(key, method, request))
        if request.subresource not in (None, "status"):
            raise _err(404, "NotFound", f"subresource {request.subresource!r} is not served by the emulator")
        if method == "GET":
            return self._json(copy.deepcopy(self._require(key)))
        if method == "POST" and request.name is None:
            return self._json(self._create(rkey, request.namespace, self._body(request)), status=201)
        if method == "DELETE" and request.name:
            return self._json(self._delete(key))
        if method == "PUT" and request.name:
            self._require(key)
            return self._json(self._update(key, self._body(request), request.subresource))
        if method == "PATCH" and request.name:
            return self._json(self._patch(key, request, params))
        raise _err(405, "MethodNotAllowed", f"{method} is not supported here")

    def _body(self, request: kmock.Request) -> Any:
        if request.data is not None and not isinstance(request.data, (str, bytes)):
            return copy.deepcopy(request.data)
        return yaml.safe_load(request.text or "null")

    def _patch(self, key: OKey, request: kmock.Request, params: dict[str, str]) -> dict[str, Any]:
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        body = self._body(request)
        if ctype == "application/apply-patch+yaml":
            manager = params.get("fieldManager")
            if not manager:
                raise _err(400, "BadRequest", "fieldManager is required for apply requests")
            previous = self._applied.get((key, manager))
            self._applied[(key, manager)] = copy.deepcopy(body)
            if key not in self._store:
                return self._create(key[:3], key[3], body)
            return self._update(key, kube_ops.apply_ssa(self._store[key], previous, body), request.subresource)
        live = self._require(key)
        if ctype == "application/merge-patch+json":
            return self._update(key, kube_ops.merge_patch(live, body), request.subresource)
        if ctype == "application/json-patch+json":
            try:
                patched = kube_ops.json_patch(live, body)
            except (kube_ops.JsonPatchError, KeyError, IndexError, ValueError) as exc:
                raise _err(422, "Invalid", f"the JSON patch could not be applied: {exc}") from exc
            return self._update(key, patched, request.subresource)
        raise _err(415, "UnsupportedMediaType", f"the emulator does not implement {ctype!r} patches")

    def _scale_op(self, key: OKey, method: str, request: kmock.Request) -> dict[str, Any]:
        paths = self._scale[key[:3]]
        spec_field = paths["specReplicasPath"].split(".")[-1]
        live = self._require(key)
        if method in ("PATCH", "PUT"):
            body = self._body(request)
            replicas = (body.get("spec") or {}).get("replicas")
            if replicas is not None:
                live = self._update(key, kube_ops.merge_patch(live, {"spec": {spec_field: replicas}}))
        status = live.get("status") or {}
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: live["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion") if k in live["metadata"]},
            "spec": {"replicas": live.get("spec", {}).get(spec_field, 0)},
            "status": {
                "replicas": status.get(paths["statusReplicasPath"].split(".")[-1], 0),
                "selector": status.get(paths.get("labelSelectorPath", ".x").split(".")[-1], ""),
            },
        }

    def _matchers(self, params: dict[str, str]):
        try:
            return kube_ops.label_matcher(params.get("labelSelector")), kube_ops.field_matcher(params.get("fieldSelector"))
        except kube_ops.SelectorError as exc:
            raise _err(400, "BadRequest", str(exc)) from exc

    def _visible(self, rkey: RKey, namespace: str | None, params: dict[str, str]):
        by_label, by_field = self._matchers(params)
        return lambda k, o: (
            k[:3] == rkey and (namespace is None or k[3] == namespace)
            and by_label(o.get("metadata", {}).get("labels") or {}) and by_field(o)
        )  # fmt: skip

    def _list(self, rkey: RKey, namespace: str | None, params: dict[str, str]) -> dict[str, Any]:
        info = self._info(rkey)
        visible = self._visible(rkey, namespace, params)
        items = [copy.deepcopy(o) for k, o in self._store.items() if visible(k, o)]
        version = f"{rkey[0]}/{rkey[1]}" if rkey[0] else rkey[1]
        return {"apiVersion": version, "kind": f"{info.kind}List", "metadata": {"resourceVersion": str(self._last_rv)},
                "items": items}  # fmt: skip

    async def _watch(self, request: kmock.Request, rkey: RKey, params: dict[str, str]) -> aiohttp.web.StreamResponse:
        self._info(rkey)
        visible = self._visible(rkey, request.namespace, params)
        since = params.get("resourceVersion") or "0"
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers[rkey].add(queue)  # before the replay, so no event falls in between
        try:
            if since == "0":
                backlog = [(self._last_rv, "ADDED", copy.deepcopy(o)) for k, o in self._store.items() if visible(k, o)]
            elif int(since) < self._compacted.get(rkey, 0):
                backlog = [(0, "ERROR", {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                         "reason": "Expired", "message": f"too old resource version: {since}"})]  # fmt: skip
            else:
                backlog = [e for e in self._log.get(rkey, ()) if e[0] > int(since)]
            last = self._last_rv if since == "0" else int(since)
            response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
            assert request._raw_request is not None, "kmock passes the aiohttp request along"
            await response.prepare(request._raw_request)
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            for _rv, event, obj in backlog:
                if event == "ERROR" or visible((*rkey, obj["metadata"].get("namespace"), ""), obj):
                    await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")
                if event == "ERROR":
                    return response
            while True:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    rv, event, obj = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                if rv > last and visible((*rkey, obj["metadata"].get("namespace"), ""), obj):
                    await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")
            await response.write_eof()
            return response
        finally:
            self._watchers[rkey].discard(queue)

    @staticmethod
    def _json(data: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.json_response(data, status=status)


@contextlib.asynccontextmanager
async def running_emulator(directory: Path, **options: Any) -> AsyncIterator[tuple[KubeEmulator, Path]]:
    """Serve an emulator on a local port and write a kubeconfig for it; yields (emulator, kubeconfig path).

    Point `kubernetes.config.load_kube_config(config_file=...)` or `llmfleet operator run --kubeconfig`
    at the path. Register custom resources with `register_crd` before clients start watching them.
    """
    async with KubeEmulator(**options) as emu, kmock.Server(emu):
        path = directory / "kubeconfig.yaml"
        path.write_text(yaml.safe_dump(emu.kubeconfig()))
        yield emu, path
