"""Keeping credentials out of what is printed or stored.

A URL's userinfo (``https://user:secret@host/...``) may carry a password or token, and so may
a query parameter (``postgresql://user@host/db?password=secret``, which libpq reads); every
URL the engine puts in a message or a log line, every source URL the control plane shows or
logs, and the database URL the control plane names, goes through :func:`redact_url`, and text
from tools that echo URLs (git's stderr) through :func:`redact_text`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_text", "redact_url"]

# scheme://userinfo@ — userinfo up to the first '@' that precedes the host.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
# A query parameter whose name says it holds a password (libpq's password, sslpassword).
_PASSWORD_PARAMETER = re.compile(r"(?P<name>[?&][^=&#\s]*password=)[^&#\s]*", re.IGNORECASE)


def redact_url(url: str, *, keep_user: bool = False) -> str:
    """``https://user:token@host/x`` → ``https://***@host/x``, and the value of a query
    parameter named like ``password`` → ``***``; other URLs unchanged.

    ``keep_user``: keep the user name (``postgresql://user:***@host/db``), for URLs whose user
    is a name (a database role), never a token as a git host's may be.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    redacted = parts
    if parts.scheme and "@" in parts.netloc:
        userinfo, _, host = parts.netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if not keep_user:
            redacted = redacted._replace(netloc=f"***@{host}")
        elif colon:
            redacted = redacted._replace(netloc=f"{user}:***@{host}")
    query = _PASSWORD_PARAMETER.sub(r"\g<name>***", f"?{parts.query}")[1:]
    redacted = redacted._replace(query=query)
    # Rebuilt only when something was hidden: the URL is shown as it was written.
    return url if redacted == parts else urlunsplit(redacted)


def redact_text(text: str) -> str:
    """Every ``scheme://userinfo@`` in ``text`` with its userinfo replaced by ``***``, and every
    password query parameter's value too."""
    return _PASSWORD_PARAMETER.sub(r"\g<name>***", _USERINFO.sub(r"\g<scheme>***@", text))
