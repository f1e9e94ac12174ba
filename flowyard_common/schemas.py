"""JSON Schema validators built once per schema, for the checks made on every run creation,
and whose regular expressions cannot stop the process that checks.

Building a ``jsonschema`` validator (its registry and resolver) costs more than most checks
it then makes. A deployment's parameter schema and a pool's job variables schema are read
once and then checked against again and again, the same dict each time while the control
plane remembers them: their validators are kept, found by the schema object itself. A schema
is never changed once read (a changed deployment or pool is read anew, as a new object).

A schema's regular expressions (``pattern``, ``patternProperties``) come from users, and one
that backtracks (``^(a|aa)+$``) takes time that doubles with each character of the value it
is matched against: Python's ``re`` cannot be stopped, so one value would hold the event loop
of the control plane (or of an agent) for minutes. ``Validator`` matches them with ``regex``
instead, with a timeout, and a check (``errors``) spends at most ``PATTERN_SECONDS`` matching
in all; a value that could not be matched in that time is an error of the value, saying so.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import regex
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from flowyard_common.messages import shown

#: Validators kept at most; past it the oldest half is dropped.
MAX_KEPT = 256

_kept: dict[tuple[int, Hashable], tuple[dict[str, Any], Any]] = {}
_lock = threading.Lock()


def validator(
    schema: dict[str, Any], kind: Hashable, build: Callable[[dict[str, Any]], Any]
) -> Any:
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


#: What one check of a value may spend matching its schema's regular expressions, in all.
PATTERN_SECONDS = 0.1


class _Budget(threading.local):
    #: ``time.monotonic()`` by which the check under way must be done matching; None: no
    #: check under way, each match gets ``PATTERN_SECONDS``.
    deadline: float | None = None


_budget = _Budget()


def errors(validator: Any, instance: Any) -> list[ValidationError]:
    """Every error of ``instance`` against the schema of ``validator`` (a ``Validator``),
    the matching of its regular expressions bounded by ``PATTERN_SECONDS`` in all."""
    outer = _budget.deadline
    if outer is None:
        _budget.deadline = time.monotonic() + PATTERN_SECONDS
    try:
        return list(validator.iter_errors(instance))
    finally:
        _budget.deadline = outer


@functools.lru_cache(maxsize=MAX_KEPT)
def _compiled(pattern: str) -> regex.Pattern[str] | str:
    """The pattern compiled, or why it cannot be."""
    try:
        return regex.compile(pattern)
    except (regex.error, RecursionError, OverflowError) as error:
        return str(error)


class _NoMatch(Exception):
    """A pattern could not be matched: its message says why, for the value's error."""


def _search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches somewhere in ``text``; ``_NoMatch`` if that cannot be told
    (in the time left, or at all)."""
    compiled = _compiled(pattern)
    if isinstance(compiled, str):
        raise _NoMatch(f"the pattern {pattern!r} cannot be used: {compiled}")
    deadline = _budget.deadline
    left = PATTERN_SECONDS if deadline is None else deadline - time.monotonic()
    try:
        if left <= 0:
            raise TimeoutError
        return compiled.search(text, timeout=left) is not None
    except TimeoutError:
        raise _NoMatch(
            f"{shown(text)} could not be matched against the pattern {pattern!r} in "
            f"{PATTERN_SECONDS:g} s: the pattern backtracks too much (nested or overlapping "
            "repetitions such as (a|aa)+); write it so that it does not"
        ) from None


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string"):
        return
    try:
        if not _search(pattern, instance):
            yield ValidationError(f"{shown(instance)} does not match {pattern!r}")
    except _NoMatch as why:
        yield ValidationError(str(why))


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            try:
                matched = _search(pattern, key)
            except _NoMatch as why:
                yield ValidationError(str(why), path=[key])
                continue
            if matched:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


_ADDITIONAL_PROPERTIES = Draft202012Validator.VALIDATORS["additionalProperties"]


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    patterns = schema.get("patternProperties")
    if not patterns or not validator.is_type(instance, "object"):
        yield from _ADDITIONAL_PROPERTIES(validator, additional, instance, schema)
        return
    # The keys neither ``properties`` nor a pattern of ``patternProperties`` names.
    extras = []
    for key in instance:
        if key in schema.get("properties", {}):
            continue
        try:
            if not any(_search(pattern, key) for pattern in patterns):
                extras.append(key)
        except _NoMatch:
            continue  # the schema's patternProperties report it
    if validator.is_type(additional, "object"):
        for key in extras:
            yield from validator.descend(instance[key], additional, path=key)
    elif not additional and extras:
        joined = ", ".join(repr(key) for key in sorted(extras))
        verb = "does" if len(extras) == 1 else "do"
        listed = ", ".join(repr(pattern) for pattern in sorted(patterns))
        yield ValidationError(f"{joined} {verb} not match any of the regexes: {listed}")


#: Draft 2020-12, its regular expressions matched as the module says. (``unevaluatedProperties``
#: beside ``patternProperties`` would still match with ``re``: such schemas are refused.)
Validator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)
