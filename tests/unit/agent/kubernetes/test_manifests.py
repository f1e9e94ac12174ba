"""The kubernetes pool's base job template and rendering an attempt into a Job and Secret."""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import kubernetes_validate
import pytest

from agent.kubernetes.manifests import (
    ATTEMPT_LABEL,
    DEFAULT_IMAGE,
    DEPLOYMENT_ANNOTATION,
    DEPLOYMENT_LABEL,
    MANAGED_BY_LABEL,
    POOL_LABEL,
    RUN_ID_LABEL,
    RenderedJob,
    check_kubernetes_template,
    default_template,
    job_name,
    label_value,
    render_job,
)
from flowyard_common.templates import TemplateError, check_job_variables

RUN_ID = "0123456789abcdef0123456789abcdef"
TOKEN = "engine-token-that-must-never-appear-in-the-job"
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

EVERY_VARIABLE: dict[str, Any] = {
    "image": "registry.example.com/team/flows:2024.1",
    "image_pull_policy": "Always",
    "image_pull_secrets": ["registry-creds", "backup-creds"],
    "namespace": "flows",
    "service_account_name": "flow-runner",
    "env": {"GREETING": "hello", "FLOWYARD_RUN_ID": "spoofed"},
    "labels": {"team": "data", "flowyard.io/run-id": "spoofed"},
    "annotations": {"sidecar.istio.io/inject": "false"},
    "cpu_request": "500m",
    "cpu_limit": "2",
    "memory_request": "512Mi",
    "memory_limit": "2Gi",
    "node_selector": {"kubernetes.io/arch": "arm64"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "flows", "effect": "NoSchedule"}
    ],
    "backoff_limit": 1,
    "finished_job_ttl": 600,
    "pod_start_timeout_seconds": 120.5,
}


def render(
    job_variables: dict[str, Any] | None = None,
    *,
    template: dict[str, Any] | None = None,
    attempt: int = 1,
    engine_token: str | None = TOKEN,
    **kwargs: Any,
) -> RenderedJob:
    return render_job(
        default_template() if template is None else template,
        job_variables or {},
        run_id=RUN_ID,
        attempt=attempt,
        pool="k8s-pool",
        deployment="nightly etl/Ingest v2",
        flow_name="ingest",
        server_address="flowyard.flowyard.svc:50051",
        engine_token=engine_token,
        **kwargs,
    )


def validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


def container(rendered: RenderedJob) -> dict[str, Any]:
    containers = rendered.job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def env_of(rendered: RenderedJob) -> dict[str, Any]:
    return {item["name"]: item for item in container(rendered)["env"]}


# --- the default template -----------------------------------------------------------------


def test_default_template_passes_the_checks() -> None:
    check_kubernetes_template(default_template())


def test_default_template_has_prefects_shape() -> None:
    configuration = default_template()["job_configuration"]
    assert configuration["namespace"] == "{{ namespace }}"
    assert configuration["pod_start_timeout_seconds"] == "{{ pod_start_timeout_seconds }}"
    assert configuration["env"] == "{{ env }}"
    assert configuration["labels"] == "{{ labels }}"
    manifest = configuration["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert manifest["spec"]["backoffLimit"] == "{{ backoff_limit }}"
    assert manifest["spec"]["ttlSecondsAfterFinished"] == "{{ finished_job_ttl }}"
    pod_spec = manifest["spec"]["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Never"
    assert [c["name"] for c in pod_spec["containers"]] == ["flowyard"]


def test_every_variable_is_documented() -> None:
    properties = default_template()["variables"]["properties"]
    assert set(EVERY_VARIABLE) <= set(properties)
    for name, schema in properties.items():
        assert schema.get("title"), name
        assert schema.get("description"), name


def test_default_values() -> None:
    properties = default_template()["variables"]["properties"]
    defaults = {name: p["default"] for name, p in properties.items() if "default" in p}
    assert defaults == {
        "image": DEFAULT_IMAGE,
        "image_pull_policy": "IfNotPresent",
        "namespace": "default",
        "backoff_limit": 0,
        "finished_job_ttl": 86400,
        "pod_start_timeout_seconds": 300.0,
    }


def test_every_variable_example_is_accepted() -> None:
    check_job_variables(EVERY_VARIABLE, default_template())


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"cpu_limit": "lots"}, "cpu_limit"),
        ({"memory_request": "-1Gi"}, "memory_request"),
        ({"image_pull_policy": "Sometimes"}, "image_pull_policy"),
        ({"namespace": "Not_A_Namespace"}, "namespace"),
        ({"labels": {"team": "has spaces"}}, "labels.team"),
        ({"backoff_limit": -1}, "backoff_limit"),
        ({"pod_start_timeout_seconds": 0}, "pod_start_timeout_seconds"),
        ({"tolerations": [{"operator": "Maybe"}]}, "tolerations.0.operator"),
        ({"image_pull_secrets": [{"name": "x"}]}, "image_pull_secrets.0"),
    ],
)
def test_bad_values_are_rejected_naming_the_variable(values: dict[str, Any], key: str) -> None:
    with pytest.raises(TemplateError, match=f"^job variable {re.escape(key)}: "):
        check_job_variables(values, default_template())


