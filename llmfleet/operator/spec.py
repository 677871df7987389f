"""The typed LLMFleet spec and status: the single source of truth for the CRD schema.

`crd.py` turns these pydantic models into the structural openAPIV3Schema in `crds/`, and the
operator parses every custom resource through `FleetSpec.model_validate`. Cross-field rules are
written twice on purpose: as CEL (`x-kubernetes-validations`, enforced by the API server at admission)
and as pydantic validators (so the operator still catches them, with a clear reason, when a resource
got past admission, e.g. on an API server without CEL or in the test double).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from llmfleet.core.config import SchedulingFields

GROUP = "llmfleet.io"
VERSION = "v1alpha1"
KIND = "LLMFleet"
PLURAL = "llmfleets"
SINGULAR = "llmfleet"
SHORT_NAMES = ["llmf"]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DEFAULT_GROUP = "default"


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """json_schema_extra carrying CEL rules as (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ModelSpec(_Spec):
    """Which model every engine pod serves."""

    name: str = Field(min_length=1, max_length=253, description="Model id, e.g. meta-llama/Llama-3.1-8B-Instruct.")
    uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Where to load weights from (local path, hf://, s3://...); defaults to name.",
    )
    served_name: str | None = Field(
        default=None, min_length=1, max_length=253, description="Name clients use in requests; defaults to name."
    )

    @property
    def load_from(self) -> str:
        return self.uri or self.name

    @property
    def served(self) -> str:
        return self.served_name or self.name


class EnvVar(_Spec):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = Field(default=None, max_length=32768)
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, ...), passed through as is.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class EngineSpec(_Spec):
    """How each vLLM server is started."""

    image: str = Field(default="vllm/vllm-openai:v0.11.0", min_length=1, max_length=512)
    max_model_len: int = Field(default=4096, ge=16, le=1048576, description="vLLM --max-model-len.")
    gpu_memory_utilization: float = Field(default=0.9, ge=0.05, le=0.99)
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1, le=16)
    extra_args: list[str] = Field(default_factory=list, max_length=64, description="Appended to the vLLM command.")
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    shm_size: str = Field(
        default="8Gi", pattern=QUANTITY, max_length=32,
        description="Size limit of the engine's /dev/shm (in memory; counts against the pod's memory).",
    )  # fmt: skip


class ContainerResources(_Spec):
    cpu: str | None = Field(default=None, pattern=QUANTITY, max_length=32, description="CPU request and limit.")
    memory: str | None = Field(default=None, pattern=QUANTITY, max_length=32, description="Memory request and limit.")

    def manifest(self, gpus: int = 0) -> dict[str, Any]:
        """The container's `resources`: requests equal to limits, GPUs as limits only."""
        amounts = {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v}
        limits: dict[str, Any] = dict(amounts)
        if gpus:
            limits["nvidia.com/gpu"] = gpus
        out: dict[str, Any] = {}
        if amounts:
            out["requests"] = dict(amounts)
        if limits:
            out["limits"] = limits
        return out


class EngineResources(ContainerResources):
    gpus: int = Field(default=1, ge=0, le=16, description="nvidia.com/gpu per engine pod.")


class RankerRef(_Spec):
    """A trained output-length ranker: a ConfigMap holding its artifact files, or a path in the image."""

    model_config = ConfigDict(json_schema_extra=_cel(("has(self.configMap) != has(self.path)", "set exactly one of configMap or path")))

    config_map: str | None = Field(default=None, min_length=1, max_length=253, pattern=DNS_LABEL)
    path: str | None = Field(default=None, min_length=1, max_length=1024, pattern=r"^/")

    @model_validator(mode="after")
    def _one_source(self) -> RankerRef:
        if (self.config_map is None) == (self.path is None):
            raise ValueError("ranker: set exactly one of configMap or path")
        return self


class SchedulingSpec(SchedulingFields):
    """The `scheduling` block: the shared scheduling settings, plus where the ranker comes from."""

    ranker: RankerRef | None = None


