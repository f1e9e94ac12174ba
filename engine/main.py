"""``flowyard-engine``: the engine's command line.

``flowyard-engine execute <run-id>`` executes one attempt of a run, as configured by the
``FLOWYARD_*`` environment (see :mod:`engine.settings`), and exits with one of the codes of
:class:`engine.runner.ExitCode`: 0 completed, 1 failed, 3 could not run or report,
143 cancelled.

``flowyard-engine forkserver`` imports the engine once and forks one engine process per run
the agent names on stdin (:mod:`engine.forkserver`).

``flowyard-engine standby`` is the same engine started ahead of its run (the process
runtime's warm engines): its imports done, it waits for one line of JSON on stdin naming the
run, its working directory and its whole environment, takes them on, and goes on exactly as
``execute`` would. It serves one run, or none: end of input (its agent went away) ends it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence

from engine.forkserver import serve
from engine.runner import ExitCode, execute_run
from engine.takeover import take_on
from flowyard_common.heap import freeze_startup_heap

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
    commands.add_parser(
        "forkserver",
        help="fork one engine process per run read from stdin",
        description=(
            "Import everything a run needs, then for each JSON line on stdin "
            '({"run_id", "cwd", "env", "log"}) fork an engine process that executes that run; '
            "report starts and exits as JSON lines on stdout. Used by the process runtime."
        ),
    )
    commands.add_parser(
        "standby",
        help="start ahead of a run and wait for it on stdin",
        description=(
            "Import everything a run needs, then read one JSON line from stdin with the run "
            '("run_id"), its working directory ("cwd") and its environment ("env"), and '
            "execute it. Used by the process runtime's warm engines."
        ),
    )
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
    # Imports done: they are never garbage, and a forked engine inherits them frozen. An
    # engine started for a run goes straight on (collecting would delay its flow).
    freeze_startup_heap(collect=args.command != "execute")
    if args.command == "forkserver":
        return serve()
    run_id = args.run_id if args.command == "execute" else _take_run()
    if run_id is None:
        return ExitCode.COMPLETED
    code = execute_run(run_id)
    _exit_if_threads_linger(code)
    return code


def _take_run() -> str | None:
    """Wait for the run a standby engine is handed, and take on its directory and
    environment as if the process had been started for it; None if none comes."""
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return None
    try:
        handoff = json.loads(line)
        run_id, cwd = str(handoff["run_id"]), str(handoff["cwd"])
        env = {str(name): str(value) for name, value in dict(handoff["env"]).items()}
        take_on(run_id, cwd, env)
    except (ValueError, KeyError, TypeError, OSError) as error:
        print(f"flowyard-engine: cannot take the run handed over: {error}", file=sys.stderr)
        sys.exit(ExitCode.COULD_NOT_RUN)
    return run_id


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
