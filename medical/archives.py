"""Read the members of a zip archive with bounded time and memory, whatever its headers say.

A zip holds its own claims about sizes, and a hostile or broken one lies: a few megabytes can
expand to terabytes (a "zip bomb"), by one deflated member of zeros or by many entries that
share one compressed stream. So each member is streamed in chunks and the bytes actually
produced are counted, against three limits:

* bytes per member (`max_member_bytes`): a member is read into memory to be parsed;
* bytes per archive (`max_archive_bytes`), over every member read so far;
* the compression ratio (`max_ratio`): bytes out per compressed byte read so far, for a member
  and for the archive as a whole, checked once more than `ratio_grace_bytes` came out (small
  blank images compress very well and are harmless).

The compressed bytes read are counted below zipfile, on the archive's file object, so the
ratio does not depend on a declared size either. bzip2 and LZMA members are refused: zipfile
decompresses them without an output bound, so one read could expand past any limit before we
count it. Limits come from `ArchiveLimits`, by default from the environment variables named in
the error, which say how to raise them.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

from domainvlm.errors import ConfigError
from domainvlm.medical.errors import ArchiveLimitError, DicomError

MIB = 2**20
CHUNK = 64 * 1024  # uncompressed bytes per read: zipfile reads at most this far ahead
_ENV = {"max_member_bytes": "DOMAINVLM_ZIP_MAX_MEMBER_MB",
        "max_archive_bytes": "DOMAINVLM_ZIP_MAX_ARCHIVE_MB",
        "max_ratio": "DOMAINVLM_ZIP_MAX_RATIO"}


@dataclass(frozen=True)
class ArchiveLimits:
    """How far a zip may expand. Sizes in bytes; the environment gives them in MiB."""

    max_member_bytes: int = 2 * 2**30  # 2 GiB: as large a single object as we decode
    max_archive_bytes: int = 64 * 2**30
    max_ratio: float = 200.0  # DICOM deflates 2-10x; a deflate bomb ~1000x
    ratio_grace_bytes: int = 64 * MIB

    def __post_init__(self) -> None:
        for item in fields(self):
            if getattr(self, item.name) <= 0:
                raise ConfigError(f"ArchiveLimits.{item.name} must be positive; got "
                                  f"{getattr(self, item.name)!r}")

    @classmethod
    def from_env(cls) -> ArchiveLimits:
        """The defaults, overridden by DOMAINVLM_ZIP_MAX_MEMBER_MB / _ARCHIVE_MB / _RATIO."""
        values: dict[str, Any] = {}
        for name, variable in _ENV.items():
            text = os.environ.get(variable, "").strip()
            if not text:
                continue
            try:
                number = float(text)
            except ValueError:
                number = -1.0
            if number <= 0:
                raise ConfigError(f"{variable}={text!r}: give a positive number")
            values[name] = number if name == "max_ratio" else int(number * MIB)
        return cls(**values)


class _CountingFile:
    """The archive's file object, counting the bytes zipfile reads through it."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        data = self._handle.read(n)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def seekable(self) -> bool:
        return True


def zip_members(path: Path, limits: ArchiveLimits | None = None) -> Iterator[tuple[str, Any]]:
    """(`archive:member` name, loader) per file member, sorted; the loader returns its bytes.

    Loaders must be called in order while the generator is open. Raises DicomError for an
    unreadable archive or member, ArchiveLimitError past a limit.
    """
    limits = limits or ArchiveLimits.from_env()
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as err:
        raise DicomError(f"{path}: cannot be read ({err.strerror or err})") from None
    with handle:
        counting = _CountingFile(handle)
        try:
            archive = zipfile.ZipFile(counting)  # type: ignore[arg-type]
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise DicomError(f"{path}: unreadable zip archive ({err})") from None
        size = max(1, path.stat().st_size)
        total = [0]  # bytes out of every member read so far
        with archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                if not info.is_dir():
                    yield f"{path}:{info.filename}", (
                        lambda i=info: _read_member(archive, counting, i, path, size, total,
                                                    limits))


def _read_member(archive: zipfile.ZipFile, counting: _CountingFile, info: zipfile.ZipInfo,
                 path: Path, size: int, total: list[int], limits: ArchiveLimits) -> bytes:
    name = f"{path}:{info.filename}"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DicomError(f"{name}: compressed with method {info.compress_type} (bzip2/LZMA "
                         "or other), which cannot be read with bounded memory; re-zip it "
                         "with deflate (the default of every zip tool)")
    if info.file_size > limits.max_member_bytes:
        _refuse(name, f"declares {info.file_size:,} bytes", "max_member_bytes", limits)
    chunks, out = [], 0
    start = counting.bytes_read
    with _member_errors(name), archive.open(info) as member:
        while chunk := member.read(CHUNK):
            chunks.append(chunk)
            out += len(chunk)
            total[0] += len(chunk)
            _check(name, out, counting.bytes_read - start, total[0], size, limits)
    return b"".join(chunks)


@contextlib.contextmanager
def _member_errors(name: str) -> Iterator[None]:
    """zipfile's errors for a corrupt or lying member (a bad CRC when a header understates
    its size), as one DicomError naming it; ArchiveLimitError passes through."""
    try:
        yield
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, zlib.error,
            NotImplementedError, RuntimeError) as err:
        raise DicomError(f"{name}: unreadable archive member ({err})") from None


def _check(name: str, out: int, compressed: int, total: int, archive_size: int,
           limits: ArchiveLimits) -> None:
    """Refuse once a member or the archive is past a limit, on the bytes seen so far."""
    if out > limits.max_member_bytes:
        _refuse(name, f"expands past {limits.max_member_bytes:,} bytes", "max_member_bytes",
                limits)
    if total > limits.max_archive_bytes:
        _refuse(name, f"brings the archive past {limits.max_archive_bytes:,} bytes "
                "uncompressed", "max_archive_bytes", limits)
    if out > limits.ratio_grace_bytes and out > limits.max_ratio * max(1, compressed):
        _refuse(name, f"expands more than {limits.max_ratio:g} times ({out:,} bytes from "
                f"{compressed:,})", "max_ratio", limits)
    if total > limits.ratio_grace_bytes and total > limits.max_ratio * archive_size:
        _refuse(name, f"brings the archive past {limits.max_ratio:g} times its size on disk "
                f"({total:,} bytes from {archive_size:,}; entries sharing data?)", "max_ratio",
                limits)


def _refuse(name: str, what: str, limit: str, limits: ArchiveLimits) -> None:
    unit = "" if limit == "max_ratio" else " (MiB)"
    raise ArchiveLimitError(
        f"{name}: {what}, over the limit {limit}={getattr(limits, limit):,}; a zip bomb, or "
        f"a larger archive than expected. If you trust it, raise the limit with "
        f"{_ENV[limit]}{unit} or ArchiveLimits({limit}=...), or unzip it yourself first")
