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


#: Python's ``re`` would take about a day to find that this pattern does not match.
BACKTRACKING = "^(a|aa)+$"
ALMOST = "a" * 60 + "!"


def _messages(schema: dict[str, Any], instance: Any) -> list[str]:
    return sorted(error.message for error in schemas.errors(schemas.Validator(schema), instance))


def test_patterns_match_and_refuse_as_json_schema_says() -> None:
    schema = {
        "type": "object",
        "properties": {"tag": {"type": "string", "pattern": "^v[0-9]+$"}},
        "patternProperties": {"^x-": {"type": "integer"}},
        "additionalProperties": False,
    }
    assert _messages(schema, {"tag": "v12", "x-a": 1}) == []
    assert _messages(schema, {"tag": "12"}) == ["'12' does not match '^v[0-9]+$'"]
    assert _messages(schema, {"x-a": "one"}) == ["'one' is not of type 'integer'"]
    assert _messages(schema, {"y": 1}) == ["'y' does not match any of the regexes: '^x-'"]
    extra = {**schema, "additionalProperties": {"type": "string"}}
    assert _messages(extra, {"y": "1", "x-b": 2}) == []
    assert _messages(extra, {"y": 1}) == ["1 is not of type 'string'"]


def test_a_value_a_pattern_cannot_be_matched_against_in_time_is_an_error_of_the_value() -> None:
    schema = {"type": "array", "items": {"type": "string", "pattern": BACKTRACKING}}
    # The budget is for the whole check: once it is spent, every later match is refused
    # at once (even one that would be quick) rather than each taking its own time.
    messages = _messages(schema, [ALMOST] * 20 + ["aa"])
    assert len(messages) == 21
    assert all(f"could not be matched against the pattern '{BACKTRACKING}'" in m for m in messages)
    assert _messages(schema, ["aa", "b"]) == [f"'b' does not match '{BACKTRACKING}'"]


def test_keys_a_pattern_cannot_be_matched_against_in_time_are_errors_too() -> None:
    keyed = {"type": "object", "patternProperties": {BACKTRACKING: {"type": "string"}}}
    [message] = _messages(keyed, {ALMOST: "x"})
    assert "could not be matched" in message
    closed = {**keyed, "additionalProperties": False}
    [message] = _messages(closed, {ALMOST: "x"})
    assert "could not be matched" in message
