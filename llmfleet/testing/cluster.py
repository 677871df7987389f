"""A real Kubernetes control plane for tests and benchmarks, as controller-runtime's envtest does.

`ControlPlane` starts the kube-apiserver, kube-controller-manager and etcd from `../shared/k8s`
(or `LLMFLEET_K8S_DIR`) on free local ports. `Namespace` is a small client for one namespace,
speaking plain dicts. There is no kubelet on such a plane, so Pods stay Pending; `FakeKubelet`
stands in for the one thing tests need from it: it marks Pods Running and Ready (with an IP), so
the real ReplicaSet and Deployment controllers report rollouts exactly as they would on a node.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmfleet.core.clock import wait_for_condition_sync
from llmfleet.engine.process import free_port
from llmfleet.operator.kube import KINDS, KubeApiError, KubeClient, load_api_client, resource_path

REPO = Path(__file__).resolve().parents[2]
KUBECTL = REPO / ".tools" / "bin" / "kubectl"  # installed by scripts/setup.sh

# kind -> (group, version, plural) for what tests touch beyond the operator's own kinds.
TEST_KINDS: dict[str, tuple[str, str, str]] = {
    **KINDS,
    "Namespace": ("", "v1", "namespaces"),
    "Pod": ("", "v1", "pods"),
    "Event": ("", "v1", "events"),
    "ResourceQuota": ("", "v1", "resourcequotas"),
    "ReplicaSet": ("apps", "v1", "replicasets"),
    "EndpointSlice": ("discovery.k8s.io", "v1", "endpointslices"),
}


def k8s_dir() -> Path:
    """Where the control plane's binaries and script live: LLMFLEET_K8S_DIR, else ../shared/k8s."""
    return Path(os.environ.get("LLMFLEET_K8S_DIR") or REPO.parent / "shared" / "k8s")


