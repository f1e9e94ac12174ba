"""JSON Schema validators built once per schema, for the checks made on every run creation.

Building a ``jsonschema`` validator (its registry and resolver) costs more than most checks
it then makes. A deployment's parameter schema and a pool's job variables schema are read
once and then checked against again and again, the same dict each time while the control
plane remembers them: their validators are kept, found by the schema object itself. A schema
is never changed once read (a changed deployment or pool is read anew, as a new object).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

#: Validators kept at most; past it the oldest half is dropped.
MAX_KEPT = 256

Validator = Any  # a jsonschema validator instance

_kept: dict[tuple[int, Hashable], tuple[dict[str, Any], Validator]] = {}
_lock = threading.Lock()


def validator(
    schema: dict[str, Any], kind: Hashable, build: Callable[[dict[str, Any]], Validator]
) -> Validator:
    """``build(schema)``, or the validator it built for this very schema object before.

    ``kind`` tells validators of one schema apart when they are built differently. The
    schema is kept with its validator, so its id cannot name another object meanwhile.
    """
    key = (id(schema), kind)
    found = _kept.get(key)
    if found is not None and found[0] is schema:
        return found[1]
    built = build(schema)
    with _lock:
        if len(_kept) >= MAX_KEPT:
            for old in list(_kept)[: MAX_KEPT // 2]:
                del _kept[old]
        _kept[key] = (schema, built)
    return built
