"""Validators kept per schema object (flowyard_common.schemas)."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from flowyard_common import schemas


def _counting() -> tuple[list[dict[str, Any]], Any]:
    built: list[dict[str, Any]] = []

    def build(schema: dict[str, Any]) -> Draft202012Validator:
        built.append(schema)
        return Draft202012Validator(schema)

    return built, build


def test_a_schema_checked_again_reuses_its_validator() -> None:
    built, build = _counting()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    first = schemas.validator(schema, "test", build)
    assert schemas.validator(schema, "test", build) is first
    assert built == [schema]
    assert not list(first.iter_errors({"n": 1}))
    assert list(first.iter_errors({"n": "one"}))


def test_an_equal_but_new_schema_or_another_kind_gets_a_validator_of_its_own() -> None:
    built, build = _counting()
    schema = {"type": "object"}
    first = schemas.validator(schema, "test", build)
    # A deployment read again is a new object: what it holds now is what is checked.
    assert schemas.validator(dict(schema), "test", build) is not first
    assert schemas.validator(schema, "other", build) is not first
    assert len(built) == 3


def test_it_keeps_a_bounded_number_of_validators() -> None:
    _, build = _counting()
    kept = [{"type": "object", "title": str(n)} for n in range(3 * schemas.MAX_KEPT)]
    for schema in kept:
        schemas.validator(schema, "bounded", build)
    assert len(schemas._kept) <= schemas.MAX_KEPT
    # The newest is still there.
    built, count = _counting()
    schemas.validator(kept[-1], "bounded", count)
    assert built == []
