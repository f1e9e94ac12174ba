"""A JSON Schema for a flow's parameters, derived from its source without running it.

``flowyard deploy`` calls :func:`parameter_schema` and sends the result to the control plane,
which validates every run's parameters against it (with ``jsonschema``) before the run is
created. Only :mod:`ast` is used: deploying must not import, and so run, the user's code.

Annotations map to JSON Schema as follows; anything not listed is ``{}`` (any value)::

    int → integer     float → number     str → string     bool → boolean     None → null
    list, List[X], tuple[X, ...], set[X] → array (items X)
    dict, Dict[str, X] → object (additionalProperties X)
    X | None, Optional[X], Union[A, B] → anyOf      Literal[a, b] → enum
    Annotated[X, ...] → X                "X" (a string annotation) → as X
    datetime → string (date-time)   date → string (date)   time → string (time)
    UUID → string (uuid)    Path, bytes → string     Decimal → number or string

Classes defined in the same file are read from their source too:

    class Colour(Enum): RED = "red" ...       → enum of the members' values
    class Order(BaseModel): qty: int = 1 ...  → object with the fields (pydantic model)
    @dataclass class Point: x: int ...        → object with the fields, no others
    class Row(TypedDict, total=False): ...    → object with the keys

A class that refers to itself (directly or through others) is ``{}`` where it recurs.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from engine.annotations import annotation_schema, literal_value
from engine.entrypoints import EntrypointKind, parse_entrypoint
from engine.errors import EntrypointImportError, EntrypointNotFound

__all__ = ["annotation_schema", "parameter_schema"]

_FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def parameter_schema(source_dir: Path, entrypoint: str) -> dict[str, Any]:
    """Derive the JSON Schema of the parameters of ``entrypoint``'s function.

    Returns ``{"title": fn, "type": "object", "properties": {...}, "required": [...],
    "additionalProperties": bool}`` (``True`` when the function takes ``**kwargs``).

    Raises:
        InvalidEntrypoint: the entrypoint text is malformed.
        EntrypointNotFound: no such file, module or function under ``source_dir``.
        EntrypointImportError: the file has a syntax error (the message has file:line).
    """
    parsed = parse_entrypoint(entrypoint)
    if parsed.kind is EntrypointKind.FILE:
        path = source_dir / parsed.target
        if not path.is_file():
            raise EntrypointNotFound(
                f"file {parsed.target!r} not found in source directory {str(source_dir)!r}"
            )
        where = f"file {parsed.target!r}"
    else:
        path = _module_file(source_dir, parsed.module_parts)
        where = f"module {parsed.target!r}"
    tree = _parse(path)
    binding = _find_binding(tree.body, parsed.function)
    if binding is None:
        raise EntrypointNotFound(f"function {parsed.function!r} not found in {where}")
    if not isinstance(binding, _FunctionNode):
        # Bound by an import or an assignment: the signature is not in this file, so any
        # object is accepted rather than guessing.
        return {"title": parsed.function, "type": "object", "additionalProperties": True}
    return _function_schema(binding, _classes(tree.body))


def _module_file(source_dir: Path, parts: tuple[str, ...]) -> Path:
    base = source_dir.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    dotted = ".".join(parts)
    raise EntrypointNotFound(
        f"module {dotted!r} not found in source directory {str(source_dir)!r} "
        f"(looked for {'/'.join(parts)}.py and {'/'.join(parts)}/__init__.py)"
    )


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise EntrypointImportError(
            f"syntax error in {exc.filename or path}:{exc.lineno}: {exc.msg}"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise EntrypointNotFound(f"cannot read {str(path)!r}: {exc}") from exc


def _find_binding(body: list[ast.stmt], name: str) -> ast.stmt | None:
    """The last top-level statement that binds ``name``, as it would be after import."""
    found: ast.stmt | None = None
    for node in body:
        if isinstance(node, _FunctionNode | ast.ClassDef) and node.name == name:
            found = node
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any((alias.asname or alias.name.split(".")[0]) == name for alias in node.names):
                found = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found = node
        elif isinstance(node, ast.If | ast.Try):
            # Definitions guarded by `if TYPE_CHECKING`-style or try/except imports.
            branches: list[list[ast.stmt]] = [node.body, node.orelse]
            if isinstance(node, ast.Try):
                branches += [handler.body for handler in node.handlers] + [node.finalbody]
            for branch in branches:
                inner = _find_binding(branch, name)
                if inner is not None:
                    found = inner
    return found


def _classes(body: list[ast.stmt]) -> dict[str, ast.ClassDef]:
    """Top-level classes by name (the last definition wins, as at import)."""
    found: dict[str, ast.ClassDef] = {}
    for node in body:
        if isinstance(node, ast.ClassDef):
            found[node.name] = node
        elif isinstance(node, ast.If | ast.Try):
            for branch in (node.body, node.orelse):
                found.update(_classes(branch))
    return found


def _function_schema(node: _FunctionNode, classes: dict[str, ast.ClassDef]) -> dict[str, Any]:
    args = node.args
    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    pairs = list(zip(positional, defaults, strict=True))
    pairs += list(zip(args.kwonlyargs, args.kw_defaults, strict=True))

    properties: dict[str, Any] = {}
    required: list[str] = []
    for arg, default in pairs:
        prop = annotation_schema(arg.annotation, classes) if arg.annotation is not None else {}
        if default is None:
            required.append(arg.arg)
        else:
            found, value = literal_value(default)
            if found:
                prop = {**prop, "default": value}
        properties[arg.arg] = prop
    return {
        "title": node.name,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": args.kwarg is not None,
    }
