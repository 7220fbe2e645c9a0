"""Stack a DICOM series into a volume whose slice order is the patient's geometry.

Slices are ordered by ImagePositionPatient projected on the slice normal (row x column of
ImageOrientationPatient), never by InstanceNumber: scanners, PACS exports and anonymisers
renumber instances. Everything that makes a stack ambiguous (mixed orientations, two slices
at one position, gaps, slices shifted in-plane, differing matrix or pixel size, missing
geometry tags) raises SeriesGeometryError naming the folder or file and the numbers, never a
patient attribute or UID.

A single enhanced multi-frame object (per-frame PlanePositionSequence) loads the same way:
each frame is a slice.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from domainvlm.medical.errors import DicomError, SeriesGeometryError
from domainvlm.medical.io import (
    DicomSource,
    frame_count,
    functional_group,
    iter_dicom,
    read_frames,
)
from domainvlm.medical.render import Window, tag_window

ORIENTATION_TOLERANCE = 1e-3  # direction cosines written with ~6 decimals
DUPLICATE_MM = 0.01  # two slices closer than this along the normal share a position
SHEAR_PIXELS = 0.5  # in-plane drift of a slice's position beyond this many pixels


@dataclass
class Volume:
    """A stacked series. `values` float32 (z, y, x) in modality units (HU for CT).

    Index (k, j, i) lies at patient point origin + k*dz*(normal + shear) + j*dy*col_dir +
    i*dx*row_dir, with row_dir = orientation[:3] and col_dir = orientation[3:] (DICOM LPS, mm).
    """

    values: np.ndarray
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm; dz from positions
    origin: tuple[float, float, float]  # (x, y, z) mm of voxel (0, 0, 0)
    orientation: tuple[float, float, float, float, float, float]
    normal: tuple[float, float, float]
    positions: tuple[float, ...]  # each slice's position projected on the normal, mm
    sop_instance_uids: tuple[str, ...]  # per slice (repeats for a multi-frame object)
    frame_numbers: tuple[int | None, ...]  # 1-based frame per slice; None for single-frame
    files: tuple[str, ...]  # where each slice came from
    study_uid: str
    series_uid: str
    modality: str
    window: Window | None  # the first WindowCenter/WindowWidth in the tags, if any
    name: str  # the folder or file it was loaded from: what messages and views cite
    warnings: tuple[str, ...] = field(default=())  # irregularities that were allowed
    # in-plane drift of the slice positions per mm along the normal: gantry tilt accepted by
    # allow_tilt (the slices are stacked as acquired, so the grid is sheared); zero otherwise
    shear: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.values.shape)

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix from voxel index (k, j, i, 1) to patient (x, y, z, 1) mm."""
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        dz, dy, dx = self.spacing
        matrix = np.eye(4)
        matrix[:3, 0] = (np.asarray(self.normal) + np.asarray(self.shear)) * dz
        matrix[:3, 1] = col * dy
        matrix[:3, 2] = row * dx
        matrix[:3, 3] = self.origin
        return matrix


@dataclass
class _Slice:
    """One image to place: a single-frame data set or one frame of a multi-frame object."""

    source: int  # index into the source list
    frame: int | None  # 0-based frame, None for a single-frame data set
    name: str
    position: np.ndarray  # (x, y, z) mm
    orientation: np.ndarray  # (6,)
    pixel_spacing: tuple[float, float]  # (row spacing dy, column spacing dx) mm
    matrix: tuple[int, int]  # (rows, columns)
    sop_uid: str


def group_series(sources: Iterable[DicomSource]) -> dict[str, list[DicomSource]]:
    """Sources by SeriesInstanceUID, in order of first appearance (files keep input order)."""
    groups: dict[str, list[DicomSource]] = {}
    for source in sources:
        uid = source.dataset.get("SeriesInstanceUID")
        if not uid:
            raise DicomError(f"{source.name}: no SeriesInstanceUID; cannot tell its series")
        groups.setdefault(str(uid), []).append(source)
    return groups


