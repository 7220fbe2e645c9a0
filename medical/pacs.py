"""A PACS over DICOMweb: QIDO-RS search, WADO-RS retrieve, STOW-RS store.

`PacsClient` wraps `dicomweb_client.DICOMwebClient` so callers get small typed records instead
of DICOM JSON, and one error type, `PacsError`, whose message has the URL path, the HTTP
status and what to do. Search filters such as PatientName are patient data: they travel in the
query string, so messages carry only the path, and the DEBUG logs of dicomweb-client and
urllib3 (which print whole URLs) get their query strings redacted.

Orthanc 1.10 (DICOMweb plugin 1.7) does not percent-decode query values: dicomweb-client sends
`PatientName=Smith%2A`, which Orthanc compares literally, so wildcards and UID lists never
match. `*` and `,` are legal as-is in a query (RFC 3986 sub-delims), so they are sent raw;
a decoding server reads the same value either way. Values with `^` or spaces cannot be made
to match on Orthanc 1.10 (HTTP clients must escape them): search such names with `*`.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from domainvlm.medical.errors import PacsError

STORE_BATCH = 32  # instances per STOW request: bounds memory for long series
_STUDY_FIELDS = ("StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                 "NumberOfStudyRelatedInstances", "PatientID", "PatientName", "AccessionNumber")
_SERIES_FIELDS = ("SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances")
_INSTANCE_FIELDS = ("InstanceNumber", "SOPClassUID")
_QUERY = re.compile(r"\?[^\s\"']*")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_WHAT_TO_DO = {
    400: "the server rejected the request; check the filter keywords and values",
    401: "the PACS wants credentials; pass headers={'Authorization': ...}",
    403: "the PACS refused access; check credentials and that it allows this host",
    404: "no such resource: check the UIDs (search first) and that the URL ends at the "
         "DICOMweb root, e.g. http://host:8042/dicom-web",
    409: "the PACS refused to store the instances (conflict); see its log",
    413: "the request is too large for the PACS; store fewer instances per call",
}


@dataclass(frozen=True)
class StudyRecord:
    """One QIDO study match. Patient fields stay out of repr() so a logged record is clean."""

    study_uid: str
    study_date: str
    description: str
    modalities: tuple[str, ...]
    series_count: int | None
    instance_count: int | None
    patient_id: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)
    accession_number: str = field(default="", repr=False)


@dataclass(frozen=True)
class SeriesRecord:
    study_uid: str
    series_uid: str
    modality: str
    series_number: int | None
    description: str
    instance_count: int | None


@dataclass(frozen=True)
class InstanceRecord:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None


class _RedactQuery(logging.Filter):
    """Cut query strings (search filters: patient data) out of a logged URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = _QUERY.sub("?<query redacted>", message), ()
        return True


def _redact_library_logs() -> None:
    for name in ("dicomweb_client.web", "urllib3.connectionpool"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactQuery) for f in logger.filters):
            logger.addFilter(_RedactQuery())


def _session() -> Any:
    import requests

    class QidoSession(requests.Session):
        """Un-escape `*` and `,` in GET queries (see the module docstring: Orthanc 1.10)."""

        def send(self, request: Any, **kwargs: Any) -> Any:
            if request.method == "GET" and request.url and "?" in request.url:
                base, query = request.url.split("?", 1)
                for escaped, raw in (("%2A", "*"), ("%2a", "*"), ("%2C", ","), ("%2c", ",")):
                    query = query.replace(escaped, raw)
                request.url = f"{base}?{query}"
            return super().send(request, **kwargs)

    return QidoSession()


