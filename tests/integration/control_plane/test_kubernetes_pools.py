"""Kubernetes pools at the API: the default template, strict job variables, the dry run."""

import json

import grpc
import kubernetes_validate
import pytest

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

from .conftest import Plane, agent_stream

K8S_VERSION = "1.30"


async def kubernetes_pool(plane: Plane, template: str = "") -> types_pb2.WorkPool:
    response = await plane.control.CreatePool(
        pb.CreatePoolRequest(
            name="k8s", type=types_pb2.POOL_TYPE_KUBERNETES, base_job_template_json=template
        )
    )
    return response.pool


async def deploy(plane: Plane, job_variables: dict[str, object]) -> None:
    await plane.control.UpsertDeployment(
        pb.UpsertDeploymentRequest(
            deployment=types_pb2.Deployment(
                name="etl",
                entrypoint="flows/etl.py:main",
                source=types_pb2.Source(local=types_pb2.LocalSource(path="/opt/code")),
                pool="k8s",
                job_variables_json=json.dumps(job_variables),
            )
        )
    )


async def test_default_template_declares_the_kubernetes_variables(plane: Plane) -> None:
    pool = await kubernetes_pool(plane)
    variables = json.loads(pool.base_job_template_json)["variables"]["properties"]
    assert {
        "image",
        "image_pull_policy",
        "image_pull_secrets",
        "namespace",
        "service_account_name",
        "env",
        "labels",
        "annotations",
        "cpu_request",
        "cpu_limit",
        "memory_request",
        "memory_limit",
        "node_selector",
        "tolerations",
        "backoff_limit",
        "finished_job_ttl",
        "pod_start_timeout_seconds",
    } <= set(variables)


async def test_undeclared_job_variable_is_rejected_at_deploy_and_run_time(plane: Plane) -> None:
    await kubernetes_pool(plane)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await deploy(plane, {"memory": "1Gi"})
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown job variable 'memory'" in (error.value.details() or "")
    assert "memory_limit" in (error.value.details() or "")  # the allowed keys are listed

    await deploy(plane, {"image": "reg/flows:1"})
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await plane.control.CreateRun(
            pb.CreateRunRequest(deployment_name="etl", job_variables_json='{"cpu": "2"}')
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown job variable 'cpu'" in (error.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await plane.control.CreateRun(
            pb.CreateRunRequest(deployment_name="etl", job_variables_json='{"backoff_limit": -1}')
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "backoff_limit" in (error.value.details() or "")
    runs = await plane.control.ListRuns(pb.ListRunsRequest())
    assert not runs.runs


async def test_render_is_a_valid_job_without_the_token(plane: Plane) -> None:
    await kubernetes_pool(plane)
    await deploy(plane, {"image": "reg/flows:1", "env": {"A": "1"}, "cpu_limit": "500m"})
    response = await plane.control.RenderDeployment(
        pb.RenderDeploymentRequest(
            deployment_name="etl", job_variables_json='{"env": {"B": "2"}, "namespace": "jobs"}'
        )
    )
    job = json.loads(response.manifest_json)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "jobs"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/flows:1"
    assert container["command"][:2] == ["flowyard-engine", "execute"]
    env = {e["name"]: e for e in container["env"]}
    assert env["A"]["value"] == "1" and env["B"]["value"] == "2"  # run env merged over deployment's
    assert "secretKeyRef" in env["FLOWYARD_RUN_TOKEN"]["valueFrom"]
    assert container["resources"]["limits"]["cpu"] == "500m"
    assert json.loads(response.job_variables_json)["pod_start_timeout_seconds"] > 0


async def test_custom_template_must_declare_its_placeholders(plane: Plane) -> None:
    from agent.kubernetes.manifests import default_template

    template = default_template()
    template["job_configuration"]["job_manifest"]["metadata"]["annotations"] = "{{ extra }}"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await kubernetes_pool(plane, json.dumps(template))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "extra" in (error.value.details() or "")


async def test_job_variables_keep_their_order_through_storage_and_the_dry_run(
    plane: Plane,
) -> None:
    await kubernetes_pool(plane)
    env = {"SERVICE_HOST": "api", "API_URL": "http://$(SERVICE_HOST)/v1", "B": "x"}
    await deploy(plane, {"image": "reg/flows:1", "env": env})
    stored = await plane.control.GetDeployment(pb.GetDeploymentRequest(name="etl"))
    assert list(json.loads(stored.deployment.job_variables_json)["env"]) == list(env)
    response = await plane.control.RenderDeployment(
        pb.RenderDeploymentRequest(deployment_name="etl", job_variables_json='{"env": {"Z": "1"}}')
    )
    container = json.loads(response.manifest_json)["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    # The deployment's in its order, the run's new names after them, then the engine's.
    assert names[:4] == ["SERVICE_HOST", "API_URL", "B", "Z"]


async def test_assignments_carry_the_pools_template_as_stored_keys_in_order(
    plane: Plane,
) -> None:
    """Every assignment of a dispatch pass carries its pool's whole template, the text the
    pool's own read gives (so a ``$(VAR)`` of the env still follows what it names)."""
    pool = await kubernetes_pool(plane)
    await deploy(plane, {"image": "reg/flows:1"})
    created = [
        (await plane.control.CreateRun(pb.CreateRunRequest(deployment_name="etl"))).run.id
        for _ in range(3)
    ]
    stream = agent_stream(plane, pool="k8s", capacity=3, runtime="kubernetes")
    await stream.receive("welcome")
    assigned = [await stream.receive("assign") for _ in created]
    assert sorted(a.run_id for a in assigned) == sorted(created)
    for assign in assigned:
        assert assign.base_job_template_json == pool.base_job_template_json
    stream.send(None)


async def test_the_dry_run_of_a_process_pool_says_what_runs(plane: Plane) -> None:
    await plane.control.CreatePool(
        pb.CreatePoolRequest(name="local", type=types_pb2.POOL_TYPE_PROCESS)
    )
    await plane.control.UpsertDeployment(
        pb.UpsertDeploymentRequest(
            deployment=types_pb2.Deployment(
                name="local-etl",
                entrypoint="flows/etl.py:main",
                source=types_pb2.Source(local=types_pb2.LocalSource(path="/opt/code")),
                pool="local",
                job_variables_json=json.dumps({"env": {"Z_FIRST": "1", "A_SECOND": "2"}}),
            )
        )
    )
    response = await plane.control.RenderDeployment(
        pb.RenderDeploymentRequest(deployment_name="local-etl")
    )
    plan = json.loads(response.manifest_json)["process"]
    assert plan["command"][1:] == ["execute", "0" * 32]
    assert "--engine-command" in plan["command"][0]
    assert plan["working_directory"].endswith(f"/{'0' * 32}-1")
    assert list(plan["environment"]) == [
        "Z_FIRST",
        "A_SECOND",
        "FLOWYARD_SERVER",
        "FLOWYARD_RUN_ID",
        "FLOWYARD_RUN_ATTEMPT",
        "FLOWYARD_RUN_TOKEN",
    ]
    assert plan["environment"]["FLOWYARD_RUN_TOKEN"] == "<the attempt's engine token>"
    assert "FLOWYARD_TOKEN" in plan["inherits"]
