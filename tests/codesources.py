"""Real code sources for tests: git repositories served over file:// and archives served by a
local HTTP server started by the test."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` with a fixed identity; its stdout."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=_GIT_ENV, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@dataclass
class GitRepo:
    """A bare repository (``url`` is its file:// URL) and a working clone to commit from."""

    bare: Path
    work: Path
    commits: dict[str, str] = field(default_factory=dict)
    """Label → commit sha of what the test committed."""

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, label: str, files: dict[str, str], branch: str = "main") -> str:
        """Commit ``files`` on ``branch`` (created from the current commit if new) and push."""
        if branch not in git(self.work, "branch", "--list", branch):
            git(self.work, "checkout", "-q", "-b", branch)
        else:
            git(self.work, "checkout", "-q", branch)
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", label)
        git(self.work, "push", "-q", "origin", branch)
        sha = git(self.work, "rev-parse", "HEAD")
        self.commits[label] = sha
        return sha

    def tag(self, name: str, label: str) -> None:
        git(self.work, "tag", name, self.commits[label])
        git(self.work, "push", "-q", "origin", name)


def make_repo(root: Path) -> GitRepo:
    """An empty bare repository whose default branch is ``main``, and a clone of it."""
    bare = root / "repo.git"
    work = root / "work"
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "--bare", "--initial-branch=main", str(bare))
    git(root, "clone", "-q", str(bare), str(work))
    git(work, "checkout", "-q", "-b", "main")
    return GitRepo(bare, work)


def tar_gz(files: dict[str, str | bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A .tar.gz holding ``files`` (and any hand-made members in ``extra``)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return out.getvalue()


def zip_bytes(files: dict[str, str]) -> bytes:
    """A .zip holding ``files``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zipped:
        for name, content in files.items():
            zipped.writestr(name, content)
    return out.getvalue()


@dataclass
class FileServer:
    """Files served over HTTP on loopback; ``headers`` records each request's headers."""

    base_url: str
    files: dict[str, bytes]
    headers: list[dict[str, str]]

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


@contextlib.contextmanager
def serve_files(files: dict[str, bytes] | None = None) -> Iterator[FileServer]:
    """An HTTP server on 127.0.0.1 serving ``files`` by name (404 for anything else)."""
    served: dict[str, bytes] = dict(files or {})
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers.items()))
            body = served.get(self.path.lstrip("/").split("?", 1)[0])
            if body is None:
                self.send_error(404, "no such file")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="test-file-server", daemon=True)
    thread.start()
    try:
        yield FileServer(f"http://127.0.0.1:{server.server_address[1]}", served, seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
