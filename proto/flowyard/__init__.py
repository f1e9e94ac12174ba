"""Flowyard for flow authors: ``from flowyard import flow, task, runtime``.

The generated API (messages and gRPC stubs) is ``flowyard.v1``; the SDK itself lives in
``flowyard_sdk`` and is re-exported here, name for name.
"""

from flowyard_sdk import *  # noqa: F403
from flowyard_sdk import __all__ as __all__
