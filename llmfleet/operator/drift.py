"""Drift detection: has someone changed or removed a child the operator applied?

The API server adds defaults around what we applied (and other controllers add status), so a
child has drifted only when a field *we* set no longer holds our value, compared the way the
server normalises it: an empty list or map we set is dropped (`env: []` comes back absent), and
quantities come back canonical (`nvidia.com/gpu: 1` comes back as `"1"`, `1024Mi` as `1Gi`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity


def child_key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _quantity(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        quantity: Decimal = parse_quantity(value)
        return quantity
    except (ValueError, TypeError, ArithmeticError):
        return None


def _same_scalar(desired: Any, actual: Any) -> bool:
    if desired == actual:
        return True
    if isinstance(desired, str) and isinstance(actual, str) and not desired[:1].isdigit():
        return False  # ordinary strings; only quantities are written differently
    a, b = _quantity(desired), _quantity(actual)
    return a is not None and a == b


def is_subset(desired: Any, actual: Any) -> bool:
    """True when every field we set still has our value (the server may add defaults around it)."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return not desired and actual is None
        return all(is_subset(v, actual[k]) if k in actual else _empty(v) for k, v in desired.items())
    if isinstance(desired, list):
        if actual is None:
            return not desired
        return (
            isinstance(actual, list) and len(actual) == len(desired) and all(map(is_subset, desired, actual))
        )
    return _same_scalar(desired, actual)


def drifted(desired: dict[str, Any], actual: dict[str, Any] | None) -> bool:
    """Whether a child must be re-applied: it is gone, or a field we own was changed by someone else."""
    if actual is None:
        return True
    meta_ok = is_subset(desired["metadata"].get("labels", {}), actual.get("metadata", {}).get("labels", {}))
    body_ok = all(is_subset(v, actual.get(k)) for k, v in desired.items() if k not in ("metadata", "status"))
    return not (meta_ok and body_ok)
