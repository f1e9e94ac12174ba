"""What a verified token stands for, and the caller of the current call."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from datetime import datetime

from control_plane.errors import Unauthenticated
from control_plane.models import Run, TokenKind


@dataclass(frozen=True)
class Principal:
    """The verified caller: the kind of its token and what that token is scoped to."""

    kind: TokenKind
    token_id: str
    #: Agent tokens: the only pool they may connect to.
    pool: str = ""
    #: Engine tokens: the run attempt they report for.
    run_id: str = ""
    attempt: int = 0
    #: Admin and agent tokens: when they stop working (None: never).
    expires_at: datetime | None = None
    #: Engine tokens: the run as read to verify the token (on its attempt, not ended).
    run: Run | None = None

    def describe(self) -> str:
        """How a message names this caller."""
        if self.kind is TokenKind.AGENT:
            return f"an agent token of pool {self.pool!r}"
        if self.kind is TokenKind.ENGINE:
            return f"the engine token of run {self.run_id} attempt {self.attempt}"
        return "an admin token"


#: The caller of the call being served, set by the auth interceptor for Flowyard services.
_CALLER: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "flowyard_caller", default=None
)


def set_caller(principal: Principal) -> None:
    """Record the verified caller of the current call (the interceptor does this)."""
    _CALLER.set(principal)


def caller() -> Principal:
    """The verified caller of the current call.

    Raises:
        Unauthenticated: the call did not pass the auth interceptor (a wiring bug; refusing
            is the safe answer).
    """
    principal = _CALLER.get()
    if principal is None:
        raise Unauthenticated("this call carries no verified token")
    return principal
