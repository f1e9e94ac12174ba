"""The reconnect loop: keep one session open at a time, for as long as the agent runs.

Each attempt gets a fresh channel, so gRPC's own connection backoff never stacks on top of
ours; :class:`~agent.backoff.Backoff` alone decides when the agent tries again, and a session
that got as far as Welcome resets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc.aio

from agent.backoff import Backoff
from agent.errors import SessionRejected, StreamBroken
from agent.health import HealthFile
from agent.reports import Outbox
from agent.runs import RunManager
from agent.session import Session
from agent.settings import AgentSettings, ConnectionSettings
from agent.tasks import stop_tasks
from flowyard_common import addresses
from flowyard_common.aiotasks import cancel_and_wait

__all__ = ["channel_options", "open_channel", "run_connection"]

logger = logging.getLogger(__name__)


def channel_options(settings: ConnectionSettings) -> list[tuple[str, int]]:
    """gRPC channel arguments: HTTP/2 keepalive pings to detect a half-open connection."""
    return [
        ("grpc.keepalive_time_ms", int(settings.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # The stream may carry no data for a while; keep pinging regardless.
        ("grpc.http2.max_pings_without_data", 0),
        # gRPC shares connections between channels with the same target and arguments, so a
        # fresh channel would reuse the very connection the silence check just gave up on
        # (a partition leaves it open). A channel of its own dials anew.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def open_channel(settings: ConnectionSettings) -> grpc.aio.Channel:
    """A channel to the control plane: TLS when a CA is configured, else plaintext."""
    # Several addresses (replicas): one channel over all of them, moving to another replica
    # when the one it uses goes away (see flowyard_common.addresses).
    target, extra = addresses.grpc_target(settings.server)
    options: list[tuple[str, int | str]] = [*channel_options(settings), *extra]
    tls = settings.tls
    if tls.ca is None:
        return grpc.aio.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.key.read_bytes() if tls.key else None,
        certificate_chain=tls.cert.read_bytes() if tls.cert else None,
    )
    return grpc.aio.secure_channel(target, credentials, options=options)


async def run_connection(
    *,
    agent: AgentSettings,
    connection: ConnectionSettings,
    runtime_name: str,
    manager: RunManager,
    outbox: Outbox,
    stop: asyncio.Event,
    health: HealthFile | None = None,
) -> None:
    """Hold a session until ``stop`` is set, reconnecting with backoff whenever one ends.

    Raises :class:`~agent.errors.SessionRejected` when the server refuses the agent.
    """
    backoff = Backoff(connection.backoff)
    while not stop.is_set():
        session: Session | None = None
        try:
            async with open_channel(connection) as channel:
                session = Session(
                    channel,
                    agent=agent,
                    connection=connection,
                    runtime_name=runtime_name,
                    manager=manager,
                    outbox=outbox,
                    health=health,
                )
                await _run_until_stopped(session, stop, agent.shutdown_grace)
            reason = "the session ended"
        except StreamBroken as error:
            reason = str(error)
        except SessionRejected:
            raise
        except Exception as error:
            # A bug in one session must not end the agent; the backoff keeps this from spinning.
            logger.exception("the session failed unexpectedly")
            reason = f"{type(error).__name__}: {error}"
        if stop.is_set():
            return
        welcomed = session is not None and session.welcome is not None
        if welcomed:
            backoff.reset()
        delay = backoff.next_delay()
        logger.warning(
            "%s %s (%s); reconnecting in %.1f s",
            "lost the connection to" if welcomed else "cannot connect to",
            connection.server,
            reason,
            delay,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()


async def _run_until_stopped(session: Session, stop: asyncio.Event, grace: float) -> None:
    running = asyncio.create_task(session.run(), name="session")
    stopping = asyncio.create_task(stop.wait(), name="session:stop")
    try:
        await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            if session.welcome is not None:
                # Send what is queued and end the stream cleanly, within the grace period.
                session.close()
                await stop_tasks([running], grace)
            else:
                await cancel_and_wait([running])
    finally:
        await cancel_and_wait([running, stopping])
    if not running.cancelled():
        running.result()  # re-raise what ended the session
