"""Request bodies that are not valid protobuf: INVALID_ARGUMENT on every Flowyard method.

gRPC parses a request before it calls the method's handler, and a parse error there escapes
the servicers: the caller gets ``UNKNOWN: Unexpected DecodeError`` and the log a traceback.
``Decoding`` gives each method of the three Flowyard services a deserializer that never
raises: bytes it cannot parse become an ``Undecodable`` marker, which the method's wrapped
behavior answers with INVALID_ARGUMENT (a request message) or raises as ``InvalidArgument``
from the request iterator (a request stream: the servicers end their stream with the status
of such an error, after what they already answered).

It is the innermost interceptor, so that a call is authenticated and admitted before its
body is looked at, as for any other invalid request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from control_plane.api.errors import abort
from control_plane.errors import InvalidArgument
from control_plane.interceptors import Handler, MethodWrapper

Context = Any  # grpc.aio.ServicerContext, whose generic parameters the stubs do not use


class Undecodable:
    """A request body that did not parse as the method's request message."""

    def __init__(self, message_name: str, reason: str) -> None:
        self.message_name = message_name
        self.reason = reason

    def error(self) -> InvalidArgument:
        """What the caller is told."""
        return InvalidArgument(
            f"the request is not a valid {self.message_name} message ({self.reason}); "
            "send it serialized by a protobuf library, as the generated clients do"
        )


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, answering an ``Undecodable`` instead of raising."""
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", "request")

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or whatever a custom deserializer raises
            return Undecodable(name, str(exc) or type(exc).__name__)

    return decode


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.error()
        yield request


class Decoding(MethodWrapper):
    """Turns unparseable requests into INVALID_ARGUMENT for the services named."""

    def wrap(self, handler: Handler, service: str, method: str) -> Handler:
        return _wrap(handler)


def _wrap(handler: Handler) -> Handler:
    options = {
        "request_deserializer": tolerant(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    # On an aio server behaviors are coroutine or async generator functions (the stubs type
    # them sync).
    if handler.unary_unary is not None:
        unary = cast(Callable[[Any, Context], Awaitable[Any]], handler.unary_unary)

        async def unary_unary(request: Any, context: Context) -> Any:
            if isinstance(request, Undecodable):
                await abort(context, request.error())
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **options)
    if handler.unary_stream is not None:
        server_stream = cast(Callable[[Any, Context], AsyncIterator[Any]], handler.unary_stream)

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await abort(context, request.error())
            async for response in server_stream(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **options)
    if handler.stream_unary is not None:
        client_stream = cast(Callable[[Any, Context], Awaitable[Any]], handler.stream_unary)

        async def stream_unary(requests: Any, context: Context) -> Any:
            return await client_stream(_checked(requests), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **options)
    bidi = cast(Callable[[Any, Context], AsyncIterator[Any]], handler.stream_stream)

    async def stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
        async for response in bidi(_checked(requests), context):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **options)
