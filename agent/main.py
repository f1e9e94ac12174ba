"""``flowyard-agent``: parse the command line, configure logging, run the agent.

Exit status: 0 after a graceful stop, 2 for unusable settings or when the control plane
refuses the agent (bad pool, bad credentials), with the reason on stderr. With ``--probe``:
0 if the running agent heard from the control plane recently, else 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from agent.errors import ConfigurationError, SessionRejected
from agent.health import is_fresh
from agent.running import run_agent
from agent.settings import Probe, parse_command

__all__ = ["main"]

logger = logging.getLogger("agent")

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    command = parse_command(argv, os.environ)
    if isinstance(command, Probe):
        healthy = is_fresh(command.health.file, command.health.max_age)
        return EXIT_OK if healthy else EXIT_UNHEALTHY
    settings = command
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(run_agent(settings))
    except SessionRejected as error:
        logger.error("%s", error)
        return EXIT_CONFIG
    except ConfigurationError as error:
        logger.error("%s", error)
        return EXIT_CONFIG
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
