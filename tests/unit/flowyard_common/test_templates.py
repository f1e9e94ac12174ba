"""Base job templates: checking them, checking job variables, resolving and rendering."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from flowyard_common.templates import (
    PLACEHOLDER,
    TemplateError,
    apply_values,
    check_job_variables,
    check_template,
    default_process_template,
    expand_dot_keys,
    resolve_variables,
)


def template(job_configuration: dict[str, Any], **properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_configuration": job_configuration,
        "variables": {"type": "object", "properties": properties},
    }


SAMPLE = template(
    {"image": "{{ image }}", "env": "{{ env }}", "cpu": "{{ cpu_limit }}"},
    image={"type": "string", "default": "python:3.11"},
    env={"type": "object", "additionalProperties": {"type": "string"}},
    cpu_limit={"type": "string"},
    memory_limit={"type": "string"},
    retries={"type": "integer", "minimum": 0, "default": 0},
    node_selector={"type": "object", "additionalProperties": {"type": "string"}},
)


# --- placeholders -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("{{ image }}", ["image"]),
        ("{{image}}", ["image"]),
        ("{{ a.b-c[0] }}", ["a.b-c[0]"]),
        ("{{ $HOME }}", ["$HOME"]),
        ("x-{{ a }}-{{ b }}", ["a", "b"]),
        ("{{ not a name }}", []),
    ],
)
def test_placeholder_names(text: str, names: list[str]) -> None:
    assert PLACEHOLDER.findall(text) == names


def test_whole_placeholder_is_replaced_by_the_typed_value() -> None:
    values = {"obj": {"a": [1, 2]}, "num": 3, "flag": False, "items": ["x"]}
    rendered = apply_values(
        {"o": "{{ obj }}", "n": "{{ num }}", "f": "{{ flag }}", "l": "{{items}}"}, values
    )
    assert rendered == {"o": {"a": [1, 2]}, "n": 3, "f": False, "l": ["x"]}


def test_missing_whole_placeholder_removes_the_key() -> None:
    rendered = apply_values(
        {"keep": "{{ a }}", "gone": "{{ b }}", "none": "{{ c }}", "nested": {"x": "{{ b }}"}},
        {"a": 1, "c": None},
    )
    assert rendered == {"keep": 1, "nested": {}}


def test_missing_whole_placeholder_drops_the_list_item() -> None:
    rendered = apply_values(["{{ a }}", "{{ b }}", "literal", 4], {"a": "x"})
    assert rendered == ["x", "literal", 4]


def test_placeholder_inside_a_string_is_substituted() -> None:
    rendered = apply_values(
        {"name": "job-{{ a }}-{{ n }}", "spaced": "{{ a }} "}, {"a": "x", "n": 7}
    )
    assert rendered == {"name": "job-x-7", "spaced": "x "}


def test_missing_placeholder_inside_a_string_becomes_empty() -> None:
    assert apply_values({"name": "{{ missing }}-job"}, {}) == {"name": "-job"}


def test_environment_references_use_environ_or_stay_as_written() -> None:
    configuration = {"whole": "{{ $TOKEN }}", "part": "a-{{ $TOKEN }}", "gone": "{{ $NOPE }}"}
    assert apply_values(configuration, {}, environ={"TOKEN": "t"}) == {
        "whole": "t",
        "part": "a-t",
    }
    assert apply_values(configuration, {}) == configuration


def test_non_string_values_pass_through() -> None:
    configuration = {"n": 1, "b": True, "z": None, "l": [1.5, {"k": "v"}]}
    assert apply_values(configuration, {"n": 2}) == configuration


def test_apply_values_never_modifies_its_inputs() -> None:
    configuration = {"env": "{{ env }}", "spec": {"list": ["{{ missing }}", "{{ env }}"]}}
    values = {"env": {"A": "1"}}
    before = (copy.deepcopy(configuration), copy.deepcopy(values))
    rendered = apply_values(configuration, values)
    assert (configuration, values) == before
    rendered["env"]["B"] = "2"
    rendered["spec"]["list"][0]["C"] = "3"
    assert values == {"env": {"A": "1"}}
    assert configuration == before[0]


# --- check_template -----------------------------------------------------------------------


def test_default_process_template_is_valid() -> None:
    process = default_process_template()
    check_template(process)
    assert process["job_configuration"] == {"env": "{{ env }}"}
    env = process["variables"]["properties"]["env"]
    assert env["type"] == "object"
    assert env["additionalProperties"] == {"type": "string"}
    assert env["title"] and env["description"]


def test_sample_template_is_valid() -> None:
    check_template(SAMPLE)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([], "must be a JSON object"),
        ({"job_configuration": {}}, "missing 'variables'"),
        (
            {"job_configuration": {}, "variables": {"type": "object"}, "extra": 1},
            "unexpected 'extra'",
        ),
        ({"job_configuration": [], "variables": {"type": "object"}}, "job_configuration must"),
        ({"job_configuration": {}, "variables": []}, "variables must be a JSON Schema"),
        ({"job_configuration": {}, "variables": {"type": "string"}}, '"type": "object"'),
        ({"job_configuration": {}, "variables": {}}, '"type": "object"'),
        (
            {"job_configuration": {}, "variables": {"type": "object", "properties": []}},
            "variables['properties'] is not a valid JSON Schema",
        ),
        (
            template({}, size={"type": "integer", "default": "big"}),
            "variables.properties.size.default: 'big' is not of type 'integer'",
        ),
        (
            template({"a": "{{ image }}", "b": ["x-{{ extra }}"]}, image={"type": "string"}),
            "placeholder(s) extra used in job_configuration but not declared in "
            "variables.properties",
        ),
    ],
)
def test_check_template_errors(bad: Any, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        check_template(bad)
    assert message in str(caught.value)


def test_environment_references_need_no_declaration() -> None:
    check_template(template({"token": "{{ $TOKEN }}"}))


# --- check_job_variables ------------------------------------------------------------------


def test_valid_job_variables_pass() -> None:
    check_job_variables({"image": "x", "env": {"A": "1"}, "retries": 2}, SAMPLE)
    check_job_variables({}, SAMPLE)


def test_unknown_job_variable_names_the_declared_ones() -> None:
    with pytest.raises(TemplateError) as caught:
        check_job_variables({"memory": "1Gi"}, SAMPLE)
    assert str(caught.value) == (
        "unknown job variable 'memory'; the pool's template declares: cpu_limit, env, image, "
        "memory_limit, node_selector, retries"
    )


def test_several_unknown_job_variables_are_all_named() -> None:
    with pytest.raises(TemplateError, match=r"unknown job variables 'a', 'b\.c';"):
        check_job_variables({"b.c": 1, "a": 1, "image": "x"}, SAMPLE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"memory_limit": 5}, "job variable memory_limit: 5 is not of type 'string'"),
        ({"retries": -1}, "job variable retries: -1 is less than the minimum of 0"),
        ({"env": {"A": 1}}, "job variable env.A: 1 is not of type 'string'"),
        ({"env.A": 1}, "job variable env.A: 1 is not of type 'string'"),
    ],
)
def test_job_variables_are_validated_against_the_schema(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        check_job_variables(values, SAMPLE)
    assert str(caught.value) == message


def test_required_is_ignored_for_job_variables() -> None:
    strict = copy.deepcopy(SAMPLE)
    strict["variables"]["required"] = ["image", "cpu_limit"]
    check_job_variables({"retries": 1}, strict)


def test_dot_keys_are_accepted_when_their_first_part_is_declared() -> None:
    check_job_variables({"env.FOO": "1", "node_selector.kubernetes.io/arch": "arm64"}, SAMPLE)
    with pytest.raises(TemplateError, match=r"unknown job variable 'labels\.x'"):
        check_job_variables({"labels.x": "1"}, SAMPLE)


def test_dot_key_over_a_non_object_is_an_error() -> None:
    with pytest.raises(TemplateError, match=r"'env\.FOO'"):
        check_job_variables({"env": "not an object", "env.FOO": "1"}, SAMPLE)


def test_none_unsets_and_is_always_accepted() -> None:
    check_job_variables({"image": None}, SAMPLE)


def test_expand_dot_keys_splits_at_the_first_dot_and_merges() -> None:
    properties = SAMPLE["variables"]["properties"]
    expanded = expand_dot_keys(
        {"env": {"A": "1"}, "env.B": "2", "node_selector.kubernetes.io/arch": "arm64"},
        properties,
    )
    assert expanded == {
        "env": {"A": "1", "B": "2"},
        "node_selector": {"kubernetes.io/arch": "arm64"},
    }


def test_a_declared_name_with_a_dot_is_not_split() -> None:
    dotted = template({}, **{"a.b": {"type": "string"}})
    assert expand_dot_keys({"a.b": "x"}, dotted["variables"]["properties"]) == {"a.b": "x"}
    check_job_variables({"a.b": "x"}, dotted)


# --- resolve_variables --------------------------------------------------------------------


def test_resolve_starts_from_non_none_defaults() -> None:
    with_none = copy.deepcopy(SAMPLE)
    with_none["variables"]["properties"]["cpu_limit"]["default"] = None
    assert resolve_variables(with_none) == {"image": "python:3.11", "retries": 0}


def test_resolve_overlays_layers_in_order() -> None:
    resolved = resolve_variables(
        SAMPLE,
        {"image": "deploy:1", "cpu_limit": "1", "node_selector": {"a": "1", "b": "2"}},
        {"image": "run:1", "node_selector": {"c": "3"}},
    )
    assert resolved == {
        "image": "run:1",
        "retries": 0,
        "cpu_limit": "1",
        # Only env merges; other objects are replaced whole.
        "node_selector": {"c": "3"},
    }


def test_resolve_deep_merges_env() -> None:
    resolved = resolve_variables(
        SAMPLE,
        {"env": {"A": "deploy", "B": "deploy"}},
        {"env": {"B": "run"}, "env.C": "run"},
    )
    assert resolved["env"] == {"A": "deploy", "B": "run", "C": "run"}


def test_resolve_none_unsets_a_variable_and_its_default() -> None:
    assert "image" not in resolve_variables(SAMPLE, {"image": "x"}, {"image": None})


def test_resolve_does_not_modify_or_share_its_inputs() -> None:
    deployment = {"env": {"A": "1"}}
    pristine = copy.deepcopy(SAMPLE)
    resolved = resolve_variables(SAMPLE, deployment, {"env": {"B": "2"}})
    resolved["env"]["C"] = "3"
    assert deployment == {"env": {"A": "1"}}
    assert pristine == SAMPLE


def test_resolve_then_apply() -> None:
    values = resolve_variables(SAMPLE, {"env.FOO": "1"})
    assert apply_values(SAMPLE["job_configuration"], values) == {
        "image": "python:3.11",
        "env": {"FOO": "1"},
    }
