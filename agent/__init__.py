"""The Flowyard agent: takes runs of one work pool from the control plane and runs them.

One agent per cluster (or per machine, with the process runtime) holds one ``Connect``
stream to the control plane, receives assignments while it has free slots, creates each
run's infrastructure with its runtime and reports what happens to it.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["__version__"]

try:
    __version__ = metadata.version("flowyard")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from flowyard_common.forking import keep_grpc_out_of_forks

keep_grpc_out_of_forks()
