"""Run ids as people type them: any unique prefix of at least four hex characters, like git.

The server filters by prefix (``ListRunsRequest.run_id_prefix``, an indexed range on the
primary key), so any client can do the same; this module turns the answer into one id or a
clear error. A whole id goes to the server unchanged, without an extra call.
"""

from __future__ import annotations

import string
from typing import Any

import click

from flowyard.v1 import control_plane_pb2 as pb

#: Length of a whole run id (a UUID's hex digits).
RUN_ID_CHARS = 32
#: The shortest prefix accepted; the server refuses shorter ones too.
MIN_PREFIX_CHARS = 4
#: How many candidates an ambiguous prefix lists.
SHOWN_CANDIDATES = 10


class RunNotFound(click.ClickException):
    """No run id starts with the prefix given (exit code 1, like a server's NOT_FOUND)."""


class AmbiguousRunId(click.ClickException):
    """Several run ids start with the prefix given; the message lists them."""


def resolve_run_id(stub: Any, text: str, param_hint: str = "RUN") -> str:
    """The whole id of the one run whose id starts with ``text`` (case-insensitive)."""
    prefix = text.strip().lower()
    if not prefix or any(c not in string.hexdigits for c in prefix):
        raise click.BadParameter(
            f"{text!r} is not a run id or a prefix of one (hex characters)", param_hint=param_hint
        )
    if len(prefix) == RUN_ID_CHARS:
        return prefix
    if len(prefix) < MIN_PREFIX_CHARS or len(prefix) > RUN_ID_CHARS:
        raise click.BadParameter(
            f"{text!r}: give the whole run id or a prefix of at least {MIN_PREFIX_CHARS} "
            f"characters (a run id has {RUN_ID_CHARS})",
            param_hint=param_hint,
        )
    response = stub.ListRuns(
        pb.ListRunsRequest(run_id_prefix=prefix, page_size=SHOWN_CANDIDATES + 1)
    )
    runs = list(response.runs)
    if not runs:
        raise RunNotFound(f"no run id starts with {prefix!r} (NOT_FOUND)")
    if len(runs) > 1:
        count = f"more than {SHOWN_CANDIDATES}" if len(runs) > SHOWN_CANDIDATES else len(runs)
        listed = ", ".join(
            f"{run.id} ({run.deployment_name}, created {run.create_time.ToDatetime():%Y-%m-%d %H:%M:%S})"
            for run in runs[:SHOWN_CANDIDATES]
        )
        raise AmbiguousRunId(
            f"run id prefix {prefix!r} is ambiguous: {count} runs match, give more characters: "
            f"{listed}"
        )
    return str(runs[0].id)
