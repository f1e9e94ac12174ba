"""Code in a ``.tar.gz``/``.tgz`` or ``.zip`` archive served over http(s).

The archive is downloaded to the engine's scratch directory while its sha256 is computed (a
deployment that gives one gets a FAILED run on a mismatch, before anything is unpacked) and
then unpacked safely: no absolute paths, no ``..``, no links or devices leading outside the
directory (tar's ``data`` filter), and at most :data:`MAX_ARCHIVE_BYTES` downloaded and
:data:`MAX_UNPACKED_BYTES` unpacked. The archive's sha256 is the run's source revision.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.errors import SourceError
from engine.storage import FetchedCode, subdirectory_of
from flowyard_common.urls import redact_url

__all__ = ["MAX_ARCHIVE_BYTES", "MAX_UNPACKED_BYTES", "ArchiveSource", "unpack"]

MAX_ARCHIVE_BYTES = 512 << 20
MAX_UNPACKED_BYTES = 2 << 30
DOWNLOAD_TIMEOUT_SECONDS = 60.0
_CHUNK = 1 << 16


@dataclass(frozen=True)
class ArchiveSource:
    """An archive URL, its expected sha256 (optional) and the directory inside it."""

    url: str
    sha256: str = ""
    subdirectory: str = ""

    def describe(self) -> str:
        """``archive <url>`` (without any userinfo)."""
        return f"archive {redact_url(self.url)}"

    def fetch(self, workdir: Path) -> FetchedCode:
        """Download, check, unpack; return the (sub)directory and the archive's sha256."""
        url = redact_url(self.url)
        name = PurePosixPath(self.url.split("?", 1)[0]).name or "archive"
        path = workdir / f"download-{name}"
        digest = self._download(path, url)
        if self.sha256 and digest != self.sha256.lower():
            raise SourceError(
                f"archive {url}: sha256 mismatch: expected {self.sha256.lower()}, got {digest}"
            )
        target = workdir / "archive"
        target.mkdir(parents=True, exist_ok=True)
        unpack(path, target, url)
        path.unlink(missing_ok=True)
        where = f"archive {url}"
        return FetchedCode(subdirectory_of(target, self.subdirectory, where), digest)

    def _download(self, path: Path, url: str) -> str:
        digest = hashlib.sha256()
        size = 0
        request = urllib.request.Request(self.url, headers={"User-Agent": "flowyard-engine"})
        try:
            with (
                urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response,
                path.open("wb") as out,
            ):
                while chunk := response.read(_CHUNK):
                    size += len(chunk)
                    if size > MAX_ARCHIVE_BYTES:
                        raise SourceError(
                            f"archive {url}: larger than {MAX_ARCHIVE_BYTES >> 20} MiB"
                        )
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise SourceError(
                f"archive {url}: download failed: HTTP {exc.code} {exc.reason}"
            ) from None
        except urllib.error.URLError as exc:
            raise SourceError(f"archive {url}: cannot download: {exc.reason}") from None
        except (TimeoutError, ConnectionError) as exc:
            raise SourceError(f"archive {url}: cannot download: {exc}") from None
        except ValueError as exc:  # a URL urllib cannot use
            raise SourceError(f"archive {url}: cannot download: {exc}") from None
        return digest.hexdigest()


def unpack(archive: Path, target: Path, url: str) -> None:
    """Unpack a tar.gz or zip into ``target`` refusing anything that would land outside it.

    Raises:
        SourceError: the file is not such an archive, a member is unsafe, or it is too large.
    """
    lowered = url.lower().split("?", 1)[0]
    try:
        if lowered.endswith(".zip"):
            _unzip(archive, target, url)
        else:
            _untar(archive, target, url)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise SourceError(f"archive {url}: not a readable archive: {exc}") from None


def _untar(archive: Path, target: Path, url: str) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        total = sum(member.size for member in members if member.isfile())
        _check_size(total, url)
        for member in members:
            _check_name(member.name, url)
            try:
                # The "data" filter refuses absolute names, "..", links that point outside
                # and device files, and drops permissions that would matter.
                tar.extract(member, target, filter="data")
            except tarfile.FilterError as exc:
                raise SourceError(f"archive {url}: unsafe member {member.name!r}: {exc}") from None


def _unzip(archive: Path, target: Path, url: str) -> None:
    root = target.resolve()
    with zipfile.ZipFile(archive) as zipped:
        infos = zipped.infolist()
        _check_size(sum(info.file_size for info in infos), url)
        for info in infos:
            _check_name(info.filename, url)
            destination = (root / info.filename).resolve()
            if not destination.is_relative_to(root):
                raise SourceError(
                    f"archive {url}: unsafe member {info.filename!r}: it would be written "
                    "outside the unpack directory"
                )
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            # Written as a regular file whatever the entry's mode says: a zip "symlink"
            # becomes a file holding its target's name, never a link.
            with zipped.open(info) as source, destination.open("wb") as out:
                shutil.copyfileobj(source, out, _CHUNK)


def _check_name(name: str, url: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise SourceError(
            f"archive {url}: unsafe member {name!r}: absolute paths and '..' are refused"
        )


def _check_size(total: int, url: str) -> None:
    if total > MAX_UNPACKED_BYTES:
        raise SourceError(
            f"archive {url}: unpacks to {total >> 20} MiB, more than the "
            f"{MAX_UNPACKED_BYTES >> 20} MiB limit"
        )