class DispatcherSpec(_Spec):
    # A dispatcher on a load balancer faces whatever network is beyond the cluster.
    model_config = ConfigDict(json_schema_extra=_cel((
        # has() guards: the server also checks the rule on the object's own default, `{}`.
        "!has(self.serviceType) || self.serviceType != 'LoadBalancer' || (has(self.authSecret) && has(self.tlsSecret))"
        " || (has(self.allowInsecure) && self.allowInsecure)",
        "serviceType LoadBalancer needs authSecret and tlsSecret (or allowInsecure: true)",
    )))  # fmt: skip

    replicas: int = Field(default=1, ge=0, le=100)
    image: str | None = Field(default=None, min_length=1, max_length=512, description="Defaults to the operator's setting.")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(default=50051, ge=1, le=65535)
    openai_port: int | None = Field(
        default=8000, ge=1, le=65535,
        description="Service port of the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions); "
        "null turns it off.",
    )  # fmt: skip
    tls_secret: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=DNS_LABEL, description="kubernetes.io/tls Secret."
    )
    auth_secret: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=DNS_LABEL, description="Secret with a `token` key."
    )
    resources: ContainerResources = Field(default_factory=ContainerResources)
    allow_insecure: bool = Field(
        default=False, description="Allow serviceType LoadBalancer without authSecret and tlsSecret."
    )

    @model_validator(mode="after")
    def _exposed_safely(self) -> DispatcherSpec:
        if self.service_type == "LoadBalancer" and not (self.auth_secret and self.tls_secret) and not self.allow_insecure:
            raise ValueError("serviceType LoadBalancer needs authSecret and tlsSecret (or allowInsecure: true)")
        return self


class SidecarSpec(_Spec):
    image: str | None = Field(default=None, min_length=1, max_length=512, description="Defaults to the operator's setting.")
    resources: ContainerResources = Field(default_factory=ContainerResources)
    tls_secret: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=DNS_LABEL,
        description="Serve the sidecar API over TLS: a Secret with tls.crt, tls.key and ca.crt (cert-manager's "
        "layout), whose certificate names <fleet>-sidecar. The dispatcher verifies it against ca.crt.",
    )  # fmt: skip


class SelectorRequirement(_Spec):
    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[Annotated[str, Field(max_length=63)]] | None = Field(default=None, max_length=64)


class LabelSelector(_Spec):
    """A meta/v1 LabelSelector; {} matches everything."""

    match_labels: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(default=None, max_length=64)
    match_expressions: list[SelectorRequirement] | None = Field(default=None, max_length=16)


class NetworkPeer(_Spec):
    """Where traffic may come from: pods matching podSelector in namespaces matching namespaceSelector."""

    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces; {} is every namespace, unset is the fleet's own."
    )
    pod_selector: LabelSelector | None = Field(default=None, description="Pods; unset is every pod.")


# Prometheus as kube-prometheus-stack and the Prometheus operator run it, in any namespace.
DEFAULT_SCRAPERS = (
    NetworkPeer(namespace_selector=LabelSelector(), pod_selector=LabelSelector(match_labels={"app.kubernetes.io/name": "prometheus"})),
)


class NetworkPolicySpec(_Spec):
    """The fleet's NetworkPolicies (they take effect where the cluster's network plugin enforces them)."""

    enabled: bool = Field(default=True, description="Render the fleet's NetworkPolicies.")
    metrics_from: list[NetworkPeer] = Field(
        default_factory=lambda: list(DEFAULT_SCRAPERS), max_length=16,
        description="Who may scrape the dispatcher's and sidecars' metrics (default: Prometheus pods, "
        "app.kubernetes.io/name=prometheus, in any namespace).",
    )  # fmt: skip
    clients_from: list[NetworkPeer] | None = Field(
        default=None, max_length=16,
        description="Who may call the dispatcher's gRPC and OpenAI ports (default: anyone; the API's own token "
        "and TLS guard it).",
    )  # fmt: skip


class Toleration(_Spec):
    key: str | None = Field(default=None, max_length=316)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class AutoscalingSpec(_Spec):
    """Bounds and target for a future autoscaler; validated now so specs stay forward compatible."""

    model_config = ConfigDict(
        json_schema_extra=_cel(("self.minReplicas <= self.maxReplicas", "autoscaling.minReplicas must be <= maxReplicas"))
    )

    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(ge=1, le=1000)
    target_in_flight_per_replica: int = Field(default=16, ge=1, le=100000)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must be <= maxReplicas")
        return self


# CEL spellings of "how many length groups" and "is k one of their names" (group_names() in CEL).
_LG = "self.scheduling.lengthGroups"
_NO_GROUPS = f"(!has(self.scheduling) || !has({_LG}))"
_GROUP_COUNT = f"({_NO_GROUPS} ? 1 : has({_LG}.ranges) ? size({_LG}.ranges) : has({_LG}.auto) ? {_LG}.auto.groups : 1)"
_IS_GROUP = (
    f"({_NO_GROUPS} ? k == '{DEFAULT_GROUP}' : has({_LG}.ranges) ? {_LG}.ranges.exists(r, r.name == k)"
    f" : has({_LG}.auto) && k.matches('^g(0|[1-9][0-9]*)$') && int(k.substring(1)) < {_LG}.auto.groups)"
)
_PINNED = "(has(self.replicasPerGroup) ? self.replicasPerGroup.map(k, self.replicasPerGroup[k]).sum() : 0)"
_PINNED_GROUPS = "(has(self.replicasPerGroup) ? size(self.replicasPerGroup) : 0)"

