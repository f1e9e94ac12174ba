"""The three PATCH body formats the API server accepts for built-in kinds.

Faithful: JSON merge patch (RFC 7386: ``null`` deletes a key, objects merge, lists replace);
JSON patch (RFC 6902: add, remove, replace, move, copy, test); strategic merge patch for the
lists that built-in kinds merge by key (``conditions`` by ``type``, ``containers``/``env``/
``volumes``/``ports`` by name or port, ``ownerReferences`` by ``uid``), ``finalizers`` as a set,
and the ``$patch: delete`` / ``$patch: replace`` directives. Simplified: strategic merge knows
those list fields by name wherever they appear rather than from the OpenAPI schema, and
``$setElementOrder``/``$retainKeys`` directives are dropped.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.fakekube.errors import ApiError, bad_request

MERGE_KEYS = {
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "envFrom": None,
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "ownerReferences": "uid",
    "imagePullSecrets": "name",
    "containerStatuses": "name",
}
SET_LISTS = {"finalizers"}

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
ACCEPTED = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)


def apply(content_type: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply ``patch`` (already decoded JSON) of the given media type to a copy of ``target``."""
    media = content_type.split(";")[0].strip().lower()
    if media == MERGE_PATCH:
        result = merge(target, patch)
    elif media == STRATEGIC_MERGE_PATCH:
        result = strategic_merge(target, patch)
    elif media == JSON_PATCH:
        result = json_patch(target, patch)
    else:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{', '.join(ACCEPTED)}",
        )
    if not isinstance(result, dict):
        raise bad_request("the patch did not produce an object")
    return result


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge patch for the list fields built-in kinds merge by key."""
    if isinstance(patch, list) and isinstance(target, list):
        return _merge_list(field, target, patch)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = strategic_merge(result.get(key), value, key)
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [item for item in result.get(name, []) if item not in value]
    return result


def _merge_list(field: str, target: list[Any], patch: list[Any]) -> list[Any]:
    if field in SET_LISTS:
        return [*target, *(item for item in patch if item not in target)]
    key = MERGE_KEYS.get(field)
    if key is None:
        return copy.deepcopy(patch)
    result = copy.deepcopy(target)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            return copy.deepcopy(patch)
        index = next((i for i, old in enumerate(result) if old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(copy.deepcopy(item))
        else:
            result[index] = strategic_merge(result[index], item)
    return result


def json_patch(target: dict[str, Any], operations: Any) -> Any:
    """RFC 6902 JSON patch."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    document: Any = copy.deepcopy(target)
    for operation in operations:
        op, path = operation.get("op"), operation.get("path", "")
        if op == "test":
            if _get(document, path) != operation.get("value"):
                raise ApiError(422, "Invalid", f"testing value {path} failed")
        elif op == "remove":
            document = _remove(document, path)
        elif op in ("add", "replace"):
            if op == "replace":
                _get(document, path)
            document = _add(document, path, copy.deepcopy(operation.get("value")), op == "add")
        elif op in ("move", "copy"):
            value = copy.deepcopy(_get(document, operation.get("from", "")))
            if op == "move":
                document = _remove(document, operation["from"])
            document = _add(document, path, value, True)
        else:
            raise bad_request(f"Unexpected kind: {op}")
    return document


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"JSON pointer must start with '/': {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _get(document: Any, path: str) -> Any:
    return _walk(document, _tokens(path), path)


def _walk(document: Any, tokens: list[str], path: str) -> Any:
    for token in tokens:
        try:
            document = document[int(token)] if isinstance(document, list) else document[token]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(422, "Invalid", f"doc is missing path: {path!r}") from None
    return document


def _add(document: Any, path: str, value: Any, insert: bool) -> Any:
    tokens = _tokens(path)
    if not tokens:
        return value
    parent = _walk(document, tokens[:-1], path)
    last = tokens[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if insert:
            parent.insert(index, value)
        else:
            parent[index] = value
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise ApiError(422, "Invalid", f"doc is missing path: {path!r}")
    return document


def _remove(document: Any, path: str) -> Any:
    tokens = _tokens(path)
    if not tokens:
        raise ApiError(422, "Invalid", "cannot remove the whole document")
    parent = _walk(document, tokens[:-1], path)
    try:
        if isinstance(parent, list):
            parent.pop(int(tokens[-1]))
        else:
            del parent[tokens[-1]]
    except (KeyError, IndexError, ValueError, TypeError):
        raise ApiError(422, "Invalid", f"doc is missing path: {path!r}") from None
    return document
