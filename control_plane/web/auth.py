"""Who is calling over HTTP: the same tokens and scopes as the gRPC API.

- Programs send ``Authorization: Bearer <token>``, as they do over gRPC.
- A browser logs in once with a token (``POST /login``). The token then travels in the
  ``flowyard_session`` cookie: HttpOnly (no script can read it), ``SameSite=Strict`` (no other
  site's page can make the browser send it), ``Secure`` when the page came over HTTPS.
- A state-changing request authenticated by that cookie must also carry the ``X-CSRF-Token``
  header with the value of the ``flowyard_csrf`` cookie, set at login (double-submit). A page
  of another origin can neither read that cookie nor set that header, so even a browser that
  ignores ``SameSite`` cannot be made to cancel a run or start one. A bearer token needs no
  such check: no browser adds it by itself.

Like ``ControlPlaneService``, every route but the health probes, the login page and the static
assets needs an admin token; any other valid token is refused with 403.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

from control_plane.auth.principals import Principal
from control_plane.auth.registry import Tokens
from control_plane.errors import PermissionDenied, Unauthenticated
from control_plane.models import TokenKind

SESSION_COOKIE = "flowyard_session"
CSRF_COOKIE = "flowyard_csrf"
CSRF_HEADER = "x-csrf-token"
#: A browser session lasts a working week; the token itself may expire sooner, and a revoked
#: one stops working at once.
SESSION_SECONDS = 7 * 24 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HOW_TO_LOG_IN = (
    "send 'Authorization: Bearer <admin token>', or log in at /login (the admin token is in "
    "the server's data directory, admin.token, or 'flowyard token create')"
)


async def authenticate(request: Request, tokens: Tokens) -> Principal:
    """The admin principal of ``request``.

    Raises:
        Unauthenticated: no token, or one that is not valid.
        PermissionDenied: a valid token that is not an admin token, or a cookie-authenticated
            write without its CSRF token.
    """
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must read 'Bearer <token>'")
        principal = await tokens.verify(token.strip())
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise Unauthenticated(f"this request carries no token; {HOW_TO_LOG_IN}")
        principal = await tokens.verify(cookie)
        if request.method not in SAFE_METHODS:
            check_csrf(request)
    if principal.kind is not TokenKind.ADMIN:
        raise PermissionDenied(
            f"{principal.describe()} may not use the web API: it needs an admin token"
        )
    return principal


def check_csrf(request: Request) -> None:
    """PermissionDenied unless the request echoes its CSRF cookie in the CSRF header."""
    expected = request.cookies.get(CSRF_COOKIE, "")
    given = request.headers.get(CSRF_HEADER, "")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        raise PermissionDenied(
            "this request was made with the login cookie but without the X-CSRF-Token header "
            "the page sends; reload the page, or use 'Authorization: Bearer <token>'"
        )


def start_session(response: Response, request: Request, token: str) -> None:
    """Set the login cookies on ``response``."""
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )
    response.set_cookie(
        CSRF_COOKIE,
        secrets.token_urlsafe(24),
        max_age=SESSION_SECONDS,
        httponly=False,
        samesite="strict",
        secure=secure,
        path="/",
    )


def end_session(response: Response) -> None:
    """Clear the login cookies."""
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
