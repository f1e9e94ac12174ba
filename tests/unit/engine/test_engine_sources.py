"""Git and archive sources fetch real code: git over file://, archives from a local server."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from engine.archives import ArchiveSource
from engine.errors import SourceError
from engine.git import GitSource
from flowyard_common.urls import redact_text, redact_url
from tests.codesources import GitRepo, make_repo, serve_files, tar_gz, zip_bytes


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repo = make_repo(tmp_path / "origin")
    repo.commit("first", {"flow.py": "VERSION = 1\n", "flows/sub.py": "X = 1\n"})
    repo.tag("v1", "first")
    repo.commit("second", {"flow.py": "VERSION = 2\n"})
    repo.commit("feature", {"flow.py": "VERSION = 'feature'\n"}, branch="feature")
    return repo


def _fetch(source: GitSource | ArchiveSource, tmp_path: Path, name: str = "w") -> tuple[Path, str]:
    workdir = tmp_path / name
    workdir.mkdir()
    fetched = source.fetch(workdir)
    return fetched.directory, fetched.revision


def test_git_default_branch_records_the_commit(repo: GitRepo, tmp_path: Path) -> None:
    directory, revision = _fetch(GitSource(repo.url), tmp_path)
    assert (directory / "flow.py").read_text() == "VERSION = 2\n"
    assert revision == repo.commits["second"]


@pytest.mark.parametrize(
    ("ref", "label", "content"),
    [
        ("feature", "feature", "VERSION = 'feature'\n"),
        ("v1", "first", "VERSION = 1\n"),
    ],
)
def test_git_branch_and_tag(
    repo: GitRepo, tmp_path: Path, ref: str, label: str, content: str
) -> None:
    directory, revision = _fetch(GitSource(repo.url, ref=ref, shallow=True), tmp_path)
    assert (directory / "flow.py").read_text() == content
    assert revision == repo.commits[label]


def test_git_commit_sha_full_and_shallow(repo: GitRepo, tmp_path: Path) -> None:
    sha = repo.commits["first"]
    directory, revision = _fetch(GitSource(repo.url, ref=sha), tmp_path, "full")
    assert revision == sha and (directory / "flow.py").read_text() == "VERSION = 1\n"
    directory, revision = _fetch(GitSource(repo.url, ref=sha, shallow=True), tmp_path, "shallow")
    assert revision == sha
    # Shallow: the fetched history is the one commit.
    log = (directory / ".git" / "shallow").read_text().split()
    assert log == [sha]


def test_git_subdirectory(repo: GitRepo, tmp_path: Path) -> None:
    directory, _ = _fetch(GitSource(repo.url, ref="v1", subdirectory="flows"), tmp_path)
    assert directory.name == "flows" and (directory / "sub.py").is_file()


def test_git_failures_name_what_is_missing(repo: GitRepo, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"ref 'no-such-branch' not found"):
        _fetch(GitSource(repo.url, ref="no-such-branch"), tmp_path, "a")
    with pytest.raises(SourceError, match=r"ref '0{40}' not found \(no commit"):
        _fetch(GitSource(repo.url, ref="0" * 40), tmp_path, "b")
    with pytest.raises(SourceError, match=r"subdirectory 'nope' not found in the repository"):
        _fetch(GitSource(repo.url, subdirectory="nope"), tmp_path, "c")
    missing = (tmp_path / "missing.git").as_uri()
    with pytest.raises(SourceError, match=r"repository not found or not readable"):
        _fetch(GitSource(missing), tmp_path, "d")


def test_git_token_reaches_the_server_and_no_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "s3cr3t-token-value"
    monkeypatch.setenv("REPO_TOKEN", token)
    with serve_files() as server:
        source = GitSource(
            server.url("org/private.git"), username="x-access-token", token_env="REPO_TOKEN"
        )
        with pytest.raises(SourceError) as raised:
            _fetch(source, tmp_path)
    expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    assert server.headers and all(h.get("Authorization") == expected for h in server.headers)
    assert token not in str(raised.value)
    assert base64.b64encode(token.encode()).decode() not in str(raised.value)


def test_git_token_env_missing_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ABSENT_TOKEN", raising=False)
    with pytest.raises(SourceError, match=r"'ABSENT_TOKEN' is not set in the engine's environment"):
        _fetch(GitSource("https://git.example.invalid/r.git", token_env="ABSENT_TOKEN"), tmp_path)


def test_urls_are_redacted() -> None:
    assert redact_url("https://user:pw@host.example/r.git") == "https://***@host.example/r.git"
    assert redact_url("git@github.com:org/r.git") == "git@github.com:org/r.git"
    assert redact_url("https://h.example/a.tgz?password=pw&v=1") == (
        "https://h.example/a.tgz?password=***&v=1"
    )
    said = "fatal: unable to access 'https://u:tok@h.example/r.git/': 403"
    assert "tok" not in redact_text(said) and "***@h.example" in redact_text(said)
    assert GitSource("https://u:pw@h.example/r.git").describe() == "git https://***@h.example/r.git"


FLOW_FILES = {"pkg/flow.py": "def main():\n    return 1\n", "pkg/data/x.txt": "x"}


@pytest.mark.parametrize("kind", ["tar.gz", "tgz", "zip"])
def test_archive_unpacks_and_checks_sha256(tmp_path: Path, kind: str) -> None:
    body = zip_bytes(FLOW_FILES) if kind == "zip" else tar_gz(dict(FLOW_FILES))
    digest = hashlib.sha256(body).hexdigest()
    with serve_files({f"code.{kind}": body}) as server:
        source = ArchiveSource(server.url(f"code.{kind}"), sha256=digest, subdirectory="pkg")
        directory, revision = _fetch(source, tmp_path)
        assert revision == digest
        assert (directory / "flow.py").is_file() and (directory / "data" / "x.txt").is_file()
        with pytest.raises(
            SourceError, match=rf"sha256 mismatch: expected {'0' * 64}, got {digest}"
        ):
            _fetch(ArchiveSource(server.url(f"code.{kind}"), sha256="0" * 64), tmp_path, "bad")


def test_archive_failures_name_what_is_missing(tmp_path: Path) -> None:
    with serve_files({"code.tar.gz": tar_gz(dict(FLOW_FILES))}) as server:
        with pytest.raises(SourceError, match=r"download failed: HTTP 404"):
            _fetch(ArchiveSource(server.url("gone.tar.gz")), tmp_path, "a")
        with pytest.raises(SourceError, match=r"subdirectory 'other' not found in the archive"):
            _fetch(ArchiveSource(server.url("code.tar.gz"), subdirectory="other"), tmp_path, "b")
        port = server.base_url.rsplit(":", 1)[1]
    # The server is gone: nothing listens on its port any more.
    with pytest.raises(SourceError, match=r"cannot download"):
        _fetch(ArchiveSource(f"http://127.0.0.1:{port}/code.tar.gz"), tmp_path, "c")


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    "extra",
    [
        _member("../escape.py"),
        _member("/etc/evil.py"),
        _member("link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("up", tarfile.SYMTYPE, "../../outside"),
    ],
    ids=["dotdot", "absolute", "absolute-link", "relative-link-out"],
)
def test_archive_refuses_members_outside(tmp_path: Path, extra: tarfile.TarInfo) -> None:
    body = tar_gz({"flow.py": "x = 1\n"}, [extra])
    with (
        serve_files({"evil.tar.gz": body}) as server,
        pytest.raises(SourceError, match=r"unsafe member"),
    ):
        _fetch(ArchiveSource(server.url("evil.tar.gz")), tmp_path)
    assert not (tmp_path / "escape.py").exists() and not (tmp_path / "outside").exists()


def test_zip_refuses_members_outside(tmp_path: Path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zipped:
        zipped.writestr("../escape.py", "x")
    with (
        serve_files({"evil.zip": out.getvalue()}) as server,
        pytest.raises(SourceError, match=r"unsafe member '../escape.py'"),
    ):
        _fetch(ArchiveSource(server.url("evil.zip")), tmp_path)
    assert not (tmp_path / "escape.py").exists()


def test_archive_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.archives.MAX_UNPACKED_BYTES", 1000)
    body = tar_gz({"big.bin": b"\0" * 5000})
    with (
        serve_files({"big.tar.gz": body}) as server,
        pytest.raises(SourceError, match=r"more than the 0 MiB limit"),
    ):
        _fetch(ArchiveSource(server.url("big.tar.gz")), tmp_path)


def test_not_an_archive(tmp_path: Path) -> None:
    with (
        serve_files({"code.tar.gz": b"this is not gzip"}) as server,
        pytest.raises(SourceError, match=r"not a readable archive"),
    ):
        _fetch(ArchiveSource(server.url("code.tar.gz")), tmp_path)
