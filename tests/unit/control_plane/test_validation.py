"""Input checks: every rejection names the field and the problem."""

import pytest

from control_plane.errors import InvalidArgument
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