def load_volume(sources: Iterable[DicomSource] | str | Path, *, name: str | None = None,
                allow_gaps: bool = False, allow_tilt: bool = False,
                drop_duplicates: bool = False, tolerance: float = 0.05) -> Volume:
    """Stack one series (its DicomSources, or a file/folder/zip holding only it) into a Volume.

    `tolerance` is the fraction of the slice spacing that positions may stray from a regular
    grid. `allow_gaps` records gaps and uneven spacing in `Volume.warnings` instead of raising
    (dz is then the median step); `allow_tilt` does the same for slices shifted in-plane
    (gantry tilt), stacked as acquired with the shear in `Volume.shear` and the affine, so
    each voxel keeps its patient position. `drop_duplicates` keeps the first file
    of slices that share a position only when their values are identical copies.

    Example::

        from domainvlm.medical import load_volume

        volume = load_volume("dicom/series-3")      # a folder (or zip) of one series
        print(volume.shape, volume.spacing)          # (slices, rows, cols), (dz, dy, dx) mm
    """
    if isinstance(sources, str | Path):
        name = name or str(sources)
        sources = iter_dicom(Path(sources))
    sources = list(sources)
    if not sources:
        raise SeriesGeometryError(f"{name or '<series>'}: no DICOM images to stack")
    name = name or _common_name([s.name for s in sources])
    _check_one_series(sources, name)
    slices = _geometry(sources, name)
    orientation = _common_orientation(slices, name)
    _check_matrix(slices, name)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    along = np.array([s.position @ normal for s in slices])
    order = sorted(range(len(slices)), key=lambda i: (along[i], slices[i].name))
    slices, along = [slices[i] for i in order], along[order]

    values = _decode(sources, slices)
    warnings: list[str] = []
    keep = _resolve_duplicates(slices, along, values, name, drop_duplicates, warnings)
    if len(keep) < len(slices):
        slices, along, values = [slices[i] for i in keep], along[keep], values[keep]
    dz = _slice_step(slices, along, name, allow_gaps, tolerance, warnings,
                     _nominal_step(sources[slices[0].source].dataset, slices[0].frame))
    dy, dx = (float(v) for v in slices[0].pixel_spacing)
    shear = _shear(slices, along, normal, (dy, dx), name, allow_tilt, warnings)

    first = sources[0].dataset
    return Volume(
        values=values,
        spacing=(float(dz), dy, dx),
        origin=tuple(float(v) for v in slices[0].position),
        orientation=tuple(float(v) for v in orientation),
        normal=tuple(float(v) for v in normal),
        positions=tuple(round(float(p), 4) for p in along),
        sop_instance_uids=tuple(s.sop_uid for s in slices),
        frame_numbers=tuple(None if s.frame is None else s.frame + 1 for s in slices),
        files=tuple(s.name for s in slices),
        study_uid=str(first.get("StudyInstanceUID", "")),
        series_uid=str(first.get("SeriesInstanceUID", "")),
        modality=str(first.get("Modality", "")),
        window=_window_from_tags(first),
        name=name,
        warnings=tuple(warnings),
        shear=tuple(float(v) for v in shear),
    )


# --- geometry -----------------------------------------------------------------------------------
def _common_name(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    paths = [n.split(".zip:", 1)[0] + ".zip" if ".zip:" in n else n for n in names]
    try:
        return os.path.commonpath(paths) or names[0]
    except ValueError:  # absolute and relative names mixed
        return names[0]


def _check_one_series(sources: list[DicomSource], name: str) -> None:
    counts = Counter(str(s.dataset.get("SeriesInstanceUID", "")) for s in sources)
    if len(counts) > 1:
        sizes = ", ".join(str(n) for n in sorted(counts.values(), reverse=True))
        raise SeriesGeometryError(
            f"{name}: files from {len(counts)} series ({sizes} files); split them with "
            "group_series() and load each series on its own")


def _floats(value: Any, count: int, what: str, where: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.empty(0)
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        problem = "is missing" if value is None else f"is malformed ({value!r})"
        raise SeriesGeometryError(
            f"{where}: {what} {problem}; the slice cannot be placed in the stack (a "
            "localizer, a secondary capture, or geometry stripped by an anonymiser?)")
    return out


def _geometry(sources: list[DicomSource], name: str) -> list[_Slice]:
    if len(sources) == 1 and frame_count(sources[0].dataset, sources[0].name) > 1:
        return _frame_geometry(sources[0])
    slices = []
    for index, source in enumerate(sources):
        ds = source.dataset
        frames = frame_count(ds, source.name)
        if frames > 1:
            raise SeriesGeometryError(
                f"{source.name}: a {frames}-frame object among {len(sources)} files in {name}; "
                "load a multi-frame object on its own")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise SeriesGeometryError(f"{source.name}: colour image; only grey images stack "
                                      "into a volume")
        slices.append(_Slice(
            source=index, frame=None, name=source.name,
            position=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient",
                             source.name),
            orientation=_floats(ds.get("ImageOrientationPatient"), 6,
                                "ImageOrientationPatient", source.name),
            pixel_spacing=tuple(_floats(ds.get("PixelSpacing"), 2, "PixelSpacing",
                                        source.name)),
            matrix=(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))),
            sop_uid=str(ds.get("SOPInstanceUID", ""))))
    return slices


