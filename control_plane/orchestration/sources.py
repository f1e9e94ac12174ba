"""Checks on a deployment's code source, and what the agent must provide for it.

A source is stored as the JSON form of ``flowyard.v1.Source`` (proto field names), one of::

    {"local": {"path": "/abs/dir"}}
    {"git": {"url": ..., "ref": ..., "subdirectory": ..., "shallow": true,
             "credentials": {"username": ..., "token_env": ..., "token_secret": {"name", "key"}}}}
    {"archive": {"url": ..., "sha256": ..., "subdirectory": ...}}

:func:`check_source` refuses what the engine could never fetch (wrong URL scheme, archive
extension, ref syntax, a subdirectory that climbs out) and anything that would put a
credential in the database: a URL with a password is refused, and the message shows it with
its userinfo redacted. Credentials are only *where to find* a token: an environment variable
name, and for Kubernetes pools the Secret key the agent exposes as that variable
(:func:`secret_env`).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import SplitResult, urlsplit

from control_plane.errors import InvalidArgument
from control_plane.orchestration.validation import shown, text
from flowyard_common.urls import redact_url

__all__ = ["DEFAULT_TOKEN_ENV", "SecretEnvVar", "check_source", "secret_env"]

MAX_PATH_CHARS = 4096
MAX_URL_CHARS = 2048
MAX_REF_CHARS = 255
#: The variable the engine reads a Secret-provided git token from when none is named.
DEFAULT_TOKEN_ENV = "FLOWYARD_GIT_TOKEN"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_RESERVED_ENV = {"FLOWYARD_SERVER", "FLOWYARD_RUN_ID", "FLOWYARD_RUN_ATTEMPT", "FLOWYARD_RUN_TOKEN"}
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SCP_LIKE = re.compile(r"(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+:(?!//)[^\s]+")
_GIT_SCHEMES = ("https", "http", "ssh", "git", "file")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_KINDS = "a local path, a git repository or an archive URL"

SecretEnvVar = tuple[str, str, str]
"""(variable name, Secret name, key in the Secret)."""


def check_source(source: dict[str, Any], field: str = "deployment.source") -> dict[str, Any]:
    """The source to store (normalized), or InvalidArgument naming the field and the fix."""
    kinds = [kind for kind in ("local", "git", "archive") if isinstance(source.get(kind), dict)]
    if len(kinds) != 1:
        raise InvalidArgument(f"{field}: required ({_KINDS})")
    kind = kinds[0]
    if kind == "local":
        return {"local": _local(source["local"], f"{field}.local")}
    if kind == "git":
        return {"git": _git(source["git"], f"{field}.git")}
    return {"archive": _archive(source["archive"], f"{field}.archive")}


def secret_env(source: dict[str, Any]) -> list[SecretEnvVar]:
    """The Secret-backed environment variables the engine needs for this stored source."""
    credentials = source.get("git", {}).get("credentials", {})
    secret = credentials.get("token_secret")
    if not isinstance(secret, dict) or not secret.get("name"):
        return []
    return [(credentials.get("token_env") or DEFAULT_TOKEN_ENV, secret["name"], secret["key"])]


def _string(doc: dict[str, Any], key: str, field: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}.{key}: must be a string")
    return value


def _local(doc: dict[str, Any], field: str) -> dict[str, Any]:
    path = _string(doc, "path", field)
    if not path.startswith("/"):
        raise InvalidArgument(f"{field}.path: {shown(path)} must be an absolute path")
    text(path, f"{field}.path", MAX_PATH_CHARS)
    return {"path": path}


def _git(doc: dict[str, Any], field: str) -> dict[str, Any]:
    url = _string(doc, "url", field)
    if not url:
        raise InvalidArgument(f"{field}.url: required (the repository's clone URL)")
    scheme = _git_url(url, f"{field}.url")
    ref = _ref(_string(doc, "ref", field), f"{field}.ref")
    subdirectory = _subdirectory(_string(doc, "subdirectory", field), f"{field}.subdirectory")
    shallow = doc.get("shallow", False)
    if not isinstance(shallow, bool):
        raise InvalidArgument(f"{field}.shallow: must be true or false")
    checked: dict[str, Any] = {"url": url}
    if ref:
        checked["ref"] = ref
    if subdirectory:
        checked["subdirectory"] = subdirectory
    if shallow:
        checked["shallow"] = True
    credentials = doc.get("credentials")
    if isinstance(credentials, dict) and any(credentials.values()):
        if scheme not in ("https", "http"):
            raise InvalidArgument(
                f"{field}.credentials: tokens are sent over HTTPS only; use an https:// URL "
                f"(for {scheme} URLs, give the engine's image an SSH key or credential helper)"
            )
        checked["credentials"] = _credentials(credentials, f"{field}.credentials")
    return checked


def _git_url(url: str, field: str) -> str:
    text(url, field, MAX_URL_CHARS)
    if any(ch.isspace() for ch in url):
        raise InvalidArgument(f"{field}: {shown(redact_url(url))} must not contain spaces")
    if "://" not in url:
        if _SCP_LIKE.fullmatch(url) and not url.startswith(("-", "/")):
            return "ssh"  # git@host:org/repo.git
        raise InvalidArgument(
            f"{field}: {shown(redact_url(url))} is not a clone URL: use https://, ssh://, "
            "git://, file:// or git@host:path"
        )
    parts = _split(url, field)
    if parts.scheme not in _GIT_SCHEMES:
        raise InvalidArgument(
            f"{field}: scheme {parts.scheme!r} is not supported: use https://, ssh://, "
            "git://, file:// or git@host:path"
        )
    _no_password(parts, url, field)
    if parts.scheme != "file" and not parts.hostname:
        raise InvalidArgument(f"{field}: {shown(redact_url(url))} has no host")
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise InvalidArgument(f"{field}: a file:// URL needs an absolute path")
    return parts.scheme


def _split(url: str, field: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidArgument(f"{field}: {shown(redact_url(url))} is not a URL: {exc}") from None
    return parts


def _no_password(parts: SplitResult, url: str, field: str) -> None:
    if parts.password is not None:
        kind = "credentials.token_env or credentials.token_secret" if "git" in field else None
        fix = f"give it through {kind}" if kind else "serve the archive without credentials"
        raise InvalidArgument(
            f"{field}: {shown(redact_url(url))} embeds a password, which would be stored "
            f"and shown in plain text: remove it from the URL and {fix}"
        )


def _ref(ref: str, field: str) -> str:
    """Branch, tag or sha, by the rules of ``git check-ref-format`` that matter here."""
    if not ref:
        return ref
    problem = ""
    if len(ref) > MAX_REF_CHARS:
        problem = f"longer than {MAX_REF_CHARS} characters"
    elif _BAD_REF_CHARS.search(ref):
        problem = "contains a space, a control character or one of ~ ^ : ? * [ \\"
    elif ".." in ref or "@{" in ref or "//" in ref or ref == "@":
        problem = "contains '..', '@{' or '//'"
    elif ref.startswith(("-", "/", ".")) or ref.endswith(("/", ".", ".lock")):
        problem = "starts with '-', '/' or '.', or ends with '/', '.' or '.lock'"
    elif any(part.startswith(".") for part in ref.split("/")):
        problem = "has a path component starting with '.'"
    if problem:
        raise InvalidArgument(
            f"{field}: {shown(ref)} is not a valid branch, tag or commit: it {problem}"
        )
    return ref


def _subdirectory(value: str, field: str) -> str:
    if not value:
        return value
    text(value, field, MAX_PATH_CHARS)
    parts = value.replace("\\", "/").split("/")
    if value.startswith("/") or ".." in parts:
        raise InvalidArgument(
            f"{field}: {shown(value)} must be a relative path inside the code, without '..'"
        )
    return "/".join(part for part in parts if part not in ("", "."))


def _credentials(doc: dict[str, Any], field: str) -> dict[str, Any]:
    username = _string(doc, "username", field)
    text(username, f"{field}.username", 200)
    if ":" in username or any(ch.isspace() for ch in username):
        raise InvalidArgument(f"{field}.username: must not contain ':' or spaces")
    token_env = _string(doc, "token_env", field)
    secret = doc.get("token_secret")
    has_secret = isinstance(secret, dict) and any(secret.values())
    if not token_env and not has_secret:
        raise InvalidArgument(
            f"{field}: set token_env (the engine's environment variable holding the token) "
            "or token_secret (a Kubernetes Secret key)"
        )
    checked: dict[str, Any] = {}
    if username:
        checked["username"] = username
    if token_env or has_secret:
        checked["token_env"] = _env_name(token_env or DEFAULT_TOKEN_ENV, f"{field}.token_env")
    if has_secret:
        assert isinstance(secret, dict)
        name = _string(secret, "name", f"{field}.token_secret")
        key = _string(secret, "key", f"{field}.token_secret")
        if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
            raise InvalidArgument(
                f"{field}.token_secret.name: {shown(name)} is not a Kubernetes Secret name: "
                "use lowercase letters, digits, '-' and '.', starting and ending with a "
                "letter or digit (at most 253 characters)"
            )
        if not _SECRET_KEY.fullmatch(key):
            raise InvalidArgument(
                f"{field}.token_secret.key: {shown(key)} is not a Secret key: use letters, "
                "digits, '-', '_' and '.' (1-253 characters)"
            )
        checked["token_secret"] = {"name": name, "key": key}
    return checked


def _env_name(name: str, field: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{field}: {shown(name)} is not an environment variable name: use letters, digits "
            "and '_', not starting with a digit (at most 128 characters)"
        )
    if name in _RESERVED_ENV:
        raise InvalidArgument(f"{field}: {name} is reserved for the engine; choose another name")
    return name


def _archive(doc: dict[str, Any], field: str) -> dict[str, Any]:
    url = _string(doc, "url", field)
    if not url:
        raise InvalidArgument(f"{field}.url: required (the archive's http(s) URL)")
    text(url, f"{field}.url", MAX_URL_CHARS)
    parts = _split(url, f"{field}.url")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(
            f"{field}.url: {shown(redact_url(url))} must be an http:// or https:// URL with a host"
        )
    _no_password(parts, url, f"{field}.url")
    if not parts.path.lower().endswith(_ARCHIVE_SUFFIXES):
        raise InvalidArgument(
            f"{field}.url: {shown(redact_url(url))} must end in .tar.gz, .tgz or .zip "
            "(the extension says how to unpack it)"
        )
    checked: dict[str, Any] = {"url": url}
    sha256 = _string(doc, "sha256", field)
    if sha256:
        if not _SHA256.fullmatch(sha256):
            raise InvalidArgument(
                f"{field}.sha256: {shown(sha256)} is not a sha256: 64 hexadecimal characters"
            )
        checked["sha256"] = sha256.lower()
    subdirectory = _subdirectory(_string(doc, "subdirectory", field), f"{field}.subdirectory")
    if subdirectory:
        checked["subdirectory"] = subdirectory
    return checked
