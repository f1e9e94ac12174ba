"""Kubernetes manifests as the YAML that ``kubectl apply -f -`` reads.

``flowyard agent install`` and ``flowyard server install`` print their objects the same way:
one multi-document stream, keys in the order they were built, no YAML anchors.
"""

from __future__ import annotations

from typing import Any

__all__ = ["to_yaml"]


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
