"""Token secrets: minted here, stored only as hashes.

Every token reads ``<id>.<secret>``. The id is public (it is listed and revoked by); the whole
token is stored only as its SHA-256. Admin and agent tokens have a random id. An engine's token
names its attempt, ``run-<run id>-<attempt>.<secret>``, so that the server finds the one run
whose stored hash it must match without an index over every hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

#: The id part of an engine token.
_ENGINE_ID = re.compile(r"run-([0-9a-f]{32})-([1-9][0-9]{0,8})")
#: The id part of an admin or agent token.
_API_ID = re.compile(r"[0-9a-f]{16}")
#: The secret part of an admin token made outside the server: URL-safe, 128 bits or more even
#: when it is hex (``openssl rand -hex 16``); a minted one has 43 characters.
_GIVEN_SECRET = re.compile(r"[A-Za-z0-9_-]{32,}")
#: What a token made outside the server must look like, said in errors (never the token).
GIVEN_SHAPE = (
    "<16 hex digits>.<32 or more letters, digits, '-' or '_'>, like a minted token: e.g. "
    '"$(openssl rand -hex 8).$(openssl rand -hex 32)"'
)


def mint() -> tuple[str, str]:
    """A new random token (random id) and the hash to store for it."""
    token = f"{secrets.token_hex(8)}.{secrets.token_urlsafe(32)}"
    return token, digest(token)


def mint_engine(run_id: str, attempt: int) -> tuple[str, str]:
    """A new token for the engine of one run attempt, and the hash to store for it."""
    token = f"run-{run_id}-{attempt}.{secrets.token_urlsafe(32)}"
    return token, digest(token)


def token_id(token: str) -> str:
    """The public part of a token (before the dot); empty if it has no dot."""
    head, dot, secret = token.partition(".")
    return head if dot and secret else ""


def api_token_id(token: str) -> str | None:
    """The id of an admin or agent token, or None if ``token`` is not shaped like one."""
    head = token_id(token)
    return head if _API_ID.fullmatch(head) else None


def well_formed(token: str) -> bool:
    """Whether a token made outside the server has the shape and strength of a minted one."""
    head, dot, secret = token.partition(".")
    return bool(dot) and bool(_API_ID.fullmatch(head)) and bool(_GIVEN_SECRET.fullmatch(secret))


def engine_attempt(token: str) -> tuple[str, int] | None:
    """The (run id, attempt) an engine token names, or None if it is not shaped like one."""
    match = _ENGINE_ID.fullmatch(token_id(token))
    return (match.group(1), int(match.group(2))) if match else None


def digest(token: str) -> str:
    """The stored form of a token (SHA-256; tokens are random, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def matches(token: str, stored_digest: str | None) -> bool:
    """Whether ``token`` is the one whose hash is stored, in constant time."""
    return stored_digest is not None and hmac.compare_digest(digest(token), stored_digest)
