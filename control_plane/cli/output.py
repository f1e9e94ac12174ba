"""How the CLI prints: tables, documents (``-o json|yaml``), runs, states, log lines, errors.

Everything printed comes from users or the server (names, log lines, state messages, error
details), so it is printed literally: the consoles have rich's markup and emoji codes off,
and the only styles are the ones given as ``style=`` arguments. ``[red]x`` or a regex such
as ``[numkMGTPE]`` prints as it is.

Tables never cut what a user copies (ids, hashes, times): those columns are ``whole``.
On a terminal the other columns wrap to fit its width (and the table grows past it rather
than cut a whole column); anywhere else (a pipe, a file) nothing wraps and nothing is cut.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, TypeVar

import click
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from flowyard.v1 import types_pb2

console = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
errors = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)

STATE_STYLES = {
    "COMPLETED": "bold green",
    "FAILED": "bold red",
    "CRASHED": "bold red",
    "CANCELLED": "yellow",
    "CANCELLING": "yellow",
    "RUNNING": "cyan",
    "PENDING": "blue",
    "SCHEDULED": "dim",
}
LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
LEVEL_STYLES = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold red", "DEBUG": "dim"}

#: What ``-o`` takes: a table for people, documents for scripts (shapes in docs/cli.md).
FORMATS = ("table", "json", "yaml")
#: Spaces between columns (rich's default padding of a cell, one each side).
_GAP = 2
#: How narrow a wrapping column may get on a narrow terminal before the table outgrows it.
_NARROWEST = 8

F = TypeVar("F", bound=Callable[..., Any])


def error(message: str) -> None:
    """Print ``error: <message>`` on stderr: the one form of every error the CLI reports."""
    errors.print(f"error: {message}")


def format_option(command: F) -> F:
    """The ``-o/--output table|json|yaml`` option of listing and show commands."""
    return click.option(
        "--output",
        "-o",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table for people; json or yaml for scripts (shapes in docs/cli.md).",
    )(command)


def print_document(document: Any, fmt: str) -> None:
    """Print a document as JSON (indented, UTF-8) or YAML, bypassing rich entirely."""
    if fmt == "json":
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        import yaml

        click.echo(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), nl=False)


@dataclass(frozen=True)
class Column:
    """A table column; a ``whole`` one (ids, hashes, times) is never wrapped or cut."""

    header: str
    whole: bool = False


def print_table(
    columns: Sequence[Column], rows: Iterable[Sequence[RenderableType]], title: str = ""
) -> None:
    """Print rows under headers, without borders."""
    rows = [list(row) for row in rows]
    table = Table(box=None, pad_edge=False, title=title or None, title_justify="left")
    natural = [
        max([_width(column.header), *(_width(row[i]) for row in rows)])
        for i, column in enumerate(columns)
    ]
    widths = _fit(columns, natural, console.width) if console.is_terminal else natural
    for column, width in zip(columns, widths, strict=True):
        table.add_column(column.header, no_wrap=column.whole, overflow="fold", width=width)
    for row in rows:
        table.add_row(*row)
    # print(width=...) cannot exceed the console's width, so the console widens for the call
    # when the table needs more than the terminal has.
    terminal_width = console.width
    console.width = max(terminal_width, sum(widths) + _GAP * (len(widths) - 1))
    try:
        if console.is_terminal:
            console.print(table, crop=False)
            return
        # Cells are padded to their column's width; a pipe gets lines without trailing blanks.
        with console.capture() as captured:
            console.print(table, crop=False)
    finally:
        console.width = terminal_width
    click.echo("".join(line.rstrip() + "\n" for line in captured.get().splitlines()), nl=False)


def _fit(columns: Sequence[Column], natural: list[int], terminal: int) -> list[int]:
    """Column widths for a terminal: whole columns as they are, the others share the rest.

    A wrapping column keeps at least its header (or, on a narrower terminal, _NARROWEST
    characters) unless its cells are narrower; what is left goes to the narrow columns
    first, so only the widest wrap. If even that does not fit, the table is wider than the
    terminal rather than cut a whole column.
    """
    room = terminal - _GAP * (len(columns) - 1)
    room -= sum(n for c, n in zip(columns, natural, strict=True) if c.whole)
    shared = [i for i, c in enumerate(columns) if not c.whole]
    if sum(natural[i] for i in shared) <= room:
        return list(natural)
    with_headers = {i: min(natural[i], max(_width(columns[i].header), _NARROWEST)) for i in shared}
    narrowest = {i: min(natural[i], _NARROWEST) for i in shared}
    for floors in (with_headers, narrowest):
        widths = _share(room, natural, floors)
        if widths is not None:
            return widths
    return [narrowest.get(i, n) for i, n in enumerate(natural)]


def _share(room: int, natural: list[int], floors: dict[int, int]) -> list[int] | None:
    """Widths of the columns in ``floors`` that fill ``room``, capped alike, or None."""

    def capped(cap: int) -> dict[int, int]:
        return {i: min(natural[i], max(floor, cap)) for i, floor in floors.items()}

    if sum(floors.values()) > room:
        return None
    # The largest cap under which they fit; the room left under the next cap goes to the
    # columns that still want more, a character each.
    cap = max(c for c in range(1, max(natural) + 1) if sum(capped(c).values()) <= room)
    chosen = capped(cap)
    spare = room - sum(chosen.values())
    widths = list(natural)
    for i, width in chosen.items():
        widths[i] = width
        if spare and natural[i] > width:
            widths[i] += 1
            spare -= 1
    return widths


def _width(cell: RenderableType) -> int:
    """The width of a cell's longest line."""
    text = cell.plain if isinstance(cell, Text) else str(cell)
    return max((cell_len(line) for line in text.splitlines()), default=0)


