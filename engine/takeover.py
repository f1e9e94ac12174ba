"""Taking on a run in an engine process that was not started for it.

A standby engine (``flowyard-engine standby``) and an engine forked by the fork server
(``engine.forkserver``) were started before their run was known. Before any user code is
imported, each takes on what a cold start would have been given: the run's working directory,
its whole environment (and time zone), nothing on stdin, and the command line of
``flowyard-engine execute RUN``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping

from flowyard_common.forking import keep_grpc_out_of_forks

__all__ = ["take_on"]


def take_on(run_id: str, cwd: str, env: Mapping[str, str]) -> None:
    """Become the process a cold start of ``run_id`` would be.

    Raises:
        OSError: ``cwd`` cannot be entered (nothing else was changed yet).
    """
    started_in = os.getcwd()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    keep_grpc_out_of_forks()
    time.tzset()
    # ``python -m`` put the directory it started in first on the path; a cold start would
    # have put the run's directory there.
    if sys.path and sys.path[0] == started_in:
        sys.path[0] = cwd
    # Like a cold start, the run reads nothing from stdin.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.argv = [sys.argv[0], "execute", run_id]
