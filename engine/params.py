"""Binding a run's JSON parameters to the flow function's signature.

The run's parameters are a JSON object. Each key must name a parameter of the function
(unless it takes ``**kwargs``) and every parameter without a default must be given; the
errors name the offending parameter and list the accepted ones. Values are coerced to the
annotated type where JSON cannot express it (enums, dates, models, tuples...: see
:mod:`engine.coercion`); a value that cannot be converted fails the run naming the parameter.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.coercion import CoercionError, coerce
from engine.errors import ParameterError

__all__ = ["BoundCall", "bind_parameters", "coerce"]

_REPR_LIMIT = 200


@dataclass(frozen=True)
class BoundCall:
    """Arguments ready to call the flow function with."""

    function_name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """``hello('x', name='world')``, each value's repr cut to keep log lines short."""
        shown = [_short_repr(value) for value in self.args]
        shown += [f"{name}={_short_repr(value)}" for name, value in self.kwargs.items()]
        return f"{self.function_name}({', '.join(shown)})"


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 1] + "…"


def bind_parameters(function: Callable[..., Any], parameters: Mapping[str, Any]) -> BoundCall:
    """Match ``parameters`` to ``function``'s signature, coercing values where unambiguous.

    Raises:
        ParameterError: a parameter is unknown or a required one is missing.
    """
    name = getattr(function, "__name__", type(function).__name__)
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        # Some builtins and C callables have no introspectable signature: pass the
        # parameters through and let the call itself complain.
        return BoundCall(name, (), dict(parameters))
    hints = _type_hints(function)
    accepted = [
        p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    takes_extras = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    accepted_text = _accepted_text(accepted, takes_extras)

    unknown = [key for key in parameters if key not in {p.name for p in accepted}]
    if unknown and not takes_extras:
        plural = "s" if len(unknown) > 1 else ""
        raise ParameterError(
            f"unknown parameter{plural} {_names(unknown)} for {name}(); {accepted_text}"
        )
    missing = [p.name for p in accepted if p.default is p.empty and p.name not in parameters]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise ParameterError(
            f"missing required parameter{plural} {_names(missing)} for {name}(); {accepted_text}"
        )

    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for param in accepted:
        if param.name not in parameters:
            continue
        try:
            value = coerce(parameters[param.name], hints.get(param.name, param.annotation))
        except CoercionError as exc:
            raise ParameterError(f"parameter {param.name!r} of {name}(): {exc}") from None
        if param.kind is param.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[param.name] = value
    for key in unknown:
        kwargs[key] = parameters[key]
    return BoundCall(name, tuple(args), kwargs)


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _accepted_text(accepted: list[inspect.Parameter], takes_extras: bool) -> str:
    listed = ", ".join(p.name for p in accepted)
    text = "it accepts no parameters" if not accepted else f"accepted parameters: {listed}"
    return text + (" (and any other, through **kwargs)" if takes_extras else "")


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:
        # Unresolvable forward references are the user's business, not a reason to fail
        # the run: coercion then falls back to the raw (possibly string) annotations.
        return {}
