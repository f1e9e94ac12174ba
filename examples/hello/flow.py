"""The demo flow: greets someone, with a log record and printed lines."""

import logging
import time

log = logging.getLogger("hello")


def hello(name: str = "world", steps: int = 3) -> str:
    """Say hello, then count a few steps."""
    log.info("Hello, %s!", name)
    for step in range(1, steps + 1):
        print(f"step {step} of {steps}")
        time.sleep(0.1)
    log.info("All %d steps done", steps)
    return f"greeted {name}"
