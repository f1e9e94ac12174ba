"""Input checks: every rejection names the field and the problem."""

from typing import Any

import pytest

from control_plane.errors import FailedPrecondition, InvalidArgument
from control_plane.models import PoolType
from control_plane.orchestration import templates, validation

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "count": {"type": "integer"}},
    "required": ["name"],
    "additionalProperties": False,
}


def test_unknown_parameter_is_named_with_the_accepted_ones() -> None:
    with pytest.raises(InvalidArgument) as error:
        validation.parameters({"name": "x", "colour": "red"}, SCHEMA, "hello")
    assert "unknown parameter 'colour'" in str(error.value)
    assert "accepted parameters: count, name" in str(error.value)


def test_missing_parameter_is_named() -> None:
    with pytest.raises(InvalidArgument, match="missing required parameter 'name'"):
        validation.parameters({"count": 1}, SCHEMA, "hello")


def test_wrongly_typed_parameter_is_named() -> None:
    with pytest.raises(
        InvalidArgument, match="parameters: count: 'three' is not of type 'integer'"
    ):
        validation.parameters({"name": "x", "count": "three"}, SCHEMA, "hello")


def test_defaults_may_leave_required_parameters_out() -> None:
    validation.partial_parameters({"count": 2}, SCHEMA, "hello")
    with pytest.raises(InvalidArgument, match="unknown parameter 'nope'"):
        validation.partial_parameters({"nope": 2}, SCHEMA, "hello")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "must be a JSON object, got list"),
        ("{not json", "not valid JSON"),
        ('"text"', "must be a JSON object, got str"),
    ],
)
def test_json_fields_must_be_objects(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validation.json_object(text, "parameters_json")


def test_empty_json_field_is_an_empty_object() -> None:
    assert validation.json_object("", "parameters_json") == {}


@pytest.mark.parametrize("name", ["", "Upper", "9lives", "a" * 64, "has space", "under_score"])
def test_bad_pool_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="not a valid pool name"):
        validation.pool_name(name)


@pytest.mark.parametrize("run_id", ["", "xyz", "A" * 32, "0" * 31])
def test_bad_run_ids(run_id: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a run id"):
        validation.run_id(run_id)


def test_undeclared_job_variable_is_rejected_with_the_declared_ones() -> None:
    template = templates.default_template(PoolType.PROCESS)
    with pytest.raises(InvalidArgument) as error:
        templates.check_job_variables({"memory": "1Gi"}, template, "job_variables_json")
    assert "unknown job variable 'memory'" in str(error.value)
    assert "declares: env" in str(error.value)


def test_job_variable_values_are_checked_against_the_schema() -> None:
    template = templates.default_template(PoolType.PROCESS)
    templates.check_job_variables({"env": {"A": "1"}}, template, "f")
    with pytest.raises(InvalidArgument, match=r"job variable env\.A: 1 is not of type 'string'"):
        templates.check_job_variables({"env": {"A": 1}}, template, "f")


def test_template_placeholders_must_be_declared() -> None:
    template = {
        "job_configuration": {"image": "{{ image }}", "cmd": "run {{ extra }}"},
        "variables": {"type": "object", "properties": {"image": {"type": "string"}}},
    }
    with pytest.raises(InvalidArgument, match="placeholder\\(s\\) extra used"):
        templates.check_template(template, PoolType.PROCESS)


def test_default_templates_are_valid() -> None:
    for pool_type in PoolType:
        templates.check_template(templates.default_template(pool_type), pool_type)


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (validation.pool_name, "pool-a\n"),
        (validation.deployment_name, "hello\n"),
        (validation.run_id, "0" * 32 + "\n"),
    ],
)
def test_a_trailing_newline_does_not_make_a_name_valid(check: Any, value: str) -> None:
    with pytest.raises(InvalidArgument):
        check(value)


