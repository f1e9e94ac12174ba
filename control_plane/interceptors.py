"""The shape the control plane's server interceptors share: wrap a method's handler once.

Each interceptor (admission, authentication, request decoding) changes the handlers of some
services and leaves every other service (health, reflection) alone. The wrapped handler is
built on a method's first call and cached, so the per-call cost is one dictionary look-up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

Handler = Any  # grpc.RpcMethodHandler (not subscriptable at run time)


class MethodWrapper(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps the handlers of the named services' methods with :meth:`wrap`, once per method."""

    def __init__(self, services: Iterable[str]) -> None:
        self._services = frozenset(services)
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        # Methods are named "/package.Service/Method".
        parts = method.split("/")
        service, name = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
        if handler is None or service not in self._services:
            return handler
        wrapped = self.wrap(handler, service, name) or handler
        self._handlers[method] = wrapped
        return wrapped

    def wrap(self, handler: Handler, service: str, method: str) -> Handler | None:
        """The handler to call instead of ``handler``; None keeps ``handler`` as it is."""
        raise NotImplementedError
