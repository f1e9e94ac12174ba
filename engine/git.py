"""Code in a git repository, fetched with the ``git`` command.

The engine makes an empty repository, fetches exactly the requested ref (a branch, a tag or
a full commit sha; the remote's default branch when none is given), checks it out detached
and records ``HEAD``'s sha as the run's source revision. ``shallow`` fetches only that commit.

Credentials never appear on a command line, in a URL or in a message: the token is read from
the environment variable the deployment names (``token_env``; on Kubernetes the agent fills it
from a Secret) and handed to git as an ``http.extraHeader`` through git's own
``GIT_CONFIG_*`` environment variables, which only the git process sees. git is never allowed
to prompt, and what it prints is redacted before it reaches a message.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.errors import SourceError
from engine.storage import FetchedCode, subdirectory_of
from flowyard_common.urls import redact_text, redact_url

__all__ = ["GIT_TIMEOUT_SECONDS", "GitSource"]

#: How long one git command may take (a large clone over a slow link still fits).
GIT_TIMEOUT_SECONDS = 900.0
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_MISSING_REF = (
    "couldn't find remote ref",
    "not our ref",
    "no such remote ref",
    "unadvertised object",
    "bad object",
)
_NO_REPOSITORY = (
    "does not appear to be a git repository",
    "repository not found",
    "not found",
    "could not read from remote repository",
)


def _origin(url: str) -> str:
    """``https://host:port/`` of a URL (without userinfo), as git's per-URL config key."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/"


@dataclass(frozen=True)
class GitSource:
    """A git repository, one ref of it, and the directory inside it that holds the flow."""

    url: str
    ref: str = ""
    subdirectory: str = ""
    shallow: bool = False
    username: str = ""
    token_env: str = ""

    def describe(self) -> str:
        """``git <url> @ <ref>`` (the URL without any userinfo)."""
        return f"git {redact_url(self.url)}" + (f" @ {self.ref}" if self.ref else "")

    def fetch(self, workdir: Path) -> FetchedCode:
        """Clone the ref into ``workdir/repository`` and return its (sub)directory."""
        env = self._environment()
        checkout = workdir / "repository"
        checkout.mkdir(parents=True, exist_ok=True)
        self._git(["init", "--quiet", str(checkout)], env, workdir)
        target = self.ref or "HEAD"
        fetch = ["fetch", "--quiet", "--no-tags"]
        if self.shallow:
            fetch.append("--depth=1")
        self._git([*fetch, "--", self.url, target], env, checkout, fetching=True)
        self._git(["checkout", "--quiet", "--detach", "FETCH_HEAD"], env, checkout)
        revision = self._git(["rev-parse", "HEAD"], env, checkout).strip()
        where = f"repository {redact_url(self.url)} at {revision[:12]}"
        return FetchedCode(subdirectory_of(checkout, self.subdirectory, where), revision)

    def _environment(self) -> dict[str, str]:
        env = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",  # fail instead of waiting for a password forever
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        if self.token_env:
            token = os.environ.get(self.token_env)
            if not token:
                raise SourceError(
                    f"git source {redact_url(self.url)}: the credential's environment variable "
                    f"{self.token_env!r} is not set in the engine's environment (on Kubernetes "
                    "pools set credentials.token_secret so that the agent provides it)"
                )
            basic = base64.b64encode(f"{self.username or 'git'}:{token}".encode()).decode()
            count = int(env.get("GIT_CONFIG_COUNT", "0") or "0")
            env["GIT_CONFIG_COUNT"] = str(count + 1)
            # Scoped to the repository's host, so a redirect elsewhere never receives it.
            env[f"GIT_CONFIG_KEY_{count}"] = f"http.{_origin(self.url)}.extraHeader"
            env[f"GIT_CONFIG_VALUE_{count}"] = f"Authorization: Basic {basic}"
        return env

    def _git(
        self, args: list[str], env: dict[str, str], cwd: Path, *, fetching: bool = False
    ) -> str:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_SECONDS,
                check=False,
            )
        except FileNotFoundError:
            raise SourceError(
                "git source: the 'git' command is not installed in the flow's image"
            ) from None
        except subprocess.TimeoutExpired:
            raise SourceError(
                f"git source {redact_url(self.url)}: 'git {args[0]}' took longer than "
                f"{GIT_TIMEOUT_SECONDS:g} s"
            ) from None
        if done.returncode != 0:
            raise SourceError(self._failure(args[0], done.stderr, fetching))
        return done.stdout

    def _failure(self, command: str, stderr: str, fetching: bool) -> str:
        url = redact_url(self.url)
        said = redact_text(" ".join(line.strip() for line in stderr.strip().splitlines()))
        lowered = said.lower()
        if fetching and any(marker in lowered for marker in _MISSING_REF):
            what = "commit" if _SHA.fullmatch(self.ref) else "branch, tag or commit"
            return f"git source {url}: ref {self.ref!r} not found (no {what} of that name)"
        if fetching and any(marker in lowered for marker in _NO_REPOSITORY):
            return f"git source {url}: repository not found or not readable ({said})"
        if fetching:
            return f"git source {url}: cannot fetch {self.ref or 'the default branch'}: {said}"
        return f"git source {url}: 'git {command}' failed: {said}"
