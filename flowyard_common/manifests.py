"""Kubernetes manifests as the YAML that ``kubectl apply -f -`` reads.

``flowyard agent install`` and ``flowyard server install`` print their objects the same way:
one multi-document stream, keys in the order they were built, no YAML anchors.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["DNS_LABEL", "DNS_SUBDOMAIN", "is_secret_name", "namespace_manifest", "to_yaml"]

#: A DNS-1123 label: object and namespace names.
DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
#: The characters and ends of a DNS-1123 subdomain (Secret names, at most 253 characters).
DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def is_secret_name(name: str) -> bool:
    """Whether Kubernetes takes ``name`` as a Secret's name."""
    return len(name) <= 253 and DNS_SUBDOMAIN.fullmatch(name) is not None


def namespace_manifest(name: str) -> dict[str, Any]:
    """The Namespace an install creates. Without an instance label: removing an install by
    its label leaves the namespace, and whatever else lives in it, alone."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "flowyard"}},
    }


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    """``manifests`` as one multi-document YAML stream, keys in the order they were built."""
    import yaml

    class Dumper(yaml.SafeDumper):
        # Objects used twice are written out twice: kubectl users read these files, and
        # "&id001"/"*id001" anchors would only puzzle them.
        def ignore_aliases(self, data: Any) -> bool:
            return True

    text: str = yaml.dump_all(manifests, Dumper=Dumper, sort_keys=False, default_flow_style=False)
    return text