# --- render_job ---------------------------------------------------------------------------


def test_render_with_defaults_is_a_valid_job_and_secret() -> None:
    rendered = render()
    validate(rendered.job)
    validate(rendered.secret)
    assert rendered.namespace == "default"
    assert rendered.name == job_name(RUN_ID, 1)
    assert rendered.pod_start_timeout_seconds == 300.0
    spec = rendered.job["spec"]
    assert (spec["backoffLimit"], spec["ttlSecondsAfterFinished"]) == (0, 86400)
    assert container(rendered)["image"] == DEFAULT_IMAGE
    pod_spec = spec["template"]["spec"]
    for unset in ("serviceAccountName", "imagePullSecrets", "nodeSelector", "tolerations"):
        assert unset not in pod_spec


def test_render_with_every_variable_set() -> None:
    rendered = render(EVERY_VARIABLE)
    validate(rendered.job)
    validate(rendered.secret)
    job = rendered.job
    pod_spec = job["spec"]["template"]["spec"]
    main = container(rendered)
    assert rendered.namespace == job["metadata"]["namespace"] == "flows"
    assert rendered.secret["metadata"]["namespace"] == "flows"
    assert rendered.pod_start_timeout_seconds == 120.5
    assert (job["spec"]["backoffLimit"], job["spec"]["ttlSecondsAfterFinished"]) == (1, 600)
    assert main["image"] == EVERY_VARIABLE["image"]
    assert main["imagePullPolicy"] == "Always"
    assert main["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert pod_spec["serviceAccountName"] == "flow-runner"
    assert pod_spec["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert pod_spec["tolerations"] == EVERY_VARIABLE["tolerations"]
    assert job["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert job["spec"]["template"]["metadata"]["annotations"] == {
        "sidecar.istio.io/inject": "false"
    }
    assert env_of(rendered)["GREETING"] == {"name": "GREETING", "value": "hello"}


def test_image_pull_secrets_are_rendered_as_name_objects() -> None:
    rendered = render({"image_pull_secrets": ["registry-creds", "backup-creds"]})
    assert rendered.job["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": "registry-creds"},
        {"name": "backup-creds"},
    ]


def test_unset_resources_disappear() -> None:
    assert "resources" not in container(render())
    assert container(render({"memory_limit": "1Gi"}))["resources"] == {"limits": {"memory": "1Gi"}}


def test_labels_on_job_pod_template_and_secret() -> None:
    rendered = render({"labels": {"team": "data", RUN_ID_LABEL: "spoofed"}}, attempt=3)
    ours = {
        RUN_ID_LABEL: RUN_ID,
        ATTEMPT_LABEL: "3",
        POOL_LABEL: "k8s-pool",
        DEPLOYMENT_LABEL: "nightly-etl-Ingest-v2",
        MANAGED_BY_LABEL: "flowyard",
    }
    for labels in (
        rendered.job["metadata"]["labels"],
        rendered.job["spec"]["template"]["metadata"]["labels"],
        rendered.secret["metadata"]["labels"],
    ):
        assert labels == {"team": "data", **ours}
        assert all(LABEL_VALUE.fullmatch(v) and len(v) <= 63 for v in labels.values())
    assert rendered.job["metadata"]["annotations"][DEPLOYMENT_ANNOTATION] == (
        "nightly etl/Ingest v2"
    )


def test_engine_environment_and_command() -> None:
    rendered = render({"env": {"GREETING": "hi", "FLOWYARD_SERVER": "spoofed:1"}}, attempt=2)
    main = container(rendered)
    assert main["command"] == ["flowyard-engine", "execute", RUN_ID]
    assert "args" not in main
    assert [item["name"] for item in main["env"]] == [
        "GREETING",
        "FLOWYARD_SERVER",
        "FLOWYARD_RUN_ID",
        "FLOWYARD_RUN_ATTEMPT",
        "FLOWYARD_RUN_TOKEN",
    ]
    env = env_of(rendered)
    assert env["FLOWYARD_SERVER"]["value"] == "flowyard.flowyard.svc:50051"
    assert env["FLOWYARD_RUN_ID"]["value"] == RUN_ID
    assert env["FLOWYARD_RUN_ATTEMPT"]["value"] == "2"
    assert env["FLOWYARD_RUN_TOKEN"] == {
        "name": "FLOWYARD_RUN_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": rendered.name, "key": "token"}},
    }


