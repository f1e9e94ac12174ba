"""What the engine imports stays light: what the control plane and the CLI import from it is
pure, and starting an engine loads nothing a run does not need before the flow's first line.

Every run pays for the engine's imports (in CPU, and in memory per engine), so the engine
must not pull in the control plane's or the agent's dependencies, nor what only some sources
need. Checked in a fresh interpreter, as a run starts.
"""

from __future__ import annotations

import json
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


def test_entrypoints_and_schema_import_no_grpc() -> None:
    script = textwrap.dedent(
        """
        import sys
        import engine.entrypoints, engine.schema
        assert not any(m.split(".")[0] in ("grpc", "google") for m in sys.modules), "grpc"
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


#: Packages the engine must never load before user code: a database layer, the Kubernetes
#: client, JSON Schema, the CLI's terminal toolkit, and the other Flowyard components.
DENIED = (
    "sqlalchemy",
    "alembic",
    "aiosqlite",
    "psycopg",
    "kubernetes",
    "jsonschema",
    "yaml",
    "rich",
    "click",
    "control_plane",
    "agent",
)
#: Loaded only by sources that download code (git, archives), not by a local-source run.
ONLY_FOR_DOWNLOADS = ("tempfile", "shutil", "zipfile", "tarfile", "urllib.request", "hashlib")

SCRIPT = """
import json, sys
import engine.main, engine.storage, engine.flow
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by_the_engine() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_engine_loads_nothing_on_the_deny_list_nor_download_only_modules() -> None:
    loaded = loaded_by_the_engine()
    denied = sorted(m for m in loaded if m.split(".")[0] in DENIED)
    assert not denied, f"the engine imports {denied}"
    for_downloads = sorted(m for m in ONLY_FOR_DOWNLOADS if m in loaded)
    assert not for_downloads, f"the engine imports {for_downloads} before a run needs them"
