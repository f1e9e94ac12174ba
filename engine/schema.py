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
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from engine.entrypoints import EntrypointKind, parse_entrypoint
from engine.errors import EntrypointImportError, EntrypointNotFound

__all__ = ["annotation_schema", "parameter_schema"]

_FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef

_SCALARS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "str": {"type": "string"},
    "bool": {"type": "boolean"},
    "None": {"type": "null"},
    "NoneType": {"type": "null"},
}
_ARRAYS = {"list", "List", "tuple", "Tuple", "set", "Set", "frozenset", "FrozenSet", "Sequence"}
_OBJECTS = {"dict", "Dict", "Mapping"}


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
    return _function_schema(binding)


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


def _function_schema(node: _FunctionNode) -> dict[str, Any]:
    args = node.args
    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    pairs = list(zip(positional, defaults, strict=True))
    pairs += list(zip(args.kwonlyargs, args.kw_defaults, strict=True))

    properties: dict[str, Any] = {}
    required: list[str] = []
    for arg, default in pairs:
        prop = annotation_schema(arg.annotation) if arg.annotation is not None else {}
        if default is None:
            required.append(arg.arg)
        else:
            found, value = _literal(default)
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


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None
    return _jsonable(value)


def _jsonable(value: Any) -> tuple[bool, Any]:
    if value is None or isinstance(value, bool | int | float | str):
        return True, value
    if isinstance(value, list | tuple | set | frozenset):
        items = [_jsonable(item) for item in value]
        return all(ok for ok, _ in items), [item for _, item in items]
    if isinstance(value, dict):
        pairs = {key: _jsonable(item) for key, item in value.items()}
        ok = all(isinstance(key, str) for key in pairs) and all(k for k, _ in pairs.values())
        return ok, {key: item for key, (_, item) in pairs.items()}
    return False, None


def _name_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):  # typing.List, t.Optional
        return node.attr
    if isinstance(node, ast.Constant) and node.value is None:
        return "None"
    return None


def annotation_schema(node: ast.expr) -> dict[str, Any]:
    """The JSON Schema of one annotation expression (``{}`` when unknown)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            expression = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return {}
        return annotation_schema(expression)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _any_of([annotation_schema(node.left), annotation_schema(node.right)])
    if isinstance(node, ast.Subscript):
        return _subscript_schema(node)
    name = _name_of(node)
    if name in _SCALARS:
        return dict(_SCALARS[name])
    if name in _ARRAYS:
        return {"type": "array"}
    if name in _OBJECTS:
        return {"type": "object"}
    return {}


def _subscript_schema(node: ast.Subscript) -> dict[str, Any]:
    base = _name_of(node.value)
    args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
    if base == "Optional" and len(args) == 1:
        return _any_of([annotation_schema(args[0]), {"type": "null"}])
    if base == "Union":
        return _any_of([annotation_schema(arg) for arg in args])
    if base == "Annotated" and args:
        return annotation_schema(args[0])
    if base == "Literal":
        literals = [_literal(arg) for arg in args]
        if all(ok for ok, _ in literals):
            return {"enum": [value for _, value in literals]}
        return {}
    if base in _ARRAYS:
        schema: dict[str, Any] = {"type": "array"}
        if base in ("tuple", "Tuple") and not (
            len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis
        ):
            # Fixed-length tuple[A, B]: one schema per position.
            schema["prefixItems"] = [annotation_schema(arg) for arg in args]
            schema["minItems"] = schema["maxItems"] = len(args)
            return schema
        items = annotation_schema(args[0])
        if items:
            schema["items"] = items
        return schema
    if base in _OBJECTS:
        schema = {"type": "object"}
        if len(args) == 2:
            values = annotation_schema(args[1])
            if values:
                schema["additionalProperties"] = values
        return schema
    return {}


def _any_of(options: list[dict[str, Any]]) -> dict[str, Any]:
    flat: list[dict[str, Any]] = []
    for option in options:
        if option == {}:
            return {}  # "anything" absorbs the union
        members = option["anyOf"] if set(option) == {"anyOf"} else [option]
        for inner in members:
            if inner not in flat:
                flat.append(inner)
    return flat[0] if len(flat) == 1 else {"anyOf": flat}
