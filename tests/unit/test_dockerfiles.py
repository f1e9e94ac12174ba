"""The documented images build from a checkout, as their docs say, and run what they say.

There is no Docker engine in the test environment, so this reads the Dockerfiles: every COPY
source exists in the build context (the checkout's root) and is not excluded by
``.dockerignore``; no ``pip install`` names a package from an index that does not serve it
(Flowyard is not published); and the files copied for ``pip install .`` build a wheel with
the three console scripts, done here the way the image does it.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [
    ROOT / "Dockerfile",
    ROOT / "Dockerfile.agent",
    ROOT / "examples" / "flow-image" / "Dockerfile",
]


def instructions(dockerfile: Path) -> list[tuple[str, list[str]]]:
    """(instruction, shell-split arguments), continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{dockerfile}: a continuation line ends the file"
    return [(text.split()[0].upper(), shlex.split(text)[1:]) for text in logical]


def copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context."""
    found = []
    for instruction, args in instructions(dockerfile):
        if instruction != "COPY":
            continue
        assert not any(a.startswith("--from") for a in args), "only the build context is used"
        paths = [a for a in args if not a.startswith("--")]
        found.append((paths[:-1], paths[-1]))
    return found


def ignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    return any(
        fnmatch.fnmatch("/".join(parts[: i + 1]), pattern.removeprefix("**/"))
        or fnmatch.fnmatch(parts[i], pattern.removeprefix("**/"))
        for pattern in patterns
        for i in range(len(parts))
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_copy_source_is_in_the_checkout(dockerfile: Path) -> None:
    assert copies(dockerfile), "nothing copied?"
    for sources, _ in copies(dockerfile):
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
            assert not ignored(source), f"{dockerfile.name}: COPY {source} is in .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pip_installs_only_what_the_image_has(dockerfile: Path) -> None:
    """Local paths and requirement files only: 'pip install flowyard' finds nothing to get."""
    installs = 0
    for instruction, args in instructions(dockerfile):
        if instruction != "RUN":
            continue
        words = [w for w in args if w not in ("&&", ";")]
        for i, word in enumerate(words[:-1]):
            if word != "pip" or words[i + 1] != "install":
                continue
            installs += 1
            rest = words[i + 2 :]
            end = next((j for j, w in enumerate(rest) if w in ("rm", "cd")), len(rest))
            targets = [w for w in rest[:end] if not w.startswith("-")]
            requirement_files = {rest[j + 1] for j, w in enumerate(rest[:end]) if w == "-r"}
            for target in targets:
                assert target in requirement_files or target.startswith((".", "/")), (
                    f"{dockerfile.name}: 'pip install {target}' needs a package index that "
                    "serves it; install from the checkout instead"
                )
    assert installs, f"{dockerfile.name} installs nothing?"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_copied_checkout_builds_the_flowyard_wheel(dockerfile: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    # What lands in the WORKDIR where `pip install .` runs: the relative destinations.
    for sources, destination in copies(dockerfile):
        if destination.startswith("/"):
            continue
        for source in sources:
            origin = ROOT / source
            target = context / destination / (origin.name if destination.endswith("/") else "")
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target)
    wheels = tmp_path / "wheels"
    build = ["wheel", "--no-deps", "--no-build-isolation", "-q", "--wheel-dir", str(wheels)]
    result = subprocess.run(
        [sys.executable, "-m", "pip", *build, str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = wheels.glob("flowyard-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    for module in (
        "flowyard/v1/agent_pb2.py",
        "engine/main.py",
        "agent/main.py",
        "flowyard_common/urls.py",
    ):
        assert module in names, module
    for script in ("flowyard ", "flowyard-agent ", "flowyard-engine "):
        assert script in scripts, scripts


def exec_form(dockerfile: Path, instruction: str) -> list[str]:
    """The JSON (exec form) arguments of the one ``instruction`` of ``dockerfile``."""
    [line] = [
        line
        for line in dockerfile.read_text().splitlines()
        if line.upper().startswith(instruction + " ")
    ]
    arguments: list[str] = json.loads(line[len(instruction) :])
    return arguments


def test_the_control_plane_image_runs_the_server_on_every_interface_as_a_user() -> None:
    from control_plane.cli.main import cli
    from control_plane.config import DEFAULT_HTTP_PORT, DEFAULT_PORT

    dockerfile = ROOT / "Dockerfile"
    entrypoint = exec_form(dockerfile, "ENTRYPOINT")
    assert entrypoint == ["flowyard", "server", "start", "--host", "0.0.0.0"]
    # Each word is the command it means: `flowyard server start` takes --host.
    group: Any = cli
    for word in entrypoint[1:3]:
        group = group.commands[word]
    assert "--host" in {name for p in group.params for name in p.opts}
    steps = instructions(dockerfile)
    [user] = [args for instruction, args in steps if instruction == "USER"]
    assert user[0].isdigit() and int(user[0]) != 0, "a numeric uid, so runAsNonRoot can check it"
    env = dict(
        arg.split("=", 1) for instruction, args in steps if instruction == "ENV" for arg in args
    )
    # Writes go to the data directory only (a volume under a read-only root filesystem),
    # which the user owns; the database URL and the admin token come from the environment.
    data_dir = env["FLOWYARD_DATA_DIR"]
    assert any(
        instruction == "RUN" and data_dir in args and f"{user[0]}" in " ".join(args)
        for instruction, args in steps
    ), "the data directory is created for the image's user"
    assert "FLOWYARD_DB_URL" not in env and "FLOWYARD_ADMIN_TOKEN" not in env
    assert [args for instruction, args in steps if instruction == "EXPOSE"] == [
        [str(DEFAULT_PORT), str(DEFAULT_HTTP_PORT)]
    ]
