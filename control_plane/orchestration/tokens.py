"""Secrets handed to engines: minted here, stored only as hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def mint() -> tuple[str, str]:
    """A new random token and the hash to store for it."""
    token = secrets.token_urlsafe(32)
    return token, digest(token)


def digest(token: str) -> str:
    """The stored form of a token (SHA-256; tokens are random, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def matches(token: str, stored_digest: str | None) -> bool:
    """Whether ``token`` is the one whose hash is stored, in constant time."""
    return stored_digest is not None and hmac.compare_digest(digest(token), stored_digest)