def print_fields(fields: Iterable[tuple[str, RenderableType]]) -> None:
    """Print ``Label  value`` lines, labels aligned; values are never wrapped or cut."""
    fields = list(fields)
    width = max((len(label) for label, _ in fields), default=0) + 2
    for label, value in fields:
        line = Text(f"{label:<{width}}", style="bold")
        line.append(value if isinstance(value, Text) else Text(str(value)))
        console.print(line)


def state_name(state_type: types_pb2.StateType.ValueType) -> str:
    """``COMPLETED`` for ``STATE_TYPE_COMPLETED``."""
    return types_pb2.StateType.Name(state_type).removeprefix("STATE_TYPE_")


def state_text(state: types_pb2.RunState) -> Text:
    """A coloured state, e.g. ``COMPLETED`` or ``PENDING (Submitted)``."""
    name = state_name(state.type)
    label = name if state.name.upper() == name else f"{name} ({state.name})"
    return Text(label, style=STATE_STYLES.get(name, ""))


def first_line(message: str) -> str:
    """The first line of a state message (a traceback's first line), or ``""``."""
    return message.strip().splitlines()[0] if message.strip() else ""


def utc_time(timestamp: Any) -> str:
    """A protobuf Timestamp as ISO 8601 in UTC, to the second."""
    return str(timestamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds"))


def level_name(level: int) -> str:
    """The logging level name of a level number."""
    return LEVELS.get(level, f"LEVEL{level}")


class _Clock:
    """``HH:MM:SS.mmm`` (UTC) of Timestamps; lines come many to the second, so the
    ``HH:MM:SS`` of the last second is kept."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def of(self, timestamp: Any) -> str:
        if timestamp.seconds != self._second:
            self._second = timestamp.seconds
            self._text = time.strftime("%H:%M:%S", time.gmtime(timestamp.seconds))
        return f"{self._text}.{timestamp.nanos // 1_000_000:03d}"


def print_lines(lines: Iterable[types_pb2.LogLine], show_attempt: bool = False) -> None:
    """Print log lines as ``HH:MM:SS.mmm LEVEL    text``: coloured on a terminal; to a pipe
    or a file as plain text, written (and flushed, for a follower) once per call rather than
    rendered line by line."""
    clock = _Clock()
    if not console.is_terminal:
        plain = "".join(
            f"{clock.of(line.timestamp)} "
            f"{f'[{line.attempt}] ' if show_attempt else ''}"
            f"{level_name(line.level):<8} {line.text}\n"
            for line in lines
        )
        console.file.write(plain)
        console.file.flush()
        return
    for line in lines:
        when = clock.of(line.timestamp)
        level = level_name(line.level)
        text = Text(f"{when} ")
        if show_attempt:
            text.append(f"[{line.attempt}] ", style="dim")
        text.append(f"{level:<8} ", style=LEVEL_STYLES.get(level, ""))
        text.append(line.text)
        console.print(text)


def print_runs(runs: Iterable[types_pb2.FlowRun]) -> None:
    """A table of runs."""
    columns = [
        Column("RUN", whole=True),
        Column("DEPLOYMENT"),
        Column("STATE"),
        Column("ATTEMPT"),
        Column("CREATED", whole=True),
        Column("AGENT"),
    ]
    print_table(
        columns,
        (
            (
                run.id,
                run.deployment_name,
                state_text(run.state),
                str(run.attempt),
                run.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
                run.agent_name,
            )
            for run in runs
        ),
    )
