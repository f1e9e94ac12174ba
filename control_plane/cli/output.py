"""How the CLI prints runs, states and log lines."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from flowyard.v1 import types_pb2

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

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


def print_lines(lines: Iterable[types_pb2.LogLine], show_attempt: bool = False) -> None:
    """Print log lines as ``HH:MM:SS.mmm LEVEL    text``."""
    for line in lines:
        when = line.timestamp.ToDatetime().strftime("%H:%M:%S.%f")[:-3]
        level = level_name(line.level)
        text = Text(f"{when} ")
        if show_attempt:
            text.append(f"[{line.attempt}] ", style="dim")
        text.append(f"{level:<8} ", style=LEVEL_STYLES.get(level, ""))
        text.append(line.text)
        console.print(text)


def runs_table(runs: Iterable[types_pb2.FlowRun]) -> Table:
    """A table of runs."""
    table = Table(box=None, pad_edge=False)
    table.add_column("RUN", no_wrap=True, min_width=32)
    for column in ("DEPLOYMENT", "STATE", "ATTEMPT", "CREATED", "AGENT"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            run.id,
            run.deployment_name,
            state_text(run.state),
            str(run.attempt),
            run.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            run.agent_name,
        )
    return table
