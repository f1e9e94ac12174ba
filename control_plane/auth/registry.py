"""Minting, listing, revoking and verifying tokens.

Verification is on every call's path, so a verified admin or agent token is cached for a few
seconds (``CACHE_SECONDS``): a busy CLI or a reconnect storm does not read the database per
call. Revoking drops the token from the cache of every replica at once (a hint on the bus);
were the hint lost, another replica would stop honouring it within the cache time. Engine tokens are not cached: an
engine verifies when it opens its stream or asks for its run, and the check must see the
attempt that is current now (a new attempt's assignment replaces the stored hash).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from control_plane.auth.principals import Principal
from control_plane.errors import InvalidArgument, NotFound, Unauthenticated
from control_plane.models import TokenKind, TokenRecord
from control_plane.orchestration import attempts, clock, tokens, validation
from control_plane.orchestration.bus import TOKEN_REVOKED, Bus
from control_plane.store import catalog as catalog_repo
from control_plane.store import runs as runs_repo
from control_plane.store import tokens as repo
from control_plane.store.db import Database, unique_violation

CACHE_SECONDS = 10.0
#: Verified tokens remembered at once; past it the cache starts afresh.
CACHE_ENTRIES = 10_000
MAX_DESCRIPTION_CHARS = 200
#: Ten years: longer lifetimes overflow date arithmetic on some databases.
MAX_TTL_SECONDS = 10 * 365 * 86400
#: What an UNAUTHENTICATED caller is told to do.
HOW_TO_AUTHENTICATE = (
    "pass a token with --token or FLOWYARD_TOKEN (on the server's machine the CLI reads the "
    "admin token from the data directory's admin.token file), or as gRPC metadata "
    "'authorization: Bearer <token>'"
)


class Tokens:
    """The token use cases, and the verification every call goes through."""

    def __init__(
        self,
        db: Database,
        bus: Bus,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._bus = bus
        self._monotonic = monotonic
        # digest of the whole token -> (principal, monotonic time the entry is good until)
        self._cache: dict[str, tuple[Principal, float]] = {}
        bus.on(TOKEN_REVOKED, self._forget)

    async def create(
        self, kind: TokenKind, pool: str, description: str, ttl_seconds: int
    ) -> tuple[str, TokenRecord]:
        """Mint an admin or agent token; returns the token (shown once) and its record."""
        if kind is TokenKind.AGENT:
            if not pool:
                raise InvalidArgument("pool: required for an agent token (the pool it serves)")
            validation.pool_name(pool, "pool")
        elif kind is TokenKind.ADMIN:
            if pool:
                raise InvalidArgument("pool: only agent tokens have a pool; leave it empty")
        else:
            raise InvalidArgument("kind: must be TOKEN_KIND_ADMIN or TOKEN_KIND_AGENT")
        validation.text(description, "description", MAX_DESCRIPTION_CHARS)
        if not 0 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidArgument(
                f"ttl_seconds: must be between 0 (never expires) and {MAX_TTL_SECONDS}, "
                f"got {ttl_seconds}"
            )
        now = clock.now()
        token, secret_hash = tokens.mint()
        record = TokenRecord(
            id=tokens.token_id(token),
            kind=kind,
            pool=pool,
            description=description,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds) if ttl_seconds else None,
            revoked_at=None,
        )
        async with self._db.write() as conn:
            if kind is TokenKind.AGENT and await catalog_repo.get_pool(conn, name=pool) is None:
                raise NotFound(f"pool {pool!r} not found; create it first")
            await repo.insert_token(conn, record, secret_hash)
        return token, record

    async def register_admin(self, token: str, description: str) -> TokenRecord:
        """Store an admin token made outside the server (only its hash, as ``create`` does).

        Registering the same token again is no error (replicas starting together all do it):
        the record stored first is returned.

        Raises:
            InvalidArgument: ``token`` is not shaped like a minted token, or its id is taken
                by another token.
        """
        if not tokens.well_formed(token):
            raise InvalidArgument(f"the admin token must read {tokens.GIVEN_SHAPE}")
        validation.text(description, "description", MAX_DESCRIPTION_CHARS)
        record = TokenRecord(
            id=tokens.token_id(token),
            kind=TokenKind.ADMIN,
            pool="",
            description=description,
            created_at=clock.now(),
            expires_at=None,
            revoked_at=None,
        )
        try:
            async with self._db.write() as conn:
                await repo.insert_token(conn, record, tokens.digest(token))
        except Exception as error:
            if not unique_violation(error):
                raise
            async with self._db.read() as conn:
                found = await repo.get_token(conn, record.id)
            if (
                found is None
                or found[0].kind is not TokenKind.ADMIN
                or not tokens.matches(token, found[1])
            ):
                raise InvalidArgument(
                    f"token id {record.id!r} is taken by another token; make a new admin token"
                ) from error
            return found[0]
        return record

    async def list(self) -> list[TokenRecord]:
        """Every admin and agent token, oldest first."""
        async with self._db.read() as conn:
            return await repo.list_tokens(conn)

    async def revoke(self, token_id: str) -> TokenRecord:
        """Revoke a token: it is refused from now on, and agents connected with it are cut off."""
        if not token_id:
            raise InvalidArgument("id: required (the part of the token before the dot)")
        validation.text(token_id, "id", 64)
        async with self._db.write() as conn:
            found = await repo.get_token(conn, token_id)
            if found is None:
                raise NotFound(f"token {token_id!r} not found (see 'flowyard token ls')")
            await repo.revoke_token(conn, token_id, clock.now())
            found = await repo.get_token(conn, token_id)
            assert found is not None
        # Every replica drops it from its cache and cuts off the agents connected with it.
        self._bus.publish(TOKEN_REVOKED, token_id)
        return found[0]

    def _forget(self, token_id: str) -> None:
        self._cache = {k: v for k, v in self._cache.items() if v[0].token_id != token_id}

    async def verify(self, token: str) -> Principal:
        """The principal a bearer token stands for.

        Raises:
            Unauthenticated: the token is unknown, malformed, revoked or expired, or belongs
                to an engine attempt that is over: no longer the run's current attempt, or
                ended (the run is terminal; ``attempts.ended``).
        """
        key = tokens.digest(token)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > self._monotonic():
            return _unexpired(cached[0], clock.now())
        engine = tokens.engine_attempt(token)
        if engine is not None:
            return await self._verify_engine(token, *engine)
        token_id = tokens.api_token_id(token)
        if token_id is None:
            raise Unauthenticated(f"the token is not a Flowyard token; {HOW_TO_AUTHENTICATE}")
        async with self._db.read() as conn:
            found = await repo.get_token(conn, token_id)
        if found is None or not tokens.matches(token, found[1]):
            raise Unauthenticated(f"unknown token {token_id!r}; {HOW_TO_AUTHENTICATE}")
        record = found[0]
        if record.revoked_at is not None:
            raise Unauthenticated(
                f"token {token_id!r} was revoked; ask an admin for a new one "
                "('flowyard token create')"
            )
        principal = Principal(
            kind=record.kind, token_id=record.id, pool=record.pool, expires_at=record.expires_at
        )
        principal = _unexpired(principal, clock.now())
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = (principal, self._monotonic() + CACHE_SECONDS)
        return principal

    async def _verify_engine(self, token: str, run_id: str, attempt: int) -> Principal:
        async with self._db.read() as conn:
            run = await runs_repo.get_run(conn, run_id)
        # One answer for an unknown run, another run's hash and an attempt that is over: a
        # caller without the current token learns nothing about the run.
        if (
            run is None
            or run.attempt != attempt
            or not tokens.matches(token, run.engine_token_hash)
        ):
            raise Unauthenticated(
                "this engine token is not valid: engine tokens expire with their run attempt, "
                "and the agent hands each engine the token of its attempt"
            )
        # The caller holds the attempt's token, so it may learn why it no longer counts.
        why = attempts.ended(run, attempt)
        if why:
            raise Unauthenticated(why)
        return Principal(
            kind=TokenKind.ENGINE,
            token_id=tokens.token_id(token),
            run_id=run_id,
            attempt=attempt,
            run=run,
        )


def _unexpired(principal: Principal, now: datetime) -> Principal:
    if principal.expires_at is not None and principal.expires_at <= now:
        raise Unauthenticated(
            f"token {principal.token_id!r} expired at {principal.expires_at:%Y-%m-%d %H:%M:%S} "
            "UTC; ask an admin for a new one ('flowyard token create')"
        )
    return principal
