"""DICOM + a label file -> the core engine's VQA JSONL, de-identified and split by patient.

The path every scan takes: find the labelled series (in a folder, zip or a PACS), de-identify
each data set, stack the series into a volume, render it into images (`ViewSpec`), and write
records that point back to the slices they show. Only de-identified values (pseudonymous
patient ids, remapped UIDs) reach the output; the whole output folder appears at once or not
at all. Splits never share a patient.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from domainvlm.atomic import new_folder
from domainvlm.errors import ConfigError, DataError
from domainvlm.evaluation.metrics import question_type
from domainvlm.medical.deid import DeidConfig, deidentify
from domainvlm.medical.io import DicomSource
from domainvlm.medical.labels import LabelRow, read_labels, travelling_columns
from domainvlm.medical.lungs import lungs_only
from domainvlm.medical.render import resolve_window
from domainvlm.medical.series import Volume, load_volume
from domainvlm.medical.sources import SeriesFetcher
from domainvlm.medical.splits import DEFAULT_FRACTIONS, split_patients
from domainvlm.medical.views import LAYOUTS, View, even_slices, mip, montage, slab_montage
from domainvlm.parallel import map_in_order

COMPOSITE = ("lung", "mediastinum", "bone")  # red, green, blue
# The lung window over the lungs alone (`domainvlm.medical.lungs`): in a slab MIP neither chest
# wall nor liver can hide a nodule.
LUNG_ONLY = "lung-only"


Strategy = Literal["montage", "slabs", "slices", "mip"]
STRATEGIES = get_args(Strategy)
Plane = Literal["axial", "coronal", "sagittal"]
PLANES = get_args(Plane)


@dataclass(frozen=True)
class ViewSpec:
    """How a volume becomes the images of one record.

    strategy: `montage` (one image of `count` evenly spread slices), `slabs` (one image of
    `count` slab MIPs that together cover every slice), `slices` (`count` images), `mip` (one
    maximum-intensity projection onto `plane`). window: a preset name, "C,W", or three windows
    joined by "+" ("lung+liver+bone") as the red, green and blue channels, so one image carries
    what a radiologist reads in three; `composite` is "lung+mediastinum+bone"; `lung-only` is
    the lung window over the lungs alone (`domainvlm.medical.lungs`). `image_size`: longer side
    in px. layout (montage and slabs): `grid` of whole slices, or `sides`: every tile cut at the
    body's midline, the image-left halves (the patient's right) tiled in the left half of the
    image and the others in the right half, so that "which side" is a half of the image, not a
    place within a tile.

    Example::

        from domainvlm.medical import ViewSpec

        ViewSpec(strategy="slabs", count=4, window="lung", layout="sides", image_size=384)
    """

    strategy: Strategy = "montage"
    count: int = 9
    plane: Plane = "axial"
    window: str = "composite"
    image_size: int | None = None
    layout: Literal["grid", "sides"] = "grid"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"view strategy must be one of {', '.join(STRATEGIES)}; got "
                              f"{self.strategy!r}")
        if self.count < 1:
            raise ConfigError(f"view count must be at least 1; got {self.count}")
        if self.plane not in PLANES:
            raise ConfigError(f"view plane must be one of {', '.join(PLANES)}; got "
                              f"{self.plane!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"view layout must be one of {', '.join(LAYOUTS)}; got "
                              f"{self.layout!r}")
        if self.layout != "grid" and self.strategy not in ("montage", "slabs"):
            raise ConfigError(f"view layout {self.layout!r} tiles a montage; strategy "
                              f"{self.strategy!r} has no tiles (use montage or slabs)")
        windows = composite_windows(self.window)
        if len(windows) not in (1, 3):
            raise ConfigError(f"window {self.window!r}: give one window or three joined by '+'")
        for window in windows:
            window_of(window)


def composite_windows(window: str) -> tuple[str, ...]:
    return COMPOSITE if window == "composite" else tuple(window.split("+"))


def window_of(text: str) -> Any:
    """A preset name or "center,width" -> render.Window (ConfigError names valid presets)."""
    if text == LUNG_ONLY:
        return resolve_window("lung")
    if "," in text:
        try:
            center, width = (float(v) for v in text.split(","))
        except ValueError:
            raise ConfigError(f"window {text!r}: use a preset name or CENTER,WIDTH") from None
        return resolve_window((center, width))
    return resolve_window(text)


def render_views(volume: Volume, spec: ViewSpec) -> list[View]:
    """The images of `volume` that one record shows (RGB when the window is composite).

    Example::

        from domainvlm.medical import ViewSpec, load_volume, render_views

        views = render_views(load_volume("dicom/series-3"), ViewSpec(strategy="mip"))
        views[0].to_pil().save("mip.png")
        print(views[0].description, views[0].sop_instance_uids[:3])
    """
    import numpy as np

    windows = composite_windows(spec.window)
    lungs = lungs_only(volume) if LUNG_ONLY in windows else None
    per_window = [_strategy(lungs if w == LUNG_ONLY else volume, spec, window_of(w), volume)
                  for w in windows]
    views = []
    for parts in zip(*per_window, strict=True):
        image = np.stack([p.image for p in parts], axis=-1) if len(parts) > 1 else parts[0].image
        view = parts[0]
        description = view.description
        if len(parts) > 1:
            description = description.rsplit(", window", 1)[0] + (
                f", RGB = {', '.join(windows)} windows")
        views.append(_resized(replace(view, image=image, description=description),
                              spec.image_size))
    return views


def _strategy(volume: Volume, spec: ViewSpec, window: Any, body: Volume) -> list[View]:
    if spec.strategy == "slices":
        return even_slices(volume, spec.count, window)
    if spec.strategy == "mip":
        return [mip(volume, spec.plane, window)]
    if spec.strategy == "slabs":
        return [slab_montage(volume, spec.count, window=window, layout=spec.layout, body=body)]
    return [montage(volume, spec.count, window=window, layout=spec.layout, body=body)]


def _resized(view: View, size: int | None) -> View:
    """`view` with its longer side `size` px; its tiles and pixel size follow the image."""
    image = view.image
    if not size or max(image.shape[:2]) == size:
        return view
    import numpy as np
    from PIL import Image

    scale = size / max(image.shape[:2])
    shape = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    resized = np.asarray(Image.fromarray(image).resize(shape, Image.Resampling.LANCZOS))
    tiles = tuple(tuple(round(v * scale) for v in box) for box in view.tiles)
    return replace(view, image=resized, pixel_mm=view.pixel_mm / scale, tiles=tiles)


@dataclass
class BuildReport:
    """What a build wrote: counts only, nothing that identifies a patient."""

    output: str
    records: dict[str, int] = field(default_factory=dict)
    patients: dict[str, int] = field(default_factory=dict)
    series: int = 0
    images: int = 0
    unanswerable: int = 0
    dropped_columns: list[str] = field(default_factory=list)  # label columns left out (names)
    kept_columns: list[str] = field(default_factory=list)  # kept on the user's say-so


def build_vqa(fetch: SeriesFetcher, labels: Path | Sequence[LabelRow], output: Path, *,
              deid: DeidConfig, views: ViewSpec | None = None,
              fractions: Mapping[str, float] = DEFAULT_FRACTIONS, seed: int = 0,
              progress: Callable[[int], None] | None = None, workers: int = 1,
              keep_columns: Sequence[str] = ()) -> BuildReport:
    """Write `output/{split}.jsonl`, `output/images/`, `output/build.json`.

    `fetch(study_uid, series_uid)` returns the DICOM of one series, as stored (see
    `domainvlm.medical.sources`); each label row names its scan by original UIDs.
    `progress(1)` after each series. `workers` processes de-identify and render series side
    by side (fetching stays here); the output is the same for any number. Label columns
    other than the known ones (`domainvlm.medical.labels.RECORD_COLUMNS`) and
    `keep_columns` are dropped, and named in the report.

    Example::

        from domainvlm.medical import (DeidConfig, ViewSpec, build_vqa, folder_fetcher,
                                       read_key_file)

        report = build_vqa(folder_fetcher("dicom/"), "labels.csv", "vqa/",
                           deid=DeidConfig(project_key=read_key_file("project.key")),
                           views=ViewSpec(strategy="slabs", count=9))
        print(report.records)                    # questions per split; vqa/train.jsonl ...
    """
    views = views or ViewSpec()
    rows = read_labels(labels) if isinstance(labels, str | Path) else list(labels)
    if not rows:
        raise DataError("no label rows: nothing to build")
    travel, dropped = travelling_columns(rows, keep_columns)
    by_scan: dict[tuple[str | None, str | None], list[LabelRow]] = defaultdict(list)
    for row in rows:
        by_scan[(row.study_uid, row.series_uid)].append(row)
    report = BuildReport(output=str(output), dropped_columns=dropped,
                         kept_columns=sorted(set(keep_columns)))
    records: list[dict[str, Any]] = []
    with new_folder(output) as partial:
        def calls() -> Iterator[tuple[Any, ...]]:
            for number, ((study, series), questions) in enumerate(by_scan.items(), 1):
                found = fetch(study, series)
                if not found:
                    raise DataError(f"{questions[0].source}: no DICOM series matches this "
                                    "row's study_uid / series_uid")
                yield number, found, deid, views, partial

        scans = map_in_order(_prepare_scan, calls(), workers, progress)
        for scan, questions in zip(scans, by_scan.values(), strict=True):
            report.images += len(scan.images)
            report.series += 1
            records += [_record(question, scan, travel) for question in questions]
        assignment = split_patients([r["patient"] for r in records], fractions, seed)
        for name in fractions:
            chosen = [r for r in records if assignment[r["patient"]] == name]
            lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in chosen)
            (partial / f"{name}.jsonl").write_text(lines, encoding="utf-8")
            report.records[name] = len(chosen)
            report.patients[name] = len({r["patient"] for r in chosen})
        report.unanswerable = sum(not r["answerable"] for r in records)
        build = {"views": views.__dict__, "fractions": dict(fractions), "seed": seed,
                 "deid": {"dates": "shifted" if deid.shift_dates else "removed"},
                 "question_types": dict(Counter(r["question_type"] for r in records)),
                 **report.__dict__}
        (partial / "build.json").write_text(json.dumps(build, indent=2) + "\n")
    return report


def _write_images(views: list[View], folder: Path, series_uid: str) -> list[dict[str, Any]]:
    """Save each view as PNG; return its relative path and provenance."""
    target = folder / "images" / series_uid
    target.mkdir(parents=True, exist_ok=True)
    saved = []
    for k, view in enumerate(views):
        path = target / f"view-{k}.png"
        view.to_pil().save(path)
        saved.append({"path": str(path.relative_to(folder)), "plane": view.plane,
                      "slices": list(view.slice_indices),
                      "sop_instance_uids": list(view.sop_instance_uids),
                      "description": view.description})
    return saved


@dataclass(frozen=True)
class _Scan:
    """One series as the records see it: de-identified UIDs, patient pseudonym, its images."""

    study_uid: str
    series_uid: str
    patient: str
    images: list[dict[str, Any]]


def _prepare_scan(number: int, found: list[DicomSource], deid: DeidConfig, views: ViewSpec,
                  folder: Path) -> _Scan:
    """De-identify one fetched series, render its views into `folder`; run in a worker."""
    cleaned = [DicomSource(f"series {number} file {k + 1}",
                           deidentify(s.dataset, deid, name=f"series {number}"))
               for k, s in enumerate(found)]
    volume = load_volume(cleaned, name=f"series {number}")
    images = _write_images(render_views(volume, views), folder, volume.series_uid)
    return _Scan(volume.study_uid, volume.series_uid, str(cleaned[0].dataset.PatientID), images)


def _record(row: LabelRow, scan: _Scan, travel: frozenset[str]) -> dict[str, Any]:
    images = scan.images
    extra = {k: v for k, v in row.extra.items() if k in travel}
    return {**extra, "image": [image["path"] for image in images], "question": row.question,
            "answer": row.answer, "question_type": question_type(row.answer, row.question_type),
            "answerable": row.answerable, "patient": scan.patient, "study_uid": scan.study_uid,
            "series_uid": scan.series_uid,
            "views": [{k: v for k, v in image.items() if k != "path"} for image in images]}


def write_public_vqa(source: Path, output: Path, *, image_root: Path | None = None,
                     fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                     seed: int = 0) -> dict[str, int]:
    """VQA-RAD / SLAKE JSON -> `output/{split}.jsonl` for the core engine, split by patient
    (the scan an image comes from). Returns questions per split.

    Example::

        from domainvlm.medical import write_public_vqa

        write_public_vqa("slake/train.json", "slake-vqa/", image_root="slake/imgs")
    """
    from domainvlm.medical.labels import read_public_vqa

    rows = read_public_vqa(source, image_root)
    assignment = split_patients([r["patient"] for r in rows], fractions, seed)
    counts = {}
    with new_folder(output) as partial:
        for name in fractions:
            chosen = [r for r in rows if assignment[r["patient"]] == name]
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in chosen)
            (partial / f"{name}.jsonl").write_text(text, encoding="utf-8")
            counts[name] = len(chosen)
    return counts
