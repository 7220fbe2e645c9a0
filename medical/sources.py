"""Where labelled series come from: a folder / zip of DICOM files, or a PACS over DICOMweb.

Both give a `SeriesFetcher`: `fetch(study_uid, series_uid)` -> the series' DicomSources as
stored (not yet de-identified), or [] when nothing matches. A row keyed by study only takes the
study's largest series (most objects).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from domainvlm.medical.io import DicomSource

SeriesFetcher = Callable[[str | None, str | None], list[DicomSource]]


def folder_fetcher(source: Path, progress: Callable[[int], None] | None = None,
                   unreadable: list[str] | None = None) -> SeriesFetcher:
    """Index every DICOM object under `source` (folder, zip, file) by study and series UID;
    with a list `unreadable`, broken files are recorded there and passed over.

    Example::

        from domainvlm.medical import folder_fetcher

        fetch = folder_fetcher("dicom/")
        series = fetch(None, "1.2.840.113619.2.55.3.1234")   # by series UID; [] if none
    """
    from domainvlm.medical.io import iter_dicom

    series: dict[str, list[DicomSource]] = defaultdict(list)
    study_of: dict[str, str] = {}
    for item in iter_dicom(Path(source), unreadable=unreadable):
        uid = str(item.dataset.get("SeriesInstanceUID", ""))
        series[uid].append(item)
        study_of[uid] = str(item.dataset.get("StudyInstanceUID", ""))
        if progress is not None:
            progress(1)

    def fetch(study_uid: str | None, series_uid: str | None) -> list[DicomSource]:
        if series_uid:
            found = series.get(series_uid, [])
            return found if not study_uid or study_of.get(series_uid) == study_uid else []
        candidates = [uid for uid, study in study_of.items() if study == study_uid]
        return max((series[uid] for uid in candidates), key=len, default=[])

    return fetch


def pacs_fetcher(client) -> SeriesFetcher:
    """Series retrieved on demand (QIDO to find them, WADO-RS to fetch) from a PacsClient."""

    def fetch(study_uid: str | None, series_uid: str | None) -> list[DicomSource]:
        filters = {"SeriesInstanceUID": series_uid} if series_uid else {}
        found = client.search_series(study_uid, **filters)
        if not found:
            return []
        best = max(found, key=lambda record: record.instance_count or 0)
        datasets = client.retrieve_series(best.study_uid, best.series_uid)
        return [DicomSource(f"PACS instance {k + 1}", ds) for k, ds in enumerate(datasets)]

    return fetch
