"""What the API server does to an object before storing it: defaulting, then validation.

Faithful: the defaults a client reads back (Job ``backoffLimit`` 6, ``completions``/``parallelism``
1, the ``controller-uid``/``job-name`` selector and template labels; pod ``restartPolicy``,
``terminationGracePeriodSeconds`` 30, container ``imagePullPolicy``/``terminationMessagePath``,
requests defaulted from limits, ``qosClass``; Secret ``type`` Opaque and ``stringData`` folded
into base64 ``data``), the 422 ``Invalid`` errors for missing names, bad names and label values,
missing containers or images, a Job ``restartPolicy`` other than Never/OnFailure, and immutable
Job templates and pod specs. Simplified: only those rules; no admission plugins, no quotas, no
limit ranges, no service account token volumes.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from tests.fakekube.errors import Cause, bad_request, invalid
from tests.fakekube.resources import JOBS, PODS, SECRETS, Resource

Obj = dict[str, Any]

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

SUBDOMAIN_HELP = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_VALUE_HELP = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
JOB_TRACKING_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")


def default(resource: Resource, obj: Obj) -> None:
    """Fill in what the API server fills in on create (``metadata.uid`` is already set)."""
    if resource is JOBS:
        _default_job(obj)
    elif resource is PODS:
        _default_pod_spec(obj.setdefault("spec", {}), admitted=True)
        status = obj.setdefault("status", {})
        status.setdefault("phase", "Pending")
        status.setdefault("qosClass", _qos_class(obj["spec"]))
    elif resource is SECRETS:
        obj.setdefault("type", "Opaque")
        _fold_string_data(obj)


def validate(resource: Resource, obj: Obj, old: Obj | None = None) -> None:
    """Raise a 422 ``Invalid`` error naming every broken field."""
    meta = obj.get("metadata", {})
    name = meta.get("name", "")
    causes = _meta_causes(resource, meta)
    if resource is JOBS:
        causes += _job_causes(obj, old)
    elif resource is PODS:
        causes += _pod_spec_causes(obj.get("spec", {}), "spec")
        if old is not None and _without_images(obj["spec"]) != _without_images(old["spec"]):
            causes.append(
                Cause(
                    "spec",
                    "FieldValueForbidden",
                    "Forbidden: pod updates may not change "
                    "fields other than `spec.containers[*].image`",
                )
            )
    if causes:
        raise invalid(resource, name, causes)


def _meta_causes(resource: Resource, meta: Obj) -> list[Cause]:
    name = meta.get("name", "")
    if not name:
        return [
            Cause(
                "metadata.name",
                "FieldValueRequired",
                "Required value: name or generateName is required",
            )
        ]
    causes = []
    if len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        causes.append(
            Cause(
                "metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": {SUBDOMAIN_HELP}'
            )
        )
    elif resource is JOBS and len(name) > 63:
        causes.append(
            Cause(
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": must be no more than 63 characters',
            )
        )
    causes += _label_causes(meta.get("labels") or {}, "metadata.labels")
    return causes


def _label_causes(labels: dict[str, str], path: str) -> list[Cause]:
    causes = []
    for key, value in labels.items():
        prefix, _, label_name = key.rpartition("/")
        if (
            not LABEL_NAME.fullmatch(label_name)
            or len(label_name) > 63
            or (prefix and not DNS_SUBDOMAIN.fullmatch(prefix))
        ):
            causes.append(
                Cause(
                    path,
                    "FieldValueInvalid",
                    f'Invalid value: "{key}": name part must '
                    "consist of alphanumeric characters, '-', '_' or '.'",
                )
            )
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            causes.append(
                Cause(path, "FieldValueInvalid", f'Invalid value: "{value}": {LABEL_VALUE_HELP}')
            )
    return causes


def _default_job(job: Obj) -> None:
    meta, spec = job["metadata"], job.setdefault("spec", {})
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    template = spec.setdefault("template", {})
    if not spec.get("manualSelector"):
        tracking = {
            "batch.kubernetes.io/controller-uid": meta["uid"],
            "batch.kubernetes.io/job-name": meta.get("name", ""),
            "controller-uid": meta["uid"],
            "job-name": meta.get("name", ""),
        }
        if "selector" not in spec:
            spec["selector"] = {"matchLabels": {JOB_TRACKING_LABELS[0]: meta["uid"]}}
        template.setdefault("metadata", {}).setdefault("labels", {}).update(tracking)
    _default_pod_spec(template.setdefault("spec", {}), admitted=False)
    job.setdefault("status", {})


def _default_pod_spec(spec: Obj, *, admitted: bool) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for container in spec.get("containers") or []:
        image = str(container.get("image", ""))
        untagged = ":" not in image.rsplit("/", 1)[-1] and "@" not in image
        latest = untagged or image.endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        resources = container.setdefault("resources", {})
        if resources.get("limits"):
            resources["requests"] = {**resources["limits"], **resources.get("requests", {})}
    if admitted:
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        tolerations = spec.setdefault("tolerations", [])
        for taint in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
            tolerations.append(
                {
                    "key": taint,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
            )


def _qos_class(spec: Obj) -> str:
    containers = spec.get("containers") or []
    requests = [c.get("resources", {}).get("requests") or {} for c in containers]
    limits = [c.get("resources", {}).get("limits") or {} for c in containers]
    if not any(requests) and not any(limits):
        return "BestEffort"
    guaranteed = all(
        limit.get(r) is not None and limit.get(r) == request.get(r)
        for request, limit in zip(requests, limits, strict=True)
        for r in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


def _fold_string_data(secret: Obj) -> None:
    data = secret.get("data") or {}
    for key, value in data.items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError) as error:
            raise bad_request(f"illegal base64 data for key {key!r}: {error}") from None
    for key, value in (secret.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        secret["data"] = data


def _job_causes(job: Obj, old: Obj | None) -> list[Cause]:
    spec = job.get("spec", {})
    template = spec.get("template") or {}
    causes = _pod_spec_causes(template.get("spec") or {}, "spec.template.spec")
    restart = (template.get("spec") or {}).get("restartPolicy")
    if restart not in ("Never", "OnFailure"):
        causes.append(
            Cause(
                "spec.template.spec.restartPolicy",
                "FieldValueNotSupported",
                f'Unsupported value: "{restart}": supported values: "OnFailure", "Never"',
            )
        )
    for field in ("backoffLimit", "parallelism", "completions", "activeDeadlineSeconds"):
        value = spec.get(field)
        if value is not None and (not isinstance(value, int) or value < 0):
            causes.append(
                Cause(
                    f"spec.{field}",
                    "FieldValueInvalid",
                    f"Invalid value: {value}: must be greater than or equal to 0",
                )
            )
    causes += _label_causes(
        (template.get("metadata") or {}).get("labels") or {}, "spec.template.metadata.labels"
    )
    if old is None:
        labels = (spec.get("selector") or {}).get("matchLabels") or {}
        uid = job["metadata"]["uid"]
        if not spec.get("manualSelector") and labels.get(JOB_TRACKING_LABELS[0]) != uid:
            causes.append(
                Cause(
                    "spec.selector",
                    "FieldValueInvalid",
                    "Invalid value: `selector` not auto-generated",
                )
            )
    elif spec.get("template") != old["spec"].get("template") or spec.get("selector") != old[
        "spec"
    ].get("selector"):
        causes.append(
            Cause("spec.template", "FieldValueInvalid", "Invalid value: field is immutable")
        )
    return causes


def _pod_spec_causes(spec: Obj, path: str) -> list[Cause]:
    containers = spec.get("containers") or []
    if not containers:
        return [Cause(f"{path}.containers", "FieldValueRequired", "Required value")]
    causes, seen = [], set()
    for index, container in enumerate(containers):
        where = f"{path}.containers[{index}]"
        name = container.get("name", "")
        if not name:
            causes.append(Cause(f"{where}.name", "FieldValueRequired", "Required value"))
        elif not DNS_LABEL.fullmatch(name) or len(name) > 63:
            causes.append(Cause(f"{where}.name", "FieldValueInvalid", f'Invalid value: "{name}"'))
        elif name in seen:
            causes.append(
                Cause(f"{where}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"')
            )
        seen.add(name)
        if not container.get("image"):
            causes.append(Cause(f"{where}.image", "FieldValueRequired", "Required value"))
    restart = spec.get("restartPolicy")
    if restart not in ("Always", "OnFailure", "Never"):
        causes.append(
            Cause(
                f"{path}.restartPolicy",
                "FieldValueNotSupported",
                f'Unsupported value: "{restart}": supported values: "Always", "OnFailure", "Never"',
            )
        )
    return causes


def _without_images(spec: Obj) -> Obj:
    containers = [{**c, "image": None} for c in spec.get("containers") or []]
    # nodeName is set through the binding subresource, which this fake folds into updates.
    mutable = {"tolerations": None, "activeDeadlineSeconds": None, "nodeName": None}
    return {**spec, "containers": containers, **mutable}
