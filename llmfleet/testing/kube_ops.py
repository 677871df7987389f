"""Pure helpers for the Kubernetes API test double: label/field selectors and the patch formats.

These follow the API server's documented semantics (RFC 7386 merge patch, RFC 6902 JSON patch,
label selector grammar); `kube_emulator.py` uses them. A simplified server-side apply is here too:
see `apply_ssa` for exactly how it differs from the real one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

_SET_EXPR = re.compile(r"^\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ_EXPR = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")


class SelectorError(ValueError):
    pass


def _split_requirements(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


Labels = dict[str, str]


def _requirement(req: str) -> Callable[[Labels], bool]:
    eq = _EQ_EXPR.match(req)
    if eq:
        key, op, value = eq.groups()
        if op == "!=":
            return lambda lb: lb.get(key) != value
        return lambda lb: lb.get(key) == value
    st = _SET_EXPR.match(req)
    if not st:
        raise SelectorError(f"unable to parse requirement {req!r}")
    negate, key, op, values = st.groups()
    if op:
        options = {v.strip() for v in values.split(",") if v.strip()}
        if op == "in":
            return lambda lb: lb.get(key) in options
        return lambda lb: lb.get(key) not in options
    if negate:
        return lambda lb: key not in lb
    return lambda lb: key in lb


def label_matcher(selector: str | None) -> Callable[[Labels], bool]:
    """Compile a label selector (`a=b,c!=d,e in (f,g),!h`) to a predicate over a labels dict."""
    checks = [_requirement(req) for req in _split_requirements(selector or "")]
    return lambda labels: all(check(labels or {}) for check in checks)


def _field_requirement(req: str) -> Callable[[dict[str, Any]], bool]:
    m = _EQ_EXPR.match(req)
    if not m or m.group(1) not in ("metadata.name", "metadata.namespace"):
        raise SelectorError(f"field selector {req!r} is not supported")
    path, op, value = m.groups()
    field = path.split(".", 1)[1]
    if op == "!=":
        return lambda o: o.get("metadata", {}).get(field) != value
    return lambda o: o.get("metadata", {}).get(field) == value


def field_matcher(selector: str | None) -> Callable[[dict[str, Any]], bool]:
    """Field selectors the API server supports on every resource: metadata.name and metadata.namespace."""
    checks = [_field_requirement(req) for req in selector.split(",")] if selector else []
    return lambda obj: all(check(obj) for check in checks)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, null deletes, everything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class JsonPatchError(ValueError):
    pass


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise JsonPatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise JsonPatchError(f"path /{'/'.join(parts)} does not exist")
    return doc


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 (add, remove, replace, test). A failed `test` raises, as the API server answers 422."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op["path"])
        kind = op["op"]
        if kind == "test":
            try:
                found = _walk(doc, parts)
            except (JsonPatchError, IndexError, ValueError):
                found = object()
            if found != op.get("value"):
                raise JsonPatchError(f"test failed at {op['path']}")
            continue
        parent = _walk(doc, parts[:-1])
        last = parts[-1]
        if kind in ("add", "replace"):
            value = copy.deepcopy(op["value"])
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, value)
                else:
                    parent[index] = value
            else:
                if kind == "replace" and last not in parent:
                    raise JsonPatchError(f"path {op['path']} does not exist")
                parent[last] = value
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            elif last in parent:
                del parent[last]
            else:
                raise JsonPatchError(f"path {op['path']} does not exist")
        else:
            raise JsonPatchError(f"unsupported op {kind!r}")
    return doc


def _remove_fields(target: Any, previous: Any, current: Any) -> Any:
    """Drop from `target` the fields that the manager set before (`previous`) but no longer sets."""
    if not isinstance(target, dict) or not isinstance(previous, dict):
        return target
    result = dict(target)
    for key, old in previous.items():
        if key not in (current or {}):
            result.pop(key, None)
        elif isinstance(old, dict) and isinstance((current or {}).get(key), dict):
            result[key] = _remove_fields(result.get(key), old, current[key])
    return result


def apply_ssa(live: dict[str, Any] | None, previous: dict[str, Any] | None, applied: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply for one forcing manager, simplified.

    Like the API server: fields in `applied` win (force), fields this manager applied last time
    but dropped now are removed, fields set by anyone else stay. Unlike it: lists are atomic
    (the real server merges `listType: map` lists per key and tracks ownership per field).
    With a single manager that owns whole lists, the outcomes are the same.
    """
    base = _remove_fields(copy.deepcopy(live or {}), previous or {}, applied)
    return merge_patch(base, applied)


def apply_defaults(schema: dict[str, Any], obj: Any) -> None:
    """Structural defaulting, as the API server does for custom resources."""
    if isinstance(obj, dict) and schema.get("type") == "object":
        for key, sub in schema.get("properties", {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                apply_defaults(sub, obj[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for value in obj.values():
                apply_defaults(extra, value)
    elif isinstance(obj, list) and "items" in schema:
        for item in obj:
            apply_defaults(schema["items"], item)


def prune(schema: dict[str, Any], obj: Any) -> None:
    """Drop fields the schema does not know, unless it preserves unknown fields there."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(obj, dict) and "properties" in schema:
        for key in list(obj):
            if key not in schema["properties"]:
                del obj[key]
            else:
                prune(schema["properties"][key], obj[key])
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for value in obj.values():
            prune(schema["additionalProperties"], value)
    elif isinstance(obj, list) and "items" in schema:
        for item in obj:
            prune(schema["items"], item)
