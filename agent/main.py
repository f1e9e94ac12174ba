"""``flowyard-agent``: parse the command line, configure logging, run the agent.

Exit status: 0 after a graceful stop, 2 for unusable settings or when the control plane
refuses the agent (bad pool, bad credentials), with the reason on stderr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from agent.errors import ConfigurationError, SessionRejected
from agent.running import run_agent
from agent.settings import parse_settings

__all__ = ["main"]

logger = logging.getLogger("agent")

EXIT_OK = 0
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    settings = parse_settings(argv, os.environ)
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