def test_the_token_is_only_in_the_secret() -> None:
    rendered = render(EVERY_VARIABLE)
    encoded = base64.b64encode(TOKEN.encode()).decode()
    job_text = json.dumps(rendered.job)
    assert TOKEN not in job_text
    assert encoded not in job_text
    assert rendered.secret["type"] == "Opaque"
    assert rendered.secret["metadata"]["name"] == rendered.name
    assert base64.b64decode(rendered.secret["data"]["token"]).decode() == TOKEN


def test_dry_run_secret_has_no_data() -> None:
    rendered = render(engine_token=None)
    assert "data" not in rendered.secret
    assert "stringData" not in rendered.secret
    validate(rendered.secret)


def test_render_does_not_modify_its_inputs() -> None:
    template = default_template()
    variables = copy.deepcopy(EVERY_VARIABLE)
    render(variables, template=template)
    assert template == default_template()
    assert variables == EVERY_VARIABLE


def test_render_rejects_undeclared_job_variables() -> None:
    with pytest.raises(TemplateError, match="unknown job variable 'memory'"):
        render({"memory": "1Gi"})


def test_environment_references_come_from_environ() -> None:
    template = default_template()
    manifest = template["job_configuration"]["job_manifest"]
    manifest["spec"]["template"]["spec"]["priorityClassName"] = "{{ $PRIORITY }}"
    rendered = render(template=template, environ={"PRIORITY": "batch-low"})
    assert rendered.job["spec"]["template"]["spec"]["priorityClassName"] == "batch-low"
    assert (
        "priorityClassName"
        not in render(template=template, environ={}).job["spec"]["template"]["spec"]
    )


# --- custom templates ---------------------------------------------------------------------