_SPEC_RULES = _cel(
    (
        f"!has(self.replicasPerGroup) || self.replicasPerGroup.all(k, {_IS_GROUP})",
        "replicasPerGroup must name only the fleet's length groups",
    ),
    (f"{_PINNED} <= self.replicas", "replicasPerGroup pins more pods than replicas"),
    (
        # The pods left after the pinned groups are spread over the others: each needs one, or none get any.
        f"self.replicas - {_PINNED} == 0 || {_GROUP_COUNT} - {_PINNED_GROUPS} <= 0"
        f" || self.replicas - {_PINNED} >= {_GROUP_COUNT} - {_PINNED_GROUPS}",
        "replicas must give every length group without a replicasPerGroup entry at least one pod (or be 0)",
    ),
    (
        "!has(self.scheduling) || !has(self.scheduling.sliceTokens) || !has(self.engine)"
        " || self.scheduling.sliceTokens <= self.engine.maxModelLen",
        "scheduling.sliceTokens must be <= engine.maxModelLen",
    ),
    (
        "!has(self.engine) || !has(self.resources) || self.resources.gpus == 0"
        " || self.engine.tensorParallelSize <= self.resources.gpus",
        "engine.tensorParallelSize must be <= resources.gpus",
    ),
    (
        "!has(self.autoscaling) || (self.replicas >= self.autoscaling.minReplicas"
        " && self.replicas <= self.autoscaling.maxReplicas)",
        "replicas must lie within autoscaling.minReplicas..maxReplicas",
    ),
)


class FleetSpec(_Spec):
    """The desired state of one LLMFleet."""

    model_config = ConfigDict(json_schema_extra=_SPEC_RULES)

    model: ModelSpec
    engine: EngineSpec = Field(default_factory=EngineSpec)
    resources: EngineResources = Field(default_factory=EngineResources)
    replicas: int = Field(
        default=1, ge=0, le=1000, description="Engine pods in total, spread over the length groups (scale subresource)."
    )
    replicas_per_group: dict[str, Annotated[int, Field(ge=0, le=1000)]] | None = Field(
        default=None,
        max_length=16, description="Pin the pod count of named groups; the rest of `replicas` is spread over the others."
    )
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    dispatcher: DispatcherSpec = Field(default_factory=DispatcherSpec)
    sidecar: SidecarSpec = Field(default_factory=SidecarSpec)
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(default=None, max_length=64)
    tolerations: list[Toleration] | None = Field(default=None, max_length=64)
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="A core/v1 Affinity for the engine pods, passed through as is.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    autoscaling: AutoscalingSpec | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> FleetSpec:
        if self.scheduling.slice_tokens is not None and self.scheduling.slice_tokens > self.engine.max_model_len:
            raise ValueError("scheduling.sliceTokens must be <= engine.maxModelLen")
        if self.resources.gpus and self.engine.tensor_parallel_size > self.resources.gpus:
            raise ValueError("engine.tensorParallelSize must be <= resources.gpus")
        if self.autoscaling and not self.autoscaling.min_replicas <= self.replicas <= self.autoscaling.max_replicas:
            raise ValueError("replicas must lie within autoscaling.minReplicas..maxReplicas")
        return self

    def group_names(self) -> list[str]:
        lg = self.scheduling.length_groups
        return lg.names() if lg is not None else [DEFAULT_GROUP]


class Condition(_Spec):
    type: Literal["Ready", "Progressing", "Degraded"]
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=128)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = None
    observed_generation: int | None = None


class GroupStatus(_Spec):
    name: str
    min_tokens: int | None = None
    max_tokens: int | None = None
    replicas: int = 0
    ready_replicas: int = 0


class FleetStatus(_Spec):
    """What the operator observed; written only through the status subresource."""

    observed_generation: int | None = None
    phase: Literal["Pending", "Progressing", "Ready", "Degraded"] | None = None
    conditions: list[Condition] = Field(default_factory=list)
    groups: list[GroupStatus] = Field(default_factory=list)
    replicas: int = Field(default=0, description="Engine pods wanted (scale subresource).")
    ready_replicas: int = 0
    ready: str | None = Field(default=None, description="ready/wanted engine pods, for kubectl.")
    selector: str | None = Field(default=None, description="Label selector of the engine pods (scale subresource).")
    dispatcher_endpoint: str | None = None
    openai_base_url: str | None = Field(default=None, description="Base URL for OpenAI clients inside the cluster.")
    message: str | None = Field(
        default=None, max_length=32768, description="What the fleet waits for, or why it is Degraded (child and reason)."
    )
