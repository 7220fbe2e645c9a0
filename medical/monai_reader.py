"""A MONAI `ImageReader` that loads DICOM series with domainvlm.medical, for `LoadImage(d)`.

MONAI's PydicomReader stacks a folder by InstanceNumber, which scanners, PACS exports and
anonymisers renumber. This reader stacks by ImagePositionPatient along the slice normal
(`series.load_volume`: gaps, duplicates, mixed orientations and gantry tilt raise
SeriesGeometryError naming the folder), applies each slice's own rescale or Modality LUT, and
decodes compressed transfer syntaxes with permissive decoders (`io.read_frames`).

    from monai.transforms import LoadImage, Orientation, Spacing
    from domainvlm.medical.monai_reader import DomainvlmDicomReader

    load = LoadImage(reader=DomainvlmDicomReader(), ensure_channel_first=True)
    image = load("scans/ct_series")                  # MetaTensor (1, x, y, z), HU for CT
    image = Spacing(pixdim=(1.0, 1.0, 2.5))(Orientation(axcodes="RAS")(image))

`LoadImaged(keys, reader=DomainvlmDicomReader())` works the same, and so does the name
`LoadImage(reader="domainvlm.medical.monai_reader.DomainvlmDicomReader")`.

Each path is one series: a folder, a .zip, or one file (a single slice is a volume of one
slice, SliceThickness deep; an enhanced multi-frame object is a whole volume). As in MONAI's own
readers the array is float32 (x, y, z) = (column, row, slice) and the meta holds `affine` and
`original_affine` (voxel index to patient mm, RAS unless `affine_lps_to_ras=False`; gantry tilt
accepted with `allow_tilt=True` gives a sheared affine, which `Spacing` resamples onto a regular
grid), `spatial_shape`, `spacing` (lengths of the affine's columns), `space`,
`original_channel_dim` ("no_channel" for one path; several paths on one grid are stacked as
channels on a new first axis, 0), `modality` and `series_warnings` (irregularities that the
options let through, and a single slice's nominal depth; "" when none).

Patient data: the meta holds geometry and modality only. UIDs (which PS3.15 replaces, as they
lead back to the patient's record), dates, names and any other tag come only when asked for by
keyword, `tags=("SeriesInstanceUID",)`, copied verbatim from the series' first file: ask for
them from de-identified data (`domainvlm dicom deid` keys the UIDs). `LoadImage` adds
`filename_or_obj`, the path you gave.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from domainvlm.medical.io import iter_dicom
from domainvlm.medical.series import Volume, load_volume

try:
    from monai.data.image_reader import ImageReader
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("domainvlm.medical.monai_reader needs MONAI: "
                      "pip install 'domainvlm[monai]'") from err

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_BINARY_VRS = {"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN"}


@dataclass
class LoadedSeries:
    """What `read` returns for one path: the stacked volume and the tags asked for."""

    volume: Volume
    tags: dict[str, Any]


class DomainvlmDicomReader(ImageReader):
    """DICOM series ordered by position, in modality units, with their affine (see module).

    `allow_gaps`, `allow_tilt`, `drop_duplicates` and `tolerance` are `load_volume`'s; what
    they let through is in the meta's `series_warnings`. `tags`: DICOM keywords to copy into
    the meta (missing ones give ""). Raises ValueError for a keyword that is not a plain
    DICOM attribute; `read` raises DicomError (SeriesGeometryError, DicomDecodeError, ...)
    naming the path, never a patient attribute.

    Example::

        from monai.transforms import LoadImage, Orientation, Spacing
        from domainvlm.medical import DomainvlmDicomReader

        image = LoadImage(reader=DomainvlmDicomReader(), ensure_channel_first=True)("ct/")
        image = Spacing(pixdim=(1.0, 1.0, 2.5))(Orientation(axcodes="RAS")(image))
    """

    def __init__(self, affine_lps_to_ras: bool = True, tags: Sequence[str] = (), *,
                 allow_gaps: bool = False, allow_tilt: bool = False,
                 drop_duplicates: bool = False, tolerance: float = 0.05) -> None:
        super().__init__()
        self.affine_lps_to_ras = affine_lps_to_ras
        self.tags = _checked_keywords(tags)
        self.options = {"allow_gaps": allow_gaps, "allow_tilt": allow_tilt,
                        "drop_duplicates": drop_duplicates, "tolerance": tolerance}

    def verify_suffix(self, filename: Sequence[PathLike | str] | PathLike | str) -> bool:
        """True when every path is a folder, a .zip or a DICOM file (for auto-selection)."""
        return all(_may_hold_dicom(Path(name)) for name in _paths(filename))

    def read(self, data: Sequence[PathLike | str] | PathLike | str,
             **kwargs: Any) -> LoadedSeries | list[LoadedSeries]:
        """One LoadedSeries per path; a list when several paths are given."""
        if kwargs:
            raise TypeError(f"DomainvlmDicomReader.read takes no options, got {sorted(kwargs)}; "
                            "pass them to the constructor")
        loaded = [self._load(Path(name)) for name in _paths(data)]
        return loaded[0] if len(loaded) == 1 else loaded

    def get_data(self, img: LoadedSeries | Sequence[LoadedSeries]) -> tuple[np.ndarray, dict]:
        """(array, meta): float32 (x, y, z), or (channels, x, y, z) for several series."""
        series = [img] if isinstance(img, LoadedSeries) else list(img)
        arrays = [np.ascontiguousarray(s.volume.values.transpose(2, 1, 0)) for s in series]
        metas = [self._meta(s, a.shape) for s, a in zip(series, arrays, strict=True)]
        meta = metas[0]
        for other, item in zip(metas[1:], series[1:], strict=True):
            if (tuple(other["spatial_shape"]) != tuple(meta["spatial_shape"])
                    or not np.allclose(other["affine"], meta["affine"], atol=1e-4)):
                raise ValueError(
                    f"{item.volume.name}: grid {tuple(other['spatial_shape'])} differs from "
                    f"{series[0].volume.name} {tuple(meta['spatial_shape'])} (shape or affine); "
                    "series stacked as channels must share one grid (each path is a whole "
                    "series: give a series' files as their folder)")
        if len(arrays) == 1:
            return arrays[0], meta
        meta["original_channel_dim"] = 0
        return np.stack(arrays), meta

    def _load(self, path: Path) -> LoadedSeries:
        sources = list(iter_dicom(path))
        volume = load_volume(sources, name=str(path), **self.options)
        first = sources[0].dataset
        return LoadedSeries(volume, {k: _plain(first.get(k)) for k in self.tags})

    def _meta(self, series: LoadedSeries, shape: tuple[int, ...]) -> dict[str, Any]:
        # Volume.affine maps (k, j, i); the array is (i, j, k).
        affine = series.volume.affine[:, [2, 1, 0, 3]]
        if self.affine_lps_to_ras:
            affine = _LPS_TO_RAS @ affine
        return {
            "affine": affine,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(shape),
            "spacing": np.linalg.norm(affine[:3, :3], axis=0),
            "space": "RAS" if self.affine_lps_to_ras else "LPS",
            "original_channel_dim": math.nan,  # MONAI's "no_channel"
            "modality": series.volume.modality,
            "series_warnings": "; ".join(series.volume.warnings),
            **series.tags,
        }


def _paths(data: Sequence[PathLike | str] | PathLike | str) -> list[str]:
    if isinstance(data, str | PathLike):
        return [str(data)]
    return [str(name) for name in data]


def _may_hold_dicom(path: Path) -> bool:
    if path.is_dir() or path.suffix.lower() in (".dcm", ".dicom", ".zip"):
        return True
    from pydicom.misc import is_dicom

    try:
        return path.is_file() and is_dicom(path)
    except OSError:
        return False


def _checked_keywords(tags: Sequence[str]) -> tuple[str, ...]:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tags = (tags,) if isinstance(tags, str) else tuple(tags)
    unknown = [t for t in tags if tag_for_keyword(t) is None]
    if unknown:
        raise ValueError(f"tags: {', '.join(map(repr, unknown))} not DICOM keywords "
                         "(e.g. 'SeriesInstanceUID', 'PatientAge')")
    binary = [t for t in tags if dictionary_VR(t) in _BINARY_VRS]
    if binary:
        raise ValueError(f"tags: {', '.join(map(repr, binary))} hold sequences or binary data; "
                         "only plain values can go into the meta")
    return tags


def _plain(value: Any) -> Any:
    """A tag's value as str, int, float or a list of them ("" when absent)."""
    from pydicom.multival import MultiValue

    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)
