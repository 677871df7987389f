"""The LLMFleet CRD: generated from the typed spec, structural, accepted by the real schema, CEL rules that bite."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from llmfleet.operator import crd

from .conftest import REPO

# Keys a structural schema may use (apiextensions.k8s.io/v1 JSONSchemaProps, minus what structural forbids).
ALLOWED_KEYS = {
    "type", "description", "properties", "items", "required", "default", "enum", "format", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
    "maxItems", "minProperties", "maxProperties", "uniqueItems", "multipleOf", "additionalProperties",
    "nullable", "example", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-validations",
    "x-kubernetes-embedded-resource",
}  # fmt: skip
# The only places where unknown fields are kept: core/v1 types passed through to pods untouched.
PRESERVE_UNKNOWN = {"spec.affinity", "spec.engine.env[].valueFrom", "metadata"}


def _schema() -> dict[str, Any]:
    return crd.spec_schema_for_validation()


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crd_files_match_the_typed_spec() -> None:
    expected = crd.crd_yaml()
    for path in crd.repo_crd_paths(REPO):
        assert path.exists(), f"{path} missing: run `llmfleet operator crd --write`"
        assert path.read_text() == expected, f"{path} drifted from llmfleet/operator/spec.py: run `llmfleet operator crd --write`"


def test_schema_is_structural() -> None:
    root = _schema()
    for path, node in _walk(root):
        assert set(node) <= ALLOWED_KEYS, f"{path}: keys not allowed in a structural schema: {set(node) - ALLOWED_KEYS}"
        preserves = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: every node needs a type"
        if preserves:
            assert path in PRESERVE_UNKNOWN, f"{path}: x-kubernetes-preserve-unknown-fields where not intended"
        assert not ("properties" in node and "additionalProperties" in node), f"{path}: properties + additionalProperties"
        assert node.get("additionalProperties", True) is not False, f"{path}: additionalProperties: false is forbidden"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), f"{path}: {bound} must be a boolean in OpenAPI v3.0"
        if node.get("type") == "array":
            assert "x-kubernetes-list-type" in node, f"{path}: lists declare their merge semantics"
            if node["x-kubernetes-list-type"] == "map":
                keys = node["x-kubernetes-list-map-keys"]
                assert set(keys) <= set(node["items"].get("required", [])), f"{path}: list-map keys must be required"
    # Every intended pass-through exists (so the allow-list above cannot silently go stale).
    found = {p for p, n in _walk(root) if n.get("x-kubernetes-preserve-unknown-fields")}
    assert found == PRESERVE_UNKNOWN - {"metadata"}


def test_crd_manifest_is_valid_for_the_real_api(kubernetes_validate_version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(crd.crd_manifest(), kubernetes_validate_version, strict=True)


def test_kubectl_conventions() -> None:
    doc = crd.crd_manifest()
    assert doc["metadata"]["name"] == "llmfleets.llmfleet.io"
    assert doc["spec"]["scope"] == "Namespaced"
    assert doc["spec"]["names"]["shortNames"] == ["llmf"]
    version = doc["spec"]["versions"][0]
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Model", "Ready", "Policy", "Phase", "Age"]
    scale = version["subresources"]["scale"]
    assert scale == {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                     "labelSelectorPath": ".status.selector"}  # fmt: skip
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"observedGeneration", "phase", "conditions", "groups", "dispatcherEndpoint", "replicas", "selector", "message"} <= set(status)


def test_cel_rules_cover_the_cross_field_checks() -> None:
    """Admission itself is tested against the real API server (test_real_apiserver.py)."""
    rules = [r for _, n in _walk(_schema()) for r in n.get("x-kubernetes-validations", [])]
    messages = {r["message"] for r in rules}
    assert "autoscaling.minReplicas must be <= maxReplicas" in messages
    assert "scheduling.sliceTokens must be <= engine.maxModelLen" in messages
    assert "set exactly one of ranges or auto" in messages
    assert "replicasPerGroup must name only the fleet's length groups" in messages


def test_cli_prints_the_same_crd(capsys: pytest.CaptureFixture[str]) -> None:
    from llmfleet.cli import main

    assert main(["operator", "crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == crd.crd_manifest()
