"""The one place that authenticates calls and enforces each service's scope.

Every call to a Flowyard service must carry ``authorization: Bearer <token>``:

==========================  ==================================================================
``ControlPlaneService``     admin tokens only
``AgentService.Connect``    an agent token (its pool is checked against the Hello by the
                            servicer) or an admin token; with ``require_agent_cert`` also a
                            verified client certificate
``EngineService``           the engine token of one run attempt (the servicer checks that the
                            request names that attempt)
==========================  ==================================================================

No token, or an unknown, revoked or expired one, is UNAUTHENTICATED; a valid token outside its
scope is PERMISSION_DENIED; a call whose token the database cannot check now (unreachable,
locked) is UNAVAILABLE with a retry hint, as in the servicers (``api.errors``). Health checking
and reflection stay open: probes and ``buf curl`` need them, and they reveal nothing stored.
The verified caller is handed to the servicer through
``control_plane.auth.principals.caller()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from control_plane.api.errors import abort_failed
from control_plane.auth.principals import Principal, set_caller
from control_plane.auth.registry import HOW_TO_AUTHENTICATE, Tokens
from control_plane.errors import PermissionDenied, Unauthenticated
from control_plane.interceptors import Handler, MethodWrapper
from control_plane.models import TokenKind

CONTROL_PLANE = "flowyard.v1.ControlPlaneService"
AGENT = "flowyard.v1.AgentService"
ENGINE = "flowyard.v1.EngineService"

Context = Any  # grpc.aio.ServicerContext, whose generic parameters the stubs do not use


def bearer_token(metadata: Any) -> str:
    """The token from ``authorization: Bearer <token>`` metadata, or Unauthenticated."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated(
                f"the authorization metadata must read 'Bearer <token>'; {HOW_TO_AUTHENTICATE}"
            )
    raise Unauthenticated(f"this call carries no token; {HOW_TO_AUTHENTICATE}")


def check_scope(service: str, method: str, principal: Principal) -> None:
    """PermissionDenied unless ``principal`` may call ``service``."""
    if service == CONTROL_PLANE and principal.kind is not TokenKind.ADMIN:
        raise PermissionDenied(
            f"{principal.describe()} may not call ControlPlaneService.{method}: "
            "it needs an admin token"
        )
    if service == AGENT and principal.kind not in (TokenKind.ADMIN, TokenKind.AGENT):
        raise PermissionDenied(
            f"{principal.describe()} may not call AgentService.{method}: it needs an agent "
            "token of the pool ('flowyard token create --agent --pool P') or an admin token"
        )
    if service == ENGINE and principal.kind is not TokenKind.ENGINE:
        raise PermissionDenied(
            f"{principal.describe()} may not call EngineService.{method}: it needs the engine "
            "token of the run attempt, which the agent hands the engine it starts"
        )


class Authenticator(MethodWrapper):
    """Authenticates the calls of Flowyard's three services; other services pass through."""

    def __init__(self, tokens: Tokens, *, require_agent_cert: bool = False) -> None:
        super().__init__((CONTROL_PLANE, AGENT, ENGINE))
        self._tokens = tokens
        self._require_agent_cert = require_agent_cert

    async def _admit(self, service: str, method: str, context: Context) -> None:
        """Authenticate the call, or end it with why not (UNAVAILABLE when the database could
        not check its token now, INTERNAL for a bug)."""
        try:
            await self._authenticate(service, method, context)
        except Exception as exc:
            await abort_failed(context, f"{method} (checking its token)", exc)

    async def _authenticate(self, service: str, method: str, context: Context) -> None:
        if service == AGENT and self._require_agent_cert and not context.peer_identities():
            raise Unauthenticated(
                "this server accepts agents only with a client certificate: connect to its "
                "mutual-TLS agent port with --tls-cert and --tls-key (see docs/security.md)"
            )
        principal = await self._tokens.verify(bearer_token(context.invocation_metadata()))
        check_scope(service, method, principal)
        set_caller(principal)

    def wrap(self, handler: Handler, service: str, method: str) -> Handler:
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        # On an aio server behaviors are coroutine or async generator functions (the stubs
        # type them sync).
        if handler.unary_unary is not None:
            unary = cast(Callable[[Any, Context], Awaitable[Any]], handler.unary_unary)

            async def unary_unary(request: Any, context: Context) -> Any:
                await self._admit(service, method, context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, **options)

        streams = {
            "unary_stream": handler.unary_stream,
            "stream_unary": handler.stream_unary,
            "stream_stream": handler.stream_stream,
        }
        kind, behavior = next((k, b) for k, b in streams.items() if b is not None)
        if kind == "stream_unary":
            client_stream = cast(Callable[[Any, Context], Awaitable[Any]], behavior)

            async def stream_unary(requests: Any, context: Context) -> Any:
                await self._admit(service, method, context)
                return await client_stream(requests, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **options)

        server_stream = cast(Callable[[Any, Context], AsyncIterator[Any]], behavior)

        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            await self._admit(service, method, context)
            async for response in server_stream(request, context):
                yield response

        factory = (
            grpc.unary_stream_rpc_method_handler
            if kind == "unary_stream"
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(streaming, **options)