@dataclass
class ControlPlane:
    """One running control plane; `stop()` (or the context manager) shuts it down by recorded PID."""

    folder: Path
    env: dict[str, str]
    script: Path

    @property
    def kubeconfig(self) -> Path:
        return self.folder / "kubeconfig"

    @classmethod
    def start(cls, folder: Path, controller_manager: bool = True, directory: Path | None = None) -> ControlPlane:
        script = (directory or k8s_dir()) / "control-plane"
        if not script.exists():
            raise FileNotFoundError(f"no Kubernetes control plane at {script.parent} (set LLMFLEET_K8S_DIR)")
        env = {**os.environ, "KCP_API_PORT": str(free_port()), "KCP_KCM_PORT": str(free_port())}
        env["KCP_ETCD_PORT"] = str(free_port())
        args = [str(script), "up", str(folder)] + ([] if controller_manager else ["--no-controller-manager"])
        up = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
        plane = cls(folder=folder, env=env, script=script)
        if up.returncode != 0:
            plane.stop()
            raise RuntimeError(f"the control plane did not start:\n{up.stdout}\n{up.stderr}")
        return plane

    def pids(self) -> dict[str, int]:
        """The PID of each running component (etcd, kube-apiserver, kube-controller-manager)."""
        out = {}
        for f in (self.folder / "run").glob("*.pid"):
            try:
                out[f.stem] = int(f.read_text().strip())
            except (OSError, ValueError):
                continue
        return out

    def stop(self) -> None:
        subprocess.run([str(self.script), "down", str(self.folder)], env=self.env, capture_output=True, timeout=60)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """The real kubectl against this plane; its stderr becomes the error when it fails."""
        out = subprocess.run([str(KUBECTL), "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        if out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def client(self) -> KubeClient:
        return KubeClient(load_api_client(str(self.kubeconfig), None))

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def install_crd(kube: KubeClient, crd: dict[str, Any], timeout: float = 60.0) -> None:
    """Create a CRD and wait until the server serves it (Established), as `kubectl wait` would."""
    kube.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"

    def established() -> bool:
        conditions = (kube.request("GET", path).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for_condition_sync(established, timeout, f"CRD {crd['metadata']['name']} Established")


def path_of(kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    return resource_path(kind, namespace, name, subresource, TEST_KINDS)


@dataclass
class Namespace:
    """Plain-dict reads and writes in one namespace, through the same transport as the operator."""

    kube: KubeClient
    name: str

    @classmethod
    def create(cls, kube: KubeClient, name: str, labels: dict[str, str] | None = None) -> Namespace:
        kube.request("POST", path_of("Namespace", None), {"metadata": {"name": name, "labels": labels or {}}})
        return cls(kube, name)

    def label(self, labels: dict[str, str]) -> None:
        """Label the namespace itself (Pod Security admission reads its level from these)."""
        patch = {"metadata": {"labels": labels}}
        self.kube.request("PATCH", path_of("Namespace", None, self.name), patch, None, "application/merge-patch+json")

    def clear(self, kind: str) -> None:
        """Delete every object of `kind`, finalizers and all (no operator may be left to remove them)."""
        for obj in self.objects(kind):
            name = obj["metadata"]["name"]
            if obj["metadata"].get("finalizers"):
                self.patch(kind, name, {"metadata": {"finalizers": None}})
            self.delete(kind, name)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.kube.request("GET", path_of(kind, self.name, name))
            return obj
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def objects(self, kind: str, labels: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", labels)] if labels else []
        items: list[dict[str, Any]] = self.kube.request("GET", path_of(kind, self.name), query=query)["items"]
        return items

    def create_object(self, kind: str, obj: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        group, version, _ = TEST_KINDS[kind]
        body = {"apiVersion": f"{group}/{version}" if group else version, "kind": kind, **obj}
        body["metadata"] = {**obj.get("metadata", {}), "namespace": self.name}
        # Strict, as kubectl asks by default: unknown fields are refused, not silently pruned.
        query = [("fieldValidation", "Strict")] + ([("dryRun", "All")] if dry_run else [])
        created: dict[str, Any] = self.kube.request("POST", path_of(kind, self.name), body, query)
        return created

    def patch(self, kind: str, name: str, patch: dict[str, Any] | list[Any], subresource: str | None = None) -> dict[str, Any]:
        """A merge patch (a dict) or a JSON patch (a list of operations), as `kubectl patch` sends."""
        ctype = "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        query = [("fieldManager", "kubectl-patch")]
        result: dict[str, Any] = self.kube.request("PATCH", path_of(kind, self.name, name, subresource), patch, query, ctype)
        return result

    def delete(self, kind: str, name: str) -> bool:
        try:
            self.kube.request("DELETE", path_of(kind, self.name, name), {"propagationPolicy": "Background"})
            return True
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise


@dataclass
class FakeKubelet:
    """Marks every Pod in the given namespaces Running and Ready, as a kubelet would once its
    containers pass their readiness probes. `paused` holds it off (Pods stay Pending)."""

    kube: KubeClient
    namespaces: list[str]
    interval: float = 0.1
    paused: bool = False
    errors: list[str] = field(default_factory=list)  # what went wrong, for a test or benchmark to report
    _ips: Iterator[int] = field(default_factory=lambda: itertools.count(1))  # each Pod its own IP, as a CNI would
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> FakeKubelet:
        self._thread = threading.Thread(target=self._run, name="fake-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.paused:
                continue
            for ns in list(self.namespaces):
                try:
                    self.mark_ready(ns)
                except Exception as exc:  # a Pod deleted under us, a timeout: a kubelet keeps going
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def mark_ready(self, namespace: str) -> int:
        # Only Pods not yet marked: a field selector keeps each tick cheap with hundreds of Pods.
        pods = self.kube.request("GET", path_of("Pod", namespace), query=[("fieldSelector", "status.phase=Pending")])["items"]
        marked = 0
        for pod in pods:
            conditions = (pod.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) or pod["metadata"].get("deletionTimestamp"):
                continue
            now = pod["metadata"]["creationTimestamp"]
            ready = [{"type": t, "status": "True", "lastTransitionTime": now} for t in ("Ready", "ContainersReady")]
            n = next(self._ips)
            ip = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
            status = {"phase": "Running", "conditions": ready, "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now}
            path = path_of("Pod", namespace, pod["metadata"]["name"], "status")
            try:
                self.kube.request("PATCH", path, {"status": status}, None, "application/merge-patch+json")
                marked += 1
            except KubeApiError as exc:  # one Pod (deleted under us, say) never stops the others
                self.errors.append(str(exc))
        return marked