def _frame_geometry(source: DicomSource) -> list[_Slice]:
    """Slices of an enhanced multi-frame object from its (per-frame or shared) groups."""
    ds = source.dataset
    frames = frame_count(ds, source.name)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != frames:
        raise SeriesGeometryError(
            f"{source.name}: {frames} frames but {len(per_frame)} per-frame functional groups; "
            "without a position per frame the frames cannot be stacked")

    def item(index: int, sequence: str) -> Any:
        return functional_group(ds, index, sequence) or {}

    slices = []
    for index in range(frames):
        where = f"{source.name} frame {index + 1}"
        slices.append(_Slice(
            source=0, frame=index, name=where,
            position=_floats(item(index, "PlanePositionSequence").get("ImagePositionPatient"),
                             3, "ImagePositionPatient", where),
            orientation=_floats(item(index, "PlaneOrientationSequence")
                                .get("ImageOrientationPatient"), 6,
                                "ImageOrientationPatient", where),
            pixel_spacing=tuple(_floats(item(index, "PixelMeasuresSequence")
                                        .get("PixelSpacing"), 2, "PixelSpacing", where)),
            matrix=(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))),
            sop_uid=str(ds.get("SOPInstanceUID", ""))))
    return slices


def _common_orientation(slices: list[_Slice], name: str) -> np.ndarray:
    groups: list[tuple[np.ndarray, list[_Slice]]] = []
    for s in slices:
        for reference, members in groups:
            if np.max(np.abs(s.orientation - reference)) <= ORIENTATION_TOLERANCE:
                members.append(s)
                break
        else:
            groups.append((s.orientation, [s]))
    if len(groups) > 1:
        listing = "; ".join(
            f"{len(members)} at [{', '.join(f'{v:g}' for v in np.round(reference, 4))}] "
            f"(e.g. {members[0].name})" for reference, members in groups)
        raise SeriesGeometryError(
            f"{name}: mixed slice orientations ({listing}); a localizer or a reformat shares "
            "the series: remove those files or load each orientation on its own")
    orientation = groups[0][0]
    row, col = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01
            or abs(row @ col) > 0.01):
        raise SeriesGeometryError(
            f"{name}: ImageOrientationPatient {list(np.round(orientation, 4))} is not two "
            "orthogonal unit vectors")
    return orientation


def _check_matrix(slices: list[_Slice], name: str) -> None:
    for what, key in (("rows x columns", "matrix"), ("PixelSpacing", "pixel_spacing")):
        counts = Counter(tuple(round(v, 4) for v in getattr(s, key)) for s in slices)
        if len(counts) > 1:
            listing = ", ".join(f"{n} with {' x '.join(f'{v:g}' for v in value)}"
                                for value, n in counts.most_common())
            odd = next(s for s in slices if tuple(round(v, 4) for v in getattr(s, key))
                       != counts.most_common(1)[0][0])
            raise SeriesGeometryError(
                f"{name}: slices differ in {what} ({listing}; e.g. {odd.name}); they are not "
                "one stack: remove the odd files or resample them first")


def _slice_step(slices: list[_Slice], along: np.ndarray, name: str, allow_gaps: bool,
                tolerance: float, warnings: list[str], nominal: float) -> float:
    """dz from the positions; raises (or warns) where the steps are not one regular grid."""
    if len(slices) == 1:
        warnings.append(f"single slice: dz is the nominal {nominal:g} mm (SpacingBetweenSlices "
                        "or SliceThickness; 1 if neither), not measured from positions")
        return nominal
    steps = np.diff(along)
    expected = float(np.median(steps))
    limit = max(tolerance * expected, DUPLICATE_MM)
    problems = []
    for k in np.flatnonzero(np.abs(steps - expected) > limit):
        low, high, step = float(along[k]), float(along[k + 1]), float(steps[k])
        missing = round(step / expected) - 1
        if missing >= 1 and abs(step - (missing + 1) * expected) <= limit:
            hint = f"{missing} slice{'s' if missing > 1 else ''} missing?"
        else:
            hint = "uneven spacing"
        problems.append(f"slice gap of {step:.4g} mm between positions {low:.4g} and "
                        f"{high:.4g} (expected {expected:.4g} mm): {hint}")
    if problems and not allow_gaps:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise SeriesGeometryError(
            f"{name}: {'; '.join(problems[:3])}{more}; find the missing files, or pass "
            "allow_gaps=True to stack the slices as they are")
    warnings.extend(problems)
    if problems:
        return round(expected, 6)
    return round(float(along[-1] - along[0]) / (len(slices) - 1), 6)


