"""Keeping gRPC's fork handlers out of the processes Flowyard starts.

With fork support on (gRPC core's default), a ``fork()`` in a process that uses gRPC runs
gRPC's handlers, which restart its poller thread in the child. When the fork is
``subprocess``'s (a ``preexec_fn`` makes it fork rather than vfork, and user code in a flow
may do that), ``close_fds`` has already closed the poller's epoll descriptor in the child, and
the child can die on "epoll_wait error: Bad file descriptor" before it execs. No Flowyard
process forks to use gRPC in the child, so each one turns fork support off before gRPC is
loaded (an explicit ``GRPC_ENABLE_FORK_SUPPORT`` in the environment still wins).
"""

from __future__ import annotations

import os

__all__ = ["keep_grpc_out_of_forks"]


def keep_grpc_out_of_forks() -> None:
    """Turn gRPC's fork support off for this process (call before gRPC is imported)."""
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
