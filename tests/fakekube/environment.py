"""A container's environment as the kubelet builds it, from the pod spec and stored objects.

Faithful: ``envFrom`` (Secrets and ConfigMaps, with ``prefix``) overridden by ``env``; ``value``
with ``$(VAR)`` expansion of earlier variables (``$$`` escapes); ``valueFrom.secretKeyRef`` and
``configMapKeyRef`` (``optional`` honoured), failing with the kubelet's CreateContainerConfigError
messages ``secret "x" not found`` and ``couldn't find key k in Secret ns/x``; ``fieldRef`` for
``metadata.name``/``namespace``/``uid``/``labels['k']``/``annotations['k']``, ``spec.nodeName``,
``spec.serviceAccountName``, ``status.podIP``/``hostIP``. Simplified: ``resourceFieldRef``
resolves to an empty string.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from tests.fakekube.podstatus import HOST_IP
from tests.fakekube.resources import CONFIGMAPS, SECRETS, Resource
from tests.fakekube.store import Store

Obj = dict[str, Any]


class ConfigError(Exception):
    """The container refers to a Secret, ConfigMap or key that does not exist (yet)."""


class Environment:
    """Resolves container environments against the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def resolve(self, pod: Obj, container: Obj) -> dict[str, str]:
        """The container's variables; ``ConfigError`` if a reference is missing."""
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, resource in (("secretRef", SECRETS), ("configMapRef", CONFIGMAPS)):
                if kind in source:
                    ref = source[kind]
                    values = self._lookup(
                        resource, namespace, ref["name"], ref.get("optional", False)
                    )
                    env.update({prefix + k: v for k, v in (values or {}).items()})
        for var in container.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = expand(str(var.get("value", "")), env)
                continue
            value = self._value_from(pod, var["valueFrom"])
            if value is not None:
                env[var["name"]] = value
        return env

    def _value_from(self, pod: Obj, source: Obj) -> str | None:
        namespace = pod["metadata"]["namespace"]
        for kind, resource, label in (
            ("secretKeyRef", SECRETS, "Secret"),
            ("configMapKeyRef", CONFIGMAPS, "ConfigMap"),
        ):
            if kind in source:
                ref, optional = source[kind], source[kind].get("optional", False)
                values = self._lookup(resource, namespace, ref["name"], optional)
                if values is None:
                    return None
                if ref["key"] not in values:
                    if optional:
                        return None
                    raise ConfigError(
                        f"couldn't find key {ref['key']} in {label} {namespace}/{ref['name']}"
                    )
                return values[ref["key"]]
        if "fieldRef" in source:
            return field_value(pod, source["fieldRef"]["fieldPath"])
        return ""

    def _lookup(
        self, resource: Resource, namespace: str, name: str, optional: bool
    ) -> dict[str, str] | None:
        obj = self._store.find(resource, namespace, name)
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{resource.kind.lower()} "{name}" not found')
        if resource is SECRETS:
            return {
                k: base64.b64decode(v).decode(errors="replace")
                for k, v in (obj.get("data") or {}).items()
            }
        return dict(obj.get("data") or {})


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known variables are replaced, ``$$`` escapes."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def field_value(pod: Obj, path: str) -> str:
    """The value of a ``fieldRef.fieldPath`` for this pod."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    if match := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return str((meta.get(match[1]) or {}).get(match[2], ""))
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": HOST_IP,
        "status.hostIP": HOST_IP,
    }
    return str(values.get(path, status.get(path, "")))
