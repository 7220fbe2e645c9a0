"""Zip archives: members streamed within limits, so a zip bomb is refused fast and small."""

from __future__ import annotations

import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from domainvlm.errors import ConfigError
from domainvlm.medical.archives import ArchiveLimits, zip_members
from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series
from domainvlm.medical.errors import ArchiveLimitError, DicomError
from domainvlm.medical.io import iter_dicom, read_frames

MIB = 2**20


def deflated_zeros(mib: int) -> bytes:
    """A raw deflate stream of `mib` MiB of zeros, built without ever holding them: after a
    full flush the compressor forgets its history, so every 1 MiB block compresses alike."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b"\0" * MIB) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * mib + compressor.flush(zlib.Z_FINISH)


def write_zip(path: Path, data: bytes, declared: int, *, entries: int = 1, crc: int = 0) -> None:
    """A zip whose one deflated member (`data`) claims `declared` bytes; `entries` central
    directory entries all point at it (a bomb of entries sharing one compressed stream)."""
    name = b"x.dcm"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data),
                        declared, len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc,
                          len(data), declared, len(name), 0, 0, 0, 0, 0, 0) + name
    start = len(local) + len(data)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, entries, entries, entries * len(central),
                      start, 0)
    path.write_bytes(local + data + central * entries + end)


def read_all(path: Path, limits: ArchiveLimits | None = None) -> int:
    return sum(len(load()) for _, load in zip_members(path, limits))


@pytest.fixture()
def series_zip(tmp_path) -> tuple[Path, np.ndarray]:
    hu = np.arange(3 * 16 * 16, dtype=float).reshape(3, 16, 16) - 500
    paths = write_ct_series(hu, tmp_path / "s", SeriesSpec("1.2.826.0.1.3680043.8.498.5",
                                                           "1.2.826.0.1.3680043.8.498.6"))
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in paths:
            zf.write(path, f"s/{path.name}")
    return archive, hu


# (what the archive is, how it is built, the limit that must stop it)
BOMBS = [
    ("1.5 GiB of zeros in 1.5 MB, size declared truthfully", "honest", "expands more than 200"),
    ("3 GiB of zeros, size declared", "declared", "max_member_bytes"),
    ("1.5 GiB of zeros declaring 1 MiB (a lying header)", "lying", "unreadable archive member"),
    ("100 entries sharing one 48 MiB stream", "shared", "times its size on disk"),
]


@pytest.mark.parametrize(("what", "kind", "stopped_by"), BOMBS, ids=[b[1] for b in BOMBS])
def test_a_zip_bomb_is_refused_fast_in_bounded_memory(tmp_path, what, kind, stopped_by):
    archive = tmp_path / "bomb.zip"
    if kind == "shared":
        write_zip(archive, deflated_zeros(48), 48 * MIB, entries=100,
                  crc=zlib.crc32(b"\0" * 48 * MIB))
    else:
        mib = 3072 if kind == "declared" else 1536
        write_zip(archive, deflated_zeros(mib), MIB if kind == "lying" else mib * MIB)
    assert archive.stat().st_size < 4 * MIB
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DicomError, match=stopped_by) as caught:
            read_all(archive)  # default limits
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 10
    assert peak < 150 * MIB, f"{what}: peak {peak / MIB:.0f} MiB"
    assert f"{archive}:x.dcm" in str(caught.value)
    if "unreadable" not in stopped_by:
        assert isinstance(caught.value, ArchiveLimitError)
        assert "DOMAINVLM_ZIP_MAX_" in str(caught.value)  # how to raise it


@pytest.mark.parametrize(("limits", "message"), [
    (ArchiveLimits(max_member_bytes=1000), "declares 1,5.. bytes, over the limit max_member_"),
    (ArchiveLimits(max_archive_bytes=1100 + 2 * 16 * 16 * 2),
     "brings the archive past"),
    (ArchiveLimits(max_ratio=1.5, ratio_grace_bytes=100), "expands more than 1.5 times"),
])
def test_each_limit_counts_the_bytes_read(series_zip, limits, message):
    """Real slices (about 1.5 kB each, deflating 2-3x) under limits set just below them: the
    archive total and the ratio count bytes as they come out; a member's declared size is
    checked before it is read (zipfile never returns more than it declares: see `lying`)."""
    archive, _ = series_zip
    with pytest.raises(ArchiveLimitError, match=message) as caught:
        list(iter_dicom(archive, limits=limits))
    assert f"{archive}:s/0" in str(caught.value)


def test_normal_zips_still_read_and_env_raises_limits(series_zip, monkeypatch):
    archive, hu = series_zip
    frames = np.concatenate([read_frames(s.dataset) for s in iter_dicom(archive)])
    np.testing.assert_array_equal(frames, hu)
    monkeypatch.setenv("DOMAINVLM_ZIP_MAX_MEMBER_MB", "0.0005")
    with pytest.raises(ArchiveLimitError, match="DOMAINVLM_ZIP_MAX_MEMBER_MB"):
        list(iter_dicom(archive))
    monkeypatch.setenv("DOMAINVLM_ZIP_MAX_MEMBER_MB", "lots")
    with pytest.raises(ConfigError, match="DOMAINVLM_ZIP_MAX_MEMBER_MB='lots'"):
        list(iter_dicom(archive))


def test_members_without_an_output_bound_are_refused(tmp_path):
    archive = tmp_path / "bz.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("a.dcm", b"\0" * 1000)
    with pytest.raises(DicomError, match="re-zip it with deflate"):
        read_all(archive)
