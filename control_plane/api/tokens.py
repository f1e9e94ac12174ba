"""Tokens at the API edge: proto enums and messages to and from the auth records."""

from __future__ import annotations

from control_plane.api import convert
from control_plane.errors import InvalidArgument
from control_plane.models import TokenKind, TokenRecord
from flowyard.v1 import control_plane_pb2 as pb

_KINDS = {pb.TOKEN_KIND_ADMIN: TokenKind.ADMIN, pb.TOKEN_KIND_AGENT: TokenKind.AGENT}
_PROTO_KINDS = {kind: value for value, kind in _KINDS.items()}


def token_kind(value: pb.TokenKind.ValueType) -> TokenKind:
    """The kind a request asks for, or InvalidArgument."""
    kind = _KINDS.get(value)
    if kind is None:
        raise InvalidArgument(f"kind: must be TOKEN_KIND_ADMIN or TOKEN_KIND_AGENT, got {value}")
    return kind


def token_to_proto(record: TokenRecord) -> pb.TokenInfo:
    """A token's description (never its secret)."""
    return pb.TokenInfo(
        id=record.id,
        kind=_PROTO_KINDS[record.kind],
        pool=record.pool,
        description=record.description,
        create_time=convert.timestamp(record.created_at),
        expire_time=convert.timestamp(record.expires_at),
        revoked=record.revoked_at is not None,
    )
