"""Loading entrypoints from files and modules written to a temporary source directory."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from engine.entrypoints import parse_entrypoint
from engine.errors import EntrypointImportError, EntrypointNotFound
from engine.loader import load_entrypoint, module_name_for_path


def write(path: Path, code: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))


def load(source_dir: Path, text: str):  # type: ignore[no-untyped-def]
    return load_entrypoint(parse_entrypoint(text), source_dir)


def test_loads_a_function_from_a_file(source_dir: Path) -> None:
    write(source_dir / "flows" / "hello.py", "def hello(name):\n    return f'hi {name}'\n")

    function = load(source_dir, "flows/hello.py:hello")

    assert function("x") == "hi x"
    assert function.__module__ == "flows.hello"
    assert sys.modules["flows.hello"].__file__ == str(source_dir / "flows" / "hello.py")


def test_a_file_named_like_a_stdlib_module_does_not_replace_it(source_dir: Path) -> None:
    write(source_dir / "json.py", "def main():\n    return 1\n")

    function = load(source_dir, "json.py:main")

    assert function() == 1
    import json

    assert hasattr(json, "dumps")


def test_loads_a_function_from_a_package_module(source_dir: Path) -> None:
    write(source_dir / "pipes" / "__init__.py", "")
    write(
        source_dir / "pipes" / "etl.py", "from .helpers import two\ndef run():\n    return two()\n"
    )
    write(source_dir / "pipes" / "helpers.py", "def two():\n    return 2\n")

    assert load(source_dir, "pipes.etl:run")() == 2


def test_missing_file(source_dir: Path) -> None:
    with pytest.raises(EntrypointNotFound) as caught:
        load(source_dir, "flows/nope.py:main")
    assert str(caught.value) == (
        f"file 'flows/nope.py' not found in source directory '{source_dir}'"
    )


def test_missing_module(source_dir: Path) -> None:
    with pytest.raises(EntrypointNotFound) as caught:
        load(source_dir, "nowhere_to_be_found.mod:main")
    assert "module 'nowhere_to_be_found.mod' not found" in str(caught.value)


def test_missing_function_lists_what_is_there(source_dir: Path) -> None:
    write(
        source_dir / "flow.py", "def a():\n    pass\ndef b():\n    pass\ndef _hidden():\n    pass\n"
    )

    with pytest.raises(EntrypointNotFound) as caught:
        load(source_dir, "flow.py:main")

    assert str(caught.value) == (
        "function 'main' not found in file 'flow.py' (functions defined there: a, b)"
    )


def test_target_not_callable(source_dir: Path) -> None:
    write(source_dir / "flow.py", "main = 42\n")

    with pytest.raises(EntrypointNotFound, match=r"'main' in file 'flow\.py' is not callable"):
        load(source_dir, "flow.py:main")


def test_syntax_error_names_file_and_line(source_dir: Path) -> None:
    write(source_dir / "flow.py", "def main():\n    return (\n\nx = 1\n")

    with pytest.raises(EntrypointImportError) as caught:
        load(source_dir, "flow.py:main")

    message = str(caught.value)
    assert message.startswith(f"syntax error in {source_dir / 'flow.py'}:2:")
    assert "SyntaxError" in message
    assert "flow" not in sys.modules


def test_exception_at_import_carries_the_user_traceback(source_dir: Path) -> None:
    write(source_dir / "flow.py", "def helper():\n    raise RuntimeError('boom')\nhelper()\n")

    with pytest.raises(EntrypointImportError) as caught:
        load(source_dir, "flow.py:main")

    message = str(caught.value)
    assert message.startswith("importing 'flow.py' raised RuntimeError: boom\n\nTraceback")
    assert 'flow.py", line 2, in helper' in message
    assert "importlib" not in message and "engine/loader.py" not in message


def test_a_missing_dependency_is_not_reported_as_a_missing_module(source_dir: Path) -> None:
    write(source_dir / "pipes" / "__init__.py", "")
    write(source_dir / "pipes" / "deps.py", "import not_installed_anywhere\ndef run():\n    pass\n")

    with pytest.raises(EntrypointImportError) as caught:
        load(source_dir, "pipes.deps:run")

    assert "No module named 'not_installed_anywhere'" in str(caught.value)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("flow.py", "flow"),
        ("flows/etl-daily.py", "flows.etl_daily"),
        ("2024/report.py", "_2024.report"),
    ],
)
def test_module_names_derive_from_paths(path: str, name: str) -> None:
    assert module_name_for_path(path) == name


def test_sys_exit_at_import_is_an_import_error(source_dir: Path) -> None:
    write(source_dir / "flow.py", "import sys\nsys.exit(2)\n")

    with pytest.raises(EntrypointImportError, match=r"importing 'flow\.py' raised SystemExit: 2"):
        load(source_dir, "flow.py:main")