def custom(mutate: Any) -> dict[str, Any]:
    template = default_template()
    mutate(template["job_configuration"]["job_manifest"])
    return template


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return result


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (custom(lambda m: m.update(kind="CronJob")), "apiVersion 'batch/v1' and kind 'Job'"),
        (custom(lambda m: m.update(apiVersion="v1")), "apiVersion 'batch/v1' and kind 'Job'"),
        (
            custom(lambda m: pod_spec(m)["containers"].append({"name": "sidecar"})),
            "exactly one container",
        ),
        (custom(lambda m: pod_spec(m).update(containers=[])), "exactly one container"),
        (
            custom(lambda m: pod_spec(m).update(restartPolicy="OnFailure")),
            "restartPolicy must be 'Never'",
        ),
        (
            {
                "job_configuration": {"job_manifest": {"apiVersion": "batch/v1", "kind": "Job"}},
                "variables": {"type": "object"},
            },
            "spec.template.spec must be an object (a pod spec)",
        ),
        (
            custom(lambda m: pod_spec(m).pop("containers")),
            "containers must be a list with one container",
        ),
        (
            {"job_configuration": {"namespace": "x"}, "variables": {"type": "object"}},
            "job_manifest must be a batch/v1 Job",
        ),
        (
            {
                "job_configuration": {"job_manifest": {}, "stream_output": True},
                "variables": {"type": "object"},
            },
            "unknown key(s) 'stream_output'",
        ),
    ],
)
def test_custom_template_errors(template: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        check_kubernetes_template(template)
    assert message in str(caught.value)


def test_custom_template_with_literals_renders() -> None:
    template = {
        "job_configuration": {
            "job_manifest": {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"generateName": "custom-", "labels": {"team": "{{ team }}"}},
                "spec": {
                    "template": {
                        "spec": {
                            "imagePullSecrets": ["literal-creds"],
                            "containers": [
                                {
                                    "name": "main",
                                    "image": "example/flows:{{ tag }}",
                                    "args": ["ignored"],
                                    "env": [{"name": "FROM_TEMPLATE", "value": "1"}],
                                }
                            ],
                        }
                    }
                },
            },
        },
        "variables": {
            "type": "object",
            "properties": {
                "team": {"type": "string", "default": "data"},
                "tag": {"type": "string", "default": "v1"},
            },
        },
    }
    check_kubernetes_template(template)
    rendered = render(template=template)
    validate(rendered.job)
    job = rendered.job
    assert "generateName" not in job["metadata"]
    assert job["metadata"]["name"] == rendered.name
    assert rendered.namespace == job["metadata"]["namespace"] == "default"
    assert job["metadata"]["labels"]["team"] == "data"
    assert rendered.pod_start_timeout_seconds == 300.0
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["imagePullSecrets"] == [{"name": "literal-creds"}]
    main = container(rendered)
    assert main["name"] == "flowyard"
    assert main["image"] == "example/flows:v1"
    assert "args" not in main
    assert "FROM_TEMPLATE" in env_of(rendered)


def test_a_template_without_an_image_fails_to_render() -> None:
    with pytest.raises(TemplateError, match="no image; set the job variable 'image'"):
        render({"image": None})


# --- names --------------------------------------------------------------------------------


def test_job_name() -> None:
    first, second = job_name(RUN_ID, 1), job_name(RUN_ID, 2)
    assert first == f"flowyard-{RUN_ID}-1"
    assert first != second
    assert render(attempt=1).name != render(attempt=2).name
    for name in (first, second, job_name(RUN_ID, 10**12)):
        assert DNS_LABEL.fullmatch(name) and len(name) <= 63


@pytest.mark.parametrize(
    ("run_id", "attempt"), [(RUN_ID.upper(), 1), ("x" * 60, 1), (RUN_ID, 0), ("a_b", 1)]
)
def test_job_name_rejects_what_kubernetes_would(run_id: str, attempt: int) -> None:
    with pytest.raises(ValueError):
        job_name(run_id, attempt)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("etl", "etl"),
        ("My Flow/v2", "My-Flow-v2"),
        ("-._edge_.-", "edge"),
        ("a.b_c-d", "a.b_c-d"),
    ],
)
def test_label_value(value: str, expected: str) -> None:
    assert label_value(value) == expected


def test_long_label_values_are_shortened_and_stay_distinct() -> None:
    first, second = label_value("x" * 100 + "1"), label_value("x" * 100 + "2")
    assert first != second
    for value in (first, second):
        assert len(value) <= 63
        assert LABEL_VALUE.fullmatch(value)


def test_the_ca_reaches_the_engine_through_the_secret() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    rendered = render(EVERY_VARIABLE, tls_ca=pem)
    env = {
        item["name"]: item
        for item in rendered.job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FLOWYARD_TLS_CA_PEM"]["valueFrom"] == {
        "secretKeyRef": {"name": rendered.name, "key": "tls-ca.pem"}
    }
    assert base64.b64decode(rendered.secret["data"]["tls-ca.pem"]).decode() == pem
    validate(rendered.job)
    validate(rendered.secret)
    # Without TLS the engine gets no such variable.
    plain = render(EVERY_VARIABLE)
    names = {item["name"] for item in plain.job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "FLOWYARD_TLS_CA_PEM" not in names and "tls-ca.pem" not in plain.secret["data"]
