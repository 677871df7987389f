"""Generate the LLMFleet CustomResourceDefinition from the typed spec in `spec.py`.

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema. This
module does that translation: `$ref`s inlined, `Optional[X]` collapsed to `X` (`nullable` where
null differs from the default), numeric exclusive
bounds turned into the v3.0 boolean form, `additionalProperties: false` dropped (the API server
prunes unknown fields instead), and list semantics (`x-kubernetes-list-type`) added. The result is
written to `crds/` and the chart's `crds/`; a test fails when those files drift from this output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from llmfleet.operator import spec as s

# Lists whose items are keyed by a field: the API server then merges them per key and rejects duplicates.
_MAP_LISTS = {"ranges": "name", "env": "name", "conditions": "type", "groups": "name"}
# Rules for models owned elsewhere (llmfleet.core.config) that have their own pydantic validators.
_EXTRA_RULES: dict[str, list[dict[str, str]]] = {
    "LengthRange": [
        {"rule": "!has(self.maxTokens) || self.maxTokens > self.minTokens", "message": "maxTokens must be > minTokens"}
    ]
}
_DROP = {"title", "additionalProperties", "$defs"}


def _convert(node: dict[str, Any], defs: dict[str, Any], field_name: str = "") -> dict[str, Any]:
    if "$ref" in node:
        ref_name = node["$ref"].rsplit("/", 1)[-1]
        target = dict(defs[ref_name])
        if ref_name in _EXTRA_RULES:
            target["x-kubernetes-validations"] = target.get("x-kubernetes-validations", []) + _EXTRA_RULES[ref_name]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs, field_name)
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"{field_name}: a union of several types cannot be a structural schema")
        merged = {**variants[0], **{k: v for k, v in node.items() if k not in ("anyOf", "default")}}
        if node.get("default") is not None:
            merged["default"] = node["default"]
            if len(variants) < len(node["anyOf"]):
                # null means something other than the default here (a guard off, a port closed).
                # Without `nullable` the server prunes an explicit null and then defaults the field,
                # so a user could never turn it off.
                merged["nullable"] = True
        return _convert(merged, defs, field_name)

    out: dict[str, Any] = {}
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out["properties"] = {name: _convert(sub, defs, name) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs, field_name)
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and not preserve:
        out["additionalProperties"] = _convert(extra, defs, field_name)
    if out.get("type") == "array" and field_name in _MAP_LISTS:
        out["x-kubernetes-list-type"] = "map"
        out["x-kubernetes-list-map-keys"] = [_MAP_LISTS[field_name]]
    elif out.get("type") == "array":
        out["x-kubernetes-list-type"] = "atomic"
    return out


def _object_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Give nested-object fields with a default factory `default: {}` so the API server fills their defaults."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = schema.get("properties", {}).get(alias)
        if prop is None:
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if field.default_factory is not None:
                prop["default"] = {}
            _object_defaults(ann, prop)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    structural = _convert(raw, raw.get("$defs", {}))
    _object_defaults(model, structural)
    return structural


def crd_manifest() -> dict[str, Any]:
    spec_schema = openapi_schema(s.FleetSpec)
    status_schema = openapi_schema(s.FleetStatus)
    root = {
        "type": "object",
        "description": "A fleet of vLLM servers with a slice-level scheduling dispatcher in front of them.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{s.PLURAL}.{s.GROUP}",
            "labels": {"app.kubernetes.io/name": "llmfleet", "app.kubernetes.io/part-of": "llmfleet"},
        },
        "spec": {
            "group": s.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": s.KIND,
                "listKind": f"{s.KIND}List",
                "plural": s.PLURAL,
                "singular": s.SINGULAR,
                "shortNames": list(s.SHORT_NAMES),
                "categories": ["llmfleet"],
            },
            "versions": [
                {
                    "name": s.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
                        {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
                        {"name": "Policy", "type": "string", "jsonPath": ".spec.scheduling.policy"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Endpoint", "type": "string", "jsonPath": ".status.dispatcherEndpoint", "priority": 1},
                        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


HEADER = "# Generated by `llmfleet operator crd` from llmfleet/operator/spec.py. Do not edit by hand.\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd_manifest(), sort_keys=False, width=120)


def repo_crd_paths(root: Path) -> list[Path]:
    """Where the generated CRD is committed: the top-level crds/ and the chart's crds/."""
    name = f"{s.PLURAL}.{s.GROUP}.yaml"
    return [root / "crds" / name, root / "charts" / "llmfleet" / "crds" / name]


def spec_schema_for_validation() -> dict[str, Any]:
    """The full openAPIV3Schema as one tree (for structural checks of the schema itself)."""
    schema: dict[str, Any] = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema
