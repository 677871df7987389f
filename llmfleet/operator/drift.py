"""Drift detection: has someone changed or removed a child the operator applied?

The API server adds defaults around what we applied (and other controllers add status), so a
child has drifted only when a field *we* set no longer holds our value.
"""

from __future__ import annotations

from typing import Any


def child_key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def is_subset(desired: Any, actual: Any) -> bool:
    """True when every field we set still has our value (the server may add defaults around it)."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(k in actual and is_subset(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(actual, list) and len(actual) == len(desired) and all(map(is_subset, desired, actual))
        )
    return bool(desired == actual)


def drifted(desired: dict[str, Any], actual: dict[str, Any] | None) -> bool:
    """Whether a child must be re-applied: it is gone, or a field we own was changed by someone else."""
    if actual is None:
        return True
    meta_ok = is_subset(desired["metadata"].get("labels", {}), actual.get("metadata", {}).get("labels", {}))
    body_ok = all(is_subset(v, actual.get(k)) for k, v in desired.items() if k not in ("metadata", "status"))
    return not (meta_ok and body_ok)
