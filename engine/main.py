"""``flowyard-engine``: the engine's command line.

``flowyard-engine execute <run-id>`` executes one attempt of a run, as configured by the
``FLOWYARD_*`` environment (see :mod:`engine.settings`), and exits with one of the codes of
:class:`engine.runner.ExitCode`: 0 completed, 1 failed, 3 could not run or report,
143 cancelled.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence

from engine.errors import SettingsError
from engine.runner import ExitCode, execute
from engine.settings import load_settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowyard-engine",
        description="Run one attempt of a Flowyard flow run and report it to the control plane.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    execute_parser = commands.add_parser(
        "execute",
        help="execute a run attempt",
        description="Execute the run attempt named by FLOWYARD_RUN_ID and FLOWYARD_RUN_ATTEMPT.",
    )
    execute_parser.add_argument("run_id", help="the run's id (must match FLOWYARD_RUN_ID)")
    return parser


def _configure_engine_logging() -> None:
    """The engine's own diagnostics go to stderr and never into the run's logs."""
    engine_logger = logging.getLogger("engine")
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(logging.Formatter("flowyard-engine: %(levelname)s %(message)s"))
    engine_logger.addHandler(handler)
    engine_logger.setLevel(logging.INFO)
    engine_logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run, and return the exit code."""
    args = _parser().parse_args(argv)
    _configure_engine_logging()
    try:
        settings = load_settings(os.environ, args.run_id)
    except SettingsError as exc:
        print(f"flowyard-engine: {exc}", file=sys.stderr, flush=True)
        return ExitCode.COULD_NOT_RUN
    code = int(execute(settings))
    _exit_if_threads_linger(code)
    return code


def _exit_if_threads_linger(code: int) -> None:
    lingering = [
        t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    if lingering:
        # The run is reported: threads the flow left running must not keep the process
        # (and its container) alive forever.
        names = ", ".join(t.name for t in lingering)
        print(f"flowyard-engine: exiting despite running threads: {names}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
