"""Repository of admin and agent tokens. Functions take a connection and never commit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.models import TokenKind, TokenRecord
from control_plane.store.tables import api_tokens


def _record(row: Row[Any]) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        kind=TokenKind(row.kind),
        pool=row.pool,
        description=row.description,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


async def insert_token(conn: AsyncConnection, record: TokenRecord, secret_hash: str) -> None:
    """Store a new token's description and hash."""
    await conn.execute(
        insert(api_tokens).values(
            id=record.id,
            kind=record.kind.value,
            pool=record.pool,
            description=record.description,
            secret_hash=secret_hash,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
        )
    )


async def get_token(conn: AsyncConnection, token_id: str) -> tuple[TokenRecord, str] | None:
    """The token with this id and its stored hash, if any."""
    row = (await conn.execute(select(api_tokens).where(api_tokens.c.id == token_id))).first()
    return (_record(row), row.secret_hash) if row else None


async def list_tokens(conn: AsyncConnection) -> list[TokenRecord]:
    """Every token, oldest first."""
    rows = await conn.execute(select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.id))
    return [_record(row) for row in rows]


async def revoke_token(conn: AsyncConnection, token_id: str, at: datetime) -> None:
    """Mark a token revoked (a second revocation keeps the first time)."""
    await conn.execute(
        update(api_tokens)
        .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=at)
    )
