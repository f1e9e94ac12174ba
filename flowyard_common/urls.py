"""Keeping credentials out of what is printed or stored.

A URL's userinfo (``https://user:secret@host/...``) may carry a password or token; every URL
the engine puts in a message or a log line, and every source URL the control plane shows or
logs, goes through :func:`redact_url`, and text from tools that echo URLs (git's stderr)
through :func:`redact_text`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_text", "redact_url"]

# scheme://userinfo@ — userinfo up to the first '@' that precedes the host.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_url(url: str) -> str:
    """``https://user:token@host/x`` → ``https://***@host/x``; other URLs unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def redact_text(text: str) -> str:
    """Every ``scheme://userinfo@`` in ``text`` with its userinfo replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>***@", text)