def _nominal_step(ds: Any, frame: int | None) -> float:
    holder = functional_group(ds, frame, "PixelMeasuresSequence") if frame is not None else ds
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float((holder or {}).get(keyword) or 0)
        except (TypeError, ValueError):
            value = 0.0
        if value > 0:
            return value
    return 1.0


def _shear(slices: list[_Slice], along: np.ndarray, normal: np.ndarray,
           pixel: tuple[float, float], name: str, allow_tilt: bool,
           warnings: list[str]) -> np.ndarray:
    """In-plane drift per mm along the normal (3,): zero when the positions lie on one line
    along the normal; gantry tilt shears them sideways, which raises unless allowed."""
    first = slices[0].position
    offsets = np.array([s.position - first - (a - along[0]) * normal
                        for s, a in zip(slices, along, strict=True)])
    drift = float(np.max(np.linalg.norm(offsets, axis=1)))
    if drift <= SHEAR_PIXELS * min(pixel):
        return np.zeros(3)
    worst = int(np.argmax(np.linalg.norm(offsets, axis=1)))
    problem = (f"slices drift {drift:.3g} mm in-plane from the first slice's position "
               f"(most at {slices[worst].name}): gantry tilt or a moved table")
    if not allow_tilt:
        raise SeriesGeometryError(
            f"{name}: {problem}; resample the series, or pass allow_tilt=True to stack it "
            "as acquired (sheared)")
    warnings.append(problem)
    span = along - along[0]
    return (span @ offsets) / (span @ span)  # least squares: exact for a steady tilt


# --- values -------------------------------------------------------------------------------------
def _decode(sources: list[DicomSource], slices: list[_Slice]) -> np.ndarray:
    """Modality values in stack order, each data set decoded once, into one float32 array."""
    rows, cols = slices[0].matrix
    values = np.empty((len(slices), rows, cols), np.float32)
    if slices[0].frame is not None:  # one multi-frame object
        source = sources[slices[0].source]
        frames = read_frames(source.dataset, source.name)
        values[:] = frames[[s.frame for s in slices]]
        return values
    for k, s in enumerate(slices):
        source = sources[s.source]
        values[k] = read_frames(source.dataset, source.name)[0]
    return values


def _resolve_duplicates(slices: list[_Slice], along: np.ndarray, values: np.ndarray, name: str,
                        drop: bool, warnings: list[str]) -> list[int]:
    """Indices to keep. Slices sharing a position raise unless dropped as identical copies."""
    keep = [0]
    for k in range(1, len(slices)):
        if along[k] - along[keep[-1]] >= DUPLICATE_MM:
            keep.append(k)
            continue
        kept = keep[-1]
        identical = bool(np.array_equal(values[k], values[kept]))
        where = (f"{slices[kept].name} and {slices[k].name} share position {along[k]:.4g} mm "
                 f"({'identical copies' if identical else 'different images'})")
        if drop and identical:
            warnings.append(f"dropped duplicate: {where}")
            continue
        duplicates = int(np.sum(np.diff(along) < DUPLICATE_MM))
        fix = ("pass drop_duplicates=True to keep one of each copy" if identical else
               "they are different acquisitions (phases, echoes, a repeat) in one series: "
               "split them, e.g. by AcquisitionNumber or TemporalPositionIdentifier")
        raise SeriesGeometryError(
            f"{name}: {duplicates} duplicate slice position(s); e.g. {where}; {fix}")
    return keep


def _window_from_tags(ds: Any) -> Window | None:
    """The first window the tags ask for (frame VOI LUT group, else top level), if any."""
    tagged = tag_window(ds, 0)
    return tagged[0] if tagged is not None else None
