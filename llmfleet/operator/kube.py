"""A thin, typed-enough Kubernetes client for the operator: server-side apply, get, list, delete.

It wraps the official `kubernetes` client's transport (auth, TLS, in-cluster config) and speaks
plain dicts, so the rendered manifests go to the API server unchanged. Every write uses one field
manager, which is what makes applies idempotent and lets a forced apply take back fields that a
person edited by hand.
"""

from __future__ import annotations

import json
from typing import Any

FIELD_MANAGER = "llmfleet-operator"

# kind -> (group, version, plural); the operator only ever touches these.
KINDS: dict[str, tuple[str, str, str]] = {
    "ConfigMap": ("", "v1", "configmaps"),
    "Secret": ("", "v1", "secrets"),
    "Service": ("", "v1", "services"),
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "Deployment": ("apps", "v1", "deployments"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "LLMFleet": ("llmfleet.io", "v1alpha1", "llmfleets"),
}
# Watched, diffed and deleted by the operator. Not the sidecar token Secret: the operator may only
# create Secrets (it never reads one), and the garbage collector deletes it with its fleet.
CHILD_KINDS = [k for k in KINDS if k not in ("LLMFleet", "Secret")]

# List fields whose merge key a hand edit can change, such as a Service port's number. The server
# then keeps the edited entry (owned by another field manager) beside the one we apply, and rejects
# the object for a duplicate port name, forever. Replacing the whole list puts ours back and drops
# the other manager's claim on it; after that, apply works again.
REPLACE_ON_INVALID: dict[str, tuple[str, ...]] = {"Service": ("spec", "ports")}


class KubeApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def needs_a_person(self) -> bool:
        """The server refused the object itself (invalid, forbidden by RBAC or admission): retrying
        the same write cannot help until someone changes the spec, the cluster or a hand edit.
        Everything else (conflicts, throttling, timeouts, 5xx) is worth retrying as it is."""
        return self.status in (400, 403, 422)


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """In-cluster config when running in a pod, else the given (or default) kubeconfig."""
    import kubernetes

    config = kubernetes.client.Configuration()
    try:
        if kubeconfig is None:
            kubernetes.config.load_incluster_config(client_configuration=config)
        else:
            raise kubernetes.config.ConfigException("explicit kubeconfig")
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=config)
    return kubernetes.client.ApiClient(configuration=config)


def resource_path(
    kind: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
    kinds: dict[str, tuple[str, str, str]] = KINDS,
) -> str:
    group, version, plural = kinds[kind]
    path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class KubeClient:
    """Blocking calls; kopf runs the operator's sync handlers in its thread pool."""

    def __init__(self, api_client: Any, field_manager: str = FIELD_MANAGER, timeout: float = 30.0) -> None:
        self.api = api_client
        self.field_manager = field_manager
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        _, url, headers, body, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )  # fmt: skip
        resp = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=self.timeout)
        data = resp.read()
        if not 200 <= resp.status < 300:
            try:
                status = json.loads(data)
            except ValueError:
                status = {}
            raise KubeApiError(resp.status, status.get("reason", "Error"), status.get("message", data[:200]))
        return json.loads(data) if data else None

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with force: the result is exactly our intent for every field we manage.

        A 422 on a kind listed in REPLACE_ON_INVALID is repaired once by replacing that list.
        """
        meta = obj["metadata"]
        path = resource_path(obj["kind"], meta.get("namespace"), meta["name"])
        query = [("fieldManager", self.field_manager), ("force", "true")]
        try:
            result: dict[str, Any] = self.request("PATCH", path, obj, query, content_type="application/apply-patch+yaml")
            return result
        except KubeApiError as exc:
            field = REPLACE_ON_INVALID.get(obj["kind"])
            if exc.status != 422 or field is None:
                raise
        value: Any = obj
        for part in field:
            value = value[part]
        replace = [{"op": "replace", "path": "/" + "/".join(field), "value": value}]
        self.request("PATCH", path, replace, [("fieldManager", self.field_manager)], content_type="application/json-patch+json")
        result = self.request("PATCH", path, obj, query, content_type="application/apply-patch+yaml")
        return result

    def create(self, obj: dict[str, Any]) -> bool:
        """Create `obj` if nothing of its name exists; False when something already does."""
        meta = obj["metadata"]
        try:
            self.request("POST", resource_path(obj["kind"], meta.get("namespace")), obj, [("fieldManager", self.field_manager)])
            return True
        except KubeApiError as exc:
            if exc.status == 409:
                return False
            raise

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.request("GET", resource_path(kind, namespace, name))
            return result
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        items: list[dict[str, Any]] = self.request("GET", resource_path(kind, namespace), query=query).get("items", [])
        return items

    def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        """Delete with background propagation; False when it was already gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self.request("DELETE", resource_path(kind, namespace, name), body)
            return True
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        path = resource_path(kind, namespace, name, "status")
        query = [("fieldManager", self.field_manager)]
        result: dict[str, Any] = self.request(
            "PATCH", path, {"status": status}, query, content_type="application/merge-patch+json"
        )
        return result
