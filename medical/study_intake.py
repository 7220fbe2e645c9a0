"""A study arriving at `domainvlm serve`: raw bytes in a private folder, de-identified, published.

Raw data (an upload or a PACS retrieval) is patient data until `deidentify_tree` has run, so
it lives only in a folder of its own (mode 0700) under the data dir's `incoming/`, which the
route removes in a `finally`, on errors and client disconnects too. Uploaded files are written
under their position (`file-00002`), never under the name the client gave, and every message
names a file by that position: a client's file name may hold a patient's name. Only the
de-identified tree is moved (renamed, in one step) to `studies/<study id>/<series UID>/`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from domainvlm.adapters.service.problems import Problem
from domainvlm.medical.archives import ArchiveLimits, zip_members
from domainvlm.medical.errors import (
    ArchiveLimitError,
    BurnedInAnnotationError,
    DicomError,
    NotDicomError,
    PacsError,
)

FIELD = "files"  # the multipart field uploads come in
_POSITION = re.compile(r"(file|member)-(\d+)")
_NAME_OF = {"file": "file", "member": "zip member"}
STALE_S = 24 * 3600.0  # a raw folder this old belongs to no request still running
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class SeriesSummary:
    uid: str
    description: str
    modality: str
    instances: int
    number: int | None  # SeriesNumber, for ordering only


@dataclass(frozen=True)
class Published:
    """A de-identified study in place under the studies folder."""

    folder: Path
    study_uid: str
    series: list[SeriesSummary]

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.series)

    @property
    def modality(self) -> str:
        return ",".join(sorted({s.modality for s in self.series if s.modality}))


@contextlib.contextmanager
def private_folder(data_dir: Path) -> Iterator[Path]:
    """A new folder only this process's user can read, removed when the block ends. Its name
    says which host and process made it, so that replicas sharing the data dir can tell
    whose leftovers they may remove (`clear_incoming`)."""
    incoming = incoming_dir(data_dir)
    incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = f"raw-{socket.gethostname()}-{os.getpid()}-"
    folder = Path(tempfile.mkdtemp(prefix=owner, dir=incoming))  # mode 0700
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def incoming_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "incoming"


def clear_incoming(data_dir: Path, max_age_s: float = STALE_S) -> list[str]:
    """Make the (private) incoming folder and remove the raw folders (patient data) a killed
    process left in it: this host's whose process is gone, and any older than `max_age_s`
    (another host's, or a reused process id). Another live replica's are left alone.
    Returns the names removed."""
    incoming = incoming_dir(data_dir)
    incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
    host, removed = socket.gethostname(), []
    for leftover in sorted(incoming.iterdir()):
        made_by, pid = _maker(leftover.name)
        gone = made_by == f"raw-{host}" and not _alive(pid)
        if gone or time.time() - leftover.stat().st_mtime > max_age_s:
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover.name)
    return removed


def _maker(name: str) -> tuple[str, int | None]:
    """("raw-HOST", pid) from a `private_folder` name (mkdtemp's suffix has no '-')."""
    parts = name.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return "", None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


# ---------------------------------------------------------------------------------- upload

async def receive_files(stream: AsyncIterator[bytes], content_type: str, folder: Path,
                        max_files: int) -> list[Path]:
    """Stream the `files` parts of a multipart body into `folder/file-NNNNN`, in order.

    Other fields are read past. A client disconnect (starlette's ClientDisconnect) passes
    through: the caller's `private_folder` removes what arrived."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.concurrency import run_in_threadpool

    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise Problem(415, "send the study as multipart/form-data, each DICOM file (or one "
                      f".zip) in a `{FIELD}` part", "unsupported-media-type")
    folder.mkdir(exist_ok=True)
    paths: list[Path] = []
    pending: list[tuple[Path, bytes]] = []
    part: dict[str, Any] = {"headers": {}, "field": "", "value": b"", "path": None}

    def on_part_begin() -> None:
        part.update(headers={}, field="", value=b"", path=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part["field"] += data[start:end].decode("latin-1")

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][part["field"].lower()] = part["value"]
        part.update(field="", value=b"")

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(part["headers"].get("content-disposition", b""))
        if disposition.get(b"name") != FIELD.encode():
            return
        if len(paths) >= max_files:
            raise Problem(413, f"more than {max_files} files in one study; send fewer (or "
                          "raise the server's limit)", "too-many-files")
        path = folder / f"file-{len(paths) + 1:05d}"
        path.touch(mode=0o600, exist_ok=False)
        paths.append(path)
        part["path"] = path

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part["path"] is not None:
            pending.append((part["path"], data[start:end]))

    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data})
    try:
        async for chunk in stream:
            parser.write(chunk)
            if pending:  # disk writes off the event loop
                await run_in_threadpool(_append, list(pending))
                pending.clear()
        parser.finalize()
    except MultipartParseError:
        raise Problem(400, "the multipart body is malformed; send it as a browser or `curl -F "
                      f"{FIELD}=@FILE` does", "bad-multipart") from None
    if not paths:
        raise Problem(422, f"no file given: send DICOM files (or one .zip) in the `{FIELD}` "
                      "field", "invalid-request")
    return paths


def _append(chunks: list[tuple[Path, bytes]]) -> None:
    for path, data in chunks:
        with path.open("ab") as handle:
            handle.write(data)


def unpack(paths: list[Path], work: Path, max_files: int, max_unzipped_bytes: int) -> Path:
    """The folder of an upload's DICOM files: theirs, or `work/members` holding one zip's
    members as `member-NNNNN`, unpacked within the server's limits (a zip bomb is refused,
    413; a member path that is absolute or climbs out, 400, although no name is used)."""
    zips = [n for n, path in enumerate(paths, start=1) if zipfile.is_zipfile(path)]
    if not zips:
        return paths[0].parent
    if len(paths) > 1:
        raise Problem(400, f"file {zips[0]} is a zip among {len(paths)} files; send one .zip "
                      "alone, or the DICOM files themselves", "bad-upload")
    default = ArchiveLimits()
    limits = ArchiveLimits(max_member_bytes=min(default.max_member_bytes, max_unzipped_bytes),
                           max_archive_bytes=max_unzipped_bytes)
    members = work / "members"
    members.mkdir()
    prefix = f"{paths[0]}:"
    written = 0
    try:
        for number, (name, load) in enumerate(zip_members(paths[0], limits), start=1):
            if number > max_files:
                raise Problem(413, f"the zip holds more than {max_files} files; send fewer "
                              "(or raise the server's limit)", "too-many-files")
            if _climbs_out(name.removeprefix(prefix)):
                raise Problem(400, f"zip member {number} has an absolute path or one with "
                              "'..' (zip slip); refused", "zip-slip")
            data = load()
            if data[:4] == b"PK\x03\x04":
                raise Problem(400, f"zip member {number} is itself a zip; send one flat zip",
                              "bad-upload")
            (members / f"member-{number:05d}").write_bytes(data)
            written += 1
    except ArchiveLimitError:
        raise Problem(413, f"the zip expands past the server's limits ({max_unzipped_bytes:,} "
                      f"bytes, at most {default.max_ratio:g} times its size): a zip bomb, or "
                      "a study larger than this server takes", "zip-too-large") from None
    except DicomError:
        raise Problem(400, "the zip cannot be read (damaged, or compressed with a method "
                      "other than deflate)", "bad-zip") from None
    if not written:
        raise Problem(422, "the zip holds no files", "invalid-request")
    return members


def _climbs_out(member: str) -> bool:
    path = PurePosixPath(member.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or re.match(r"[A-Za-z]:", member) is not None


def check_dicom(folder: Path) -> None:
    """400 naming the first file of `folder` by position that is not readable DICOM (the
    de-identification would pass over it in silence)."""
    from domainvlm.medical.io import read_dataset

    for path in sorted(folder.iterdir()):
        label = position(path)
        try:
            ds = read_dataset(path, label, stop_before_pixels=True)
        except NotDicomError:
            raise Problem(400, f"{label} is not a DICOM file (no 'DICM' header and no SOP "
                          "Class UID); send DICOM files or one .zip of them",
                          "not-dicom") from None
        except DicomError:
            raise Problem(400, f"{label} is damaged DICOM: its header cannot be parsed",
                          "bad-dicom") from None
        missing = [k for k in _REQUIRED if not ds.get(k)]
        if missing and "DirectoryRecordSequence" not in ds:  # a DICOMDIR index is passed over
            raise Problem(400, f"{label} is damaged or incomplete DICOM: no "
                          f"{', '.join(missing)}", "bad-dicom")


def position(path: Path | str) -> str:
    """"file 2" / "zip member 7" for a raw file named by `receive_files` or `unpack`."""
    found = _POSITION.search(Path(str(path)).name)
    return f"{_NAME_OF[found[1]]} {int(found[2])}" if found else "a file"


# ------------------------------------------------------------------------------------ PACS

def retrieve(url: str, study_uid: str, folder: Path, max_files: int) -> None:
    """Every series of the study `study_uid` in the PACS at `url` into `folder`; 404 when the
    PACS has no such study, 502 when it fails."""
    from domainvlm.medical.pacs import PacsClient

    try:
        client = PacsClient(url)
        series = client.search_series(study_uid)
        if not series:
            raise Problem(404, "the PACS has no study with that StudyInstanceUID",
                          "study-not-in-pacs")
        count = 0
        for number, record in enumerate(series, start=1):
            count += len(client.retrieve_series_to(folder / f"series-{number:03d}", study_uid,
                                                   record.series_uid))
            if count > max_files:
                raise Problem(413, f"the study has more than {max_files} instances; the server "
                              "takes fewer", "too-many-files")
    except PacsError as err:
        raise Problem(502, f"the PACS failed: {err}", "pacs-failed") from None


# ------------------------------------------------------------------- de-identify, publish

def deidentify_and_publish(raw: Path, work: Path, studies_dir: Path, study_id: str,
                           project_key: str) -> Published:
    """De-identify every file under `raw` and move the one study it holds to
    `studies_dir/study_id` in one rename. 400 / 422 naming a file by position."""
    from domainvlm.atomic import publish
    from domainvlm.medical.deid import DeidConfig, deidentify_tree

    out = work / "deid"
    try:
        report = deidentify_tree(raw, out, DeidConfig(project_key=project_key))
    except BurnedInAnnotationError as err:
        raise Problem(422, f"{position(str(err).split(':', 1)[0])}: its pixels may show the "
                      "patient's name or ID (burned-in annotation); de-identification does not "
                      "change pixels, so the service refuses it", "burned-in") from None
    except DicomError:
        raise Problem(400, "no readable DICOM image in the study", "bad-dicom") from None
    if report.skipped:
        where = ", ".join(position(item.split(": ", 1)[0]) for item in report.skipped[:5])
        raise Problem(400, f"{len(report.skipped)} file(s) could not be de-identified "
                      f"({where}): damaged DICOM", "bad-dicom")
    studies = [p for p in out.iterdir() if p.is_dir()]
    if len(studies) != 1:
        raise Problem(400, f"the upload holds {len(studies)} studies; send one study per "
                      "request", "several-studies")
    series = summarise(studies[0])
    final = Path(studies_dir) / study_id
    final.parent.mkdir(parents=True, exist_ok=True)
    publish(studies[0], final)
    study_uid = _header(next(final.rglob("*.dcm"))).get("StudyInstanceUID", "")
    return Published(final, str(study_uid), series)


def summarise(study: Path) -> list[SeriesSummary]:
    """The series of a de-identified study folder, by SeriesNumber then UID."""
    found = []
    for folder in sorted(p for p in study.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.dcm"))
        ds = _header(files[0])
        number = ds.get("SeriesNumber")
        found.append(SeriesSummary(
            uid=str(ds.get("SeriesInstanceUID", folder.name)),
            description=str(ds.get("SeriesDescription", "") or ""),
            modality=str(ds.get("Modality", "") or ""), instances=len(files),
            number=int(number) if number not in (None, "") else None))
    return sorted(found, key=lambda s: (s.number is None, s.number or 0, s.uid))


def _header(path: Path) -> Any:
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


def remove_study(folder: Path) -> None:
    """Take a study folder out of view in one rename, then delete it."""
    if not folder.exists():
        return
    trash = folder.parent / f".deleted-{folder.name}-{os.getpid()}"
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)
