"""What the control plane and the CLI import from the engine stays pure and light."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import engine.entrypoints
import engine.schema


def test_public_exports() -> None:
    assert engine.entrypoints.__all__ == [
        "Entrypoint",
        "EntrypointKind",
        "InvalidEntrypoint",
        "parse_entrypoint",
    ]
    assert engine.schema.__all__ == ["annotation_schema", "parameter_schema"]


def test_entrypoints_and_schema_import_no_grpc_and_the_engine_no_database() -> None:
    script = textwrap.dedent(
        """
        import sys
        import engine.entrypoints, engine.schema
        assert not any(m.split(".")[0] in ("grpc", "google") for m in sys.modules), "grpc"
        import engine.main
        heavy = ("sqlalchemy", "kubernetes", "jsonschema", "agent", "control_plane", "alembic")
        assert not any(m.split(".")[0] in heavy for m in sys.modules), "heavy"
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