def test_long_values_are_quoted_short() -> None:
    with pytest.raises(InvalidArgument) as error:
        validation.pool_name("x" * 100_000)
    assert len(str(error.value)) < 300
    assert "(100000 characters)" in str(error.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": -Infinity}', "-Infinity is not a JSON number"),
        ('{"a": 1e400}', "the number 1e400 is too large"),
        ('{"a": ' + "1" * 5000 + "}", "a number longer than 100 characters"),
        ("[" * 100_000, "nested more than 32 levels deep"),
        ('{"a":' * 33 + "1" + "}" * 33, "nested more than 32 levels deep"),
        ('{"a": "\\ud800"}', "unpaired surrogate"),
        ('{"\\udc00": 1}', "unpaired surrogate"),
        ('{"a": "' + "x" * (1 << 20) + '"}', "larger than 1048576 bytes"),
    ],
)
def test_json_fields_hold_only_standard_json_of_sane_size(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validation.json_object(text, "parameters_json")


def test_json_nested_to_the_limit_is_accepted() -> None:
    assert validation.json_object('{"a":' * 31 + "{}" + "}" * 31, "f")


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"properties": {"a": {"$ref": "file:///etc/passwd"}}}, "only references within"),
        ({"properties": {"a": {"$ref": "http://169.254.169.254/"}}}, "only references within"),
        ({"$id": "http://example.com/", "properties": {}}, r"\$id is not supported"),
        ({"properties": {"a": {"$ref": "#/nope"}}}, "points nowhere"),
        ({"$dynamicRef": "#meta"}, "points nowhere"),
        ({"$ref": "#"}, "lead back to the same place"),
        ({"allOf": [{"$ref": "#/$defs/x"}], "$defs": {"x": {"not": {"$ref": "#"}}}}, "lead back"),
        ({"properties": {"a": {"anyOf": [{"$ref": "#/properties/a"}]}}}, "lead back"),
    ],
)
def test_schemas_may_only_refer_to_themselves_and_must_not_loop(
    schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validation.json_schema({"type": "object", **schema}, "parameter_schema_json")


@pytest.mark.parametrize(
    "schema",
    [
        # Recursion that descends into the value ends with the value.
        {"properties": {"a": {"$ref": "#"}}},
        {
            "$defs": {"tree": {"items": {"$ref": "#/$defs/tree"}}},
            "properties": {"t": {"$ref": "#/$defs/tree"}},
        },
        {"properties": {"a/b~c": {"type": "string"}, "n": {"$ref": "#/properties/a~1b~0c"}}},
        {"$dynamicAnchor": "meta", "properties": {"a": {"$dynamicRef": "#meta"}}},
    ],
)
def test_references_within_a_schema_are_accepted(schema: dict[str, Any]) -> None:
    validation.json_schema({"type": "object", **schema}, "parameter_schema_json")


def test_a_stored_schema_that_cannot_be_evaluated_is_a_failed_precondition() -> None:
    # Stored before references were checked: running the deployment says what to fix.
    schema = {"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/x"}}}
    with pytest.raises(FailedPrecondition, match="parameter_schema_json"):
        validation.parameters({"a": 1}, schema, "hello")
    looping = {"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}}
    with pytest.raises(FailedPrecondition, match="recurse without end"):
        validation.parameters({"a": 1}, looping, "hello")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a\x00b", "must not contain NUL"),
        ("x" * 11, "longer than 10 characters"),
        (" ", "required"),
    ],
)
def test_free_text_is_bounded_and_storable(value: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validation.text(value, "description", 10, required=True)


def test_parameter_messages_say_what_was_expected() -> None:
    schema = {
        "type": "object",
        "properties": {
            "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "colour": {"title": "Colour", "enum": ["red", "green"]},
            "day": {"type": "string", "format": "date"},
        },
        "additionalProperties": False,
    }
    with pytest.raises(
        InvalidArgument, match=r"parameters: limit: 'ten' is not an integer or a null"
    ):
        validation.parameters({"limit": "ten"}, schema, "f")
    with pytest.raises(
        InvalidArgument, match=r"parameters: colour: 'blue' is not one of .*\(Colour\)"
    ):
        validation.parameters({"colour": "blue"}, schema, "f")
    with pytest.raises(InvalidArgument, match=r"parameters: day: '2026-13-45' is not a 'date'"):
        validation.parameters({"day": "2026-13-45"}, schema, "f")


@pytest.mark.parametrize("prefix", ["abc", "ABCD", "xyz1", "a" * 33, "", "abcd ", "ab%d"])
def test_bad_run_id_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidArgument, match=r"run_id_prefix: .* is not a prefix of a run id"):
        validation.run_id_prefix(prefix)


@pytest.mark.parametrize("prefix", ["abcd", "0123456789", "f" * 32])
def test_run_id_prefixes_of_4_to_32_lowercase_hex(prefix: str) -> None:
    assert validation.run_id_prefix(prefix) == prefix
