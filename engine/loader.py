"""Loading the flow function that an entrypoint names.

``path/to/file.py:fn`` is loaded from the file with :mod:`importlib` under a module name
derived from its path (``path.to.file``), registered in ``sys.modules`` so that pickling,
dataclasses and ``typing.get_type_hints`` work on the user's objects. ``package.module:fn`` is
imported normally; the runner has already put the source directory first on ``sys.path``.

Errors name exactly what is missing. When the user's module itself raises while being
imported (a syntax error, a failing import, any exception at module level), the message
carries the user's traceback: that is the information needed to fix it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.entrypoints import Entrypoint, EntrypointKind
from engine.errors import EntrypointImportError, EntrypointNotFound
from engine.tracebacks import format_user_traceback

__all__ = ["load_entrypoint", "module_name_for_path"]


def load_entrypoint(entrypoint: Entrypoint, source_dir: Path) -> Callable[..., Any]:
    """Import the entrypoint's module and return its function.

    Raises:
        EntrypointNotFound: the file, module or function does not exist, or is not callable.
        EntrypointImportError: the module raised while being imported.
    """
    if entrypoint.kind is EntrypointKind.FILE:
        module = _load_file(source_dir, entrypoint.target)
        where = f"file {entrypoint.target!r}"
    else:
        module = _import_module(entrypoint.target, source_dir)
        where = f"module {entrypoint.target!r}"
    return _get_function(module, entrypoint.function, where)


def module_name_for_path(relative_path: str) -> str:
    """``"flows/etl-daily.py"`` → ``"flows.etl_daily"``: a valid dotted name for the file."""
    without_suffix = relative_path.removesuffix(".py")
    parts = [re.sub(r"\W", "_", part) or "_" for part in without_suffix.split("/")]
    parts = [f"_{part}" if part[0].isdigit() else part for part in parts]
    return ".".join(parts)


def _load_file(source_dir: Path, relative_path: str) -> ModuleType:
    path = source_dir / relative_path
    if not path.is_file():
        raise EntrypointNotFound(
            f"file {relative_path!r} not found in source directory {str(source_dir)!r}"
        )
    name = module_name_for_path(relative_path)
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) != str(path):
        # A file called e.g. "json.py" must not replace the standard library's module for
        # the rest of the process.
        name = f"_flowyard_flow_.{name}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EntrypointNotFound(f"file {relative_path!r} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise EntrypointImportError(_syntax_error_message(exc, relative_path)) from exc
    except (Exception, SystemExit) as exc:  # sys.exit() at module level too
        del sys.modules[name]
        raise EntrypointImportError(
            f"importing {relative_path!r} raised {type(exc).__name__}: {exc}\n\n"
            f"{format_user_traceback(exc)}"
        ) from exc
    return module


def _import_module(name: str, source_dir: Path) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise EntrypointNotFound(
                f"module {name!r} not found (looked in source directory {str(source_dir)!r} "
                f"and the installed packages)"
            ) from exc
        raise EntrypointImportError(
            f"importing module {name!r} raised ModuleNotFoundError: {exc}\n\n"
            f"{format_user_traceback(exc)}"
        ) from exc
    except SyntaxError as exc:
        raise EntrypointImportError(_syntax_error_message(exc, name)) from exc
    except (Exception, SystemExit) as exc:  # sys.exit() at module level too
        raise EntrypointImportError(
            f"importing module {name!r} raised {type(exc).__name__}: {exc}\n\n"
            f"{format_user_traceback(exc)}"
        ) from exc


def _syntax_error_message(exc: SyntaxError, what: str) -> str:
    location = f"{exc.filename or what}:{exc.lineno}" if exc.lineno else (exc.filename or what)
    return f"syntax error in {location}: {exc.msg}\n\n{format_user_traceback(exc)}"


def _get_function(module: ModuleType, function: str, where: str) -> Callable[..., Any]:
    try:
        target = getattr(module, function)
    except AttributeError:
        raise EntrypointNotFound(
            f"function {function!r} not found in {where}{_available_functions(module)}"
        ) from None
    if not callable(target):
        raise EntrypointNotFound(
            f"{function!r} in {where} is not callable (it is a {type(target).__name__})"
        )
    return target  # type: ignore[no-any-return]


def _available_functions(module: ModuleType) -> str:
    names = sorted(
        name
        for name, value in vars(module).items()
        if inspect.isfunction(value)
        and value.__module__ == module.__name__
        and not name.startswith("_")
    )
    return f" (functions defined there: {', '.join(names)})" if names else ""