class PacsClient:
    """DICOMweb client of one PACS. `url` is the DICOMweb root, e.g. http://host:8042/dicom-web.

    `headers` go with every request (e.g. an Authorization token); `timeout` is per request, s.
    A request that fails to connect or gets 408/429/503/504 is tried `attempts` times in all,
    0.5 s then 1 s apart (dicomweb-client's default, 5 tries over 30 s, made a dead PACS look
    like a hang).
    """

    def __init__(self, url: str, *, headers: dict[str, str] | None = None,
                 timeout: float = 30.0, attempts: int = 3) -> None:
        from dicomweb_client.api import DICOMwebClient

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise PacsError(f"PACS URL {url!r} is not http(s)://host[:port]/path with no "
                            f"query; give the DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
        self.url = url.rstrip("/")
        _redact_library_logs()
        try:
            self._client = DICOMwebClient(self.url, session=_session(), headers=headers,
                                          timeout=timeout)
        except ValueError as err:
            raise PacsError(f"PACS URL {url!r} is malformed ({err}); give the DICOMweb root, "
                            f"e.g. http://127.0.0.1:8042/dicom-web") from None
        self._client.set_http_retry_params(retry=attempts > 1, max_attempts=max(attempts, 1),
                                           wait_exponential_multiplier=250)

    # QIDO-RS -----------------------------------------------------------------------------

    def search_studies(self, *, limit: int | None = None, **filters: Any) -> list[StudyRecord]:
        """Studies matching `filters` (DICOM keywords: PatientID=..., StudyDate='2024-', ...)."""
        found = self._call("search studies", self._client.search_for_studies, limit=limit,
                           fields=list(_STUDY_FIELDS), search_filters=_filters(filters))
        return [_study_record(_from_json(item)) for item in found]

    def search_series(self, study_uid: str | None = None, *, limit: int | None = None,
                      **filters: Any) -> list[SeriesRecord]:
        """Series of one study (or of all studies) matching `filters` (e.g. Modality='CT')."""
        _check_uids(study_uid)
        found = self._call("search series", self._client.search_for_series,
                           study_instance_uid=study_uid, limit=limit,
                           fields=list(_SERIES_FIELDS), search_filters=_filters(filters))
        return [_series_record(_from_json(item), study_uid) for item in found]

    def search_instances(self, study_uid: str | None = None, series_uid: str | None = None,
                         *, limit: int | None = None, **filters: Any) -> list[InstanceRecord]:
        """Instances of a series / study / the whole PACS matching `filters`."""
        if series_uid is not None and study_uid is None:
            raise ValueError("search_instances: a series_uid needs its study_uid")
        _check_uids(study_uid, series_uid)
        found = self._call("search instances", self._client.search_for_instances,
                           study_instance_uid=study_uid, series_instance_uid=series_uid,
                           limit=limit, fields=list(_INSTANCE_FIELDS),
                           search_filters=_filters(filters))
        return [_instance_record(_from_json(item), study_uid, series_uid) for item in found]

    # WADO-RS -----------------------------------------------------------------------------

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Any]:
        """Every instance of a series as pydicom Datasets, ordered by InstanceNumber then UID."""
        _check_uids(study_uid, series_uid)
        datasets = self._call("retrieve series", self._client.retrieve_series,
                              study_instance_uid=study_uid, series_instance_uid=series_uid,
                              media_types=(("application/dicom", "*"),))
        return sorted(datasets, key=_instance_order)

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Any:
        """One instance as a pydicom Dataset, in the transfer syntax the PACS stored."""
        _check_uids(study_uid, series_uid, sop_uid)
        return self._call("retrieve instance", self._client.retrieve_instance,
                          study_instance_uid=study_uid, series_instance_uid=series_uid,
                          sop_instance_uid=sop_uid, media_types=(("application/dicom", "*"),))

    def retrieve_series_to(self, folder: Path, study_uid: str, series_uid: str) -> list[Path]:
        """Stream a series into `folder/<SOPInstanceUID>.dcm`; returns the paths written.

        Each file is written to a temp name and renamed, so a crash never leaves a half file
        under a real name; instances arrive one at a time, so memory stays one instance.
        """
        _check_uids(study_uid, series_uid)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stream = self._call("retrieve series", self._client.iter_series,
                            study_instance_uid=study_uid, series_instance_uid=series_uid,
                            media_types=(("application/dicom", "*"),))
        paths = [_save_atomic(ds, folder) for ds in self._guard("retrieve series", stream)]
        return sorted(paths)

    # STOW-RS -----------------------------------------------------------------------------

    def store(self, items: Iterable[Any]) -> list[str]:
        """Store Datasets, or DICOM files / folders / zips (paths); returns stored SOP UIDs.

        Sent in batches of STORE_BATCH instances; PacsError if the PACS refuses any of them.
        """
        stored: list[str] = []
        batch: list[Any] = []
        for ds in _datasets(items):
            batch.append(_part10(ds))
            if len(batch) == STORE_BATCH:
                stored += self._store_batch(batch)
                batch = []
        if batch:
            stored += self._store_batch(batch)
        return stored

    def _store_batch(self, batch: list[Any]) -> list[str]:
        reply = self._call("store", self._client.store_instances, datasets=batch)
        failed = reply.get("FailedSOPSequence") or []
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise PacsError(f"{self.url}: STOW refused {len(failed)} of {len(batch)} instances "
                            f"(failure reason codes {', '.join(reasons)}; PS3.18 table "
                            f"I.2-3); see the PACS log")
        return [str(item.ReferencedSOPInstanceUID)
                for item in reply.get("ReferencedSOPSequence") or []]

    # errors ------------------------------------------------------------------------------

    def _call(self, action: str, method: Any, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except Exception as err:  # every transport failure becomes PacsError
            raise self._error(action, err) from None

    def _guard(self, action: str, stream: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from stream
        except Exception as err:  # a failure mid-stream too
            raise self._error(action, err) from None

    def _error(self, action: str, err: Exception) -> PacsError:
        """One PacsError naming the URL path and status; never the query (patient data)."""
        import requests

        if isinstance(err, PacsError):
            return err
        response = getattr(err, "response", None)
        request = getattr(err, "request", None)
        url = (getattr(response, "url", None) or getattr(request, "url", None) or self.url)
        parts = urlsplit(url)
        where = f"{parts.scheme}://{parts.netloc}{parts.path}"
        if isinstance(err, requests.HTTPError) and response is not None:
            status = response.status_code
            hint = _WHAT_TO_DO.get(status, "see the PACS log" if status >= 500
                                   else "check the request")
            return PacsError(f"{action} failed: HTTP {status} {response.reason or ''} from "
                             f"{where}: {hint}")
        if isinstance(err, requests.Timeout):
            return PacsError(f"{action} failed: no answer from {where} in time; check the "
                             f"PACS is up, or raise the timeout")
        if isinstance(err, requests.ConnectionError):
            return PacsError(f"{action} failed: cannot connect to {where}; check the PACS is "
                             f"running and the URL (host, port) is right")
        if isinstance(err, requests.RequestException):
            return PacsError(f"{action} failed at {where}: {type(err).__name__}; check the URL")
        # A malformed reply (bad multipart, JSON): its text may quote data, so name the type.
        return PacsError(f"{action} failed: unreadable reply from {where} "
                         f"({type(err).__name__}); is this URL a DICOMweb root?")


def _check_uids(*uids: str | None) -> None:
    """Refuse a malformed UID here, so a PacsError always means the PACS or the network."""
    for uid in uids:
        if uid is not None and (len(str(uid)) > 64 or not _UID.fullmatch(str(uid))):
            raise ValueError(f"{uid!r} is not a DICOM UID (digits and dots, at most 64 "
                             f"characters)")


def _filters(filters: dict[str, Any]) -> dict[str, Any]:
    """Check every key is a DICOM keyword or tag; the values are not echoed (patient data)."""
    from pydicom.datadict import tag_for_keyword

    for key in filters:
        if tag_for_keyword(key) is None and not re.fullmatch(r"[0-9A-Fa-f]{8}", key):
            raise ValueError(f"search filter {key!r} is not a DICOM keyword (e.g. PatientID, "
                             f"StudyDate, Modality) or an 8-digit hex tag")
    return {key: _filter_value(value) for key, value in filters.items()}


def _filter_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)  # QIDO: a UID list matches any of them
    return value


def _from_json(item: dict[str, Any]) -> Any:
    import pydicom

    # Bulk data never comes in QIDO replies; refuse to fetch it if a server sends a URI.
    return pydicom.Dataset.from_json(item, bulk_data_uri_handler=lambda *_: None)


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def _number(ds: Any, keyword: str) -> int | None:
    value = ds.get(keyword)
    return None if value in (None, "") else int(value)


def _study_record(ds: Any) -> StudyRecord:
    modalities = ds.get("ModalitiesInStudy") or ()
    if isinstance(modalities, str):
        modalities = (modalities,)
    return StudyRecord(
        study_uid=_text(ds, "StudyInstanceUID"), study_date=_text(ds, "StudyDate"),
        description=_text(ds, "StudyDescription"),
        modalities=tuple(str(m) for m in modalities),
        series_count=_number(ds, "NumberOfStudyRelatedSeries"),
        instance_count=_number(ds, "NumberOfStudyRelatedInstances"),
        patient_id=_text(ds, "PatientID"), patient_name=_text(ds, "PatientName"),
        accession_number=_text(ds, "AccessionNumber"))


def _series_record(ds: Any, study_uid: str | None) -> SeriesRecord:
    return SeriesRecord(
        study_uid=_text(ds, "StudyInstanceUID") or (study_uid or ""),
        series_uid=_text(ds, "SeriesInstanceUID"), modality=_text(ds, "Modality"),
        series_number=_number(ds, "SeriesNumber"), description=_text(ds, "SeriesDescription"),
        instance_count=_number(ds, "NumberOfSeriesRelatedInstances"))


def _instance_record(ds: Any, study_uid: str | None, series_uid: str | None) -> InstanceRecord:
    return InstanceRecord(
        study_uid=_text(ds, "StudyInstanceUID") or (study_uid or ""),
        series_uid=_text(ds, "SeriesInstanceUID") or (series_uid or ""),
        sop_uid=_text(ds, "SOPInstanceUID"), sop_class_uid=_text(ds, "SOPClassUID"),
        instance_number=_number(ds, "InstanceNumber"))


def _instance_order(ds: Any) -> tuple[int, str]:
    number = ds.get("InstanceNumber")
    return (int(number) if number not in (None, "") else 0, str(ds.SOPInstanceUID))


def _datasets(items: Iterable[Any]) -> Iterator[Any]:
    from domainvlm.medical.io import iter_dicom

    for item in items:
        if isinstance(item, (str, os.PathLike)):
            for source in iter_dicom(Path(item)):
                yield source.dataset
        else:
            yield item


def _part10(ds: Any) -> Any:
    """A shallow copy with file meta and preamble, so it encodes as a Part-10 file.

    The caller's Dataset is not changed: only attributes the copy adds are set on it.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    out = copy.copy(ds)
    meta = FileMetaDataset(getattr(ds, "file_meta", None) or FileMetaDataset())
    if "TransferSyntaxUID" not in meta:
        implicit = getattr(ds, "original_encoding", (False, True))[0]
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out.file_meta = meta
    out.preamble = b"\0" * 128
    return out


def _save_atomic(ds: Any, folder: Path) -> Path:
    from domainvlm.atomic import atomic_file

    target = folder / f"{ds.SOPInstanceUID}.dcm"
    with atomic_file(target) as handle:
        _part10(ds).save_as(handle, enforce_file_format=True)
    return target

