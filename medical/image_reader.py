"""DICOM for `domainvlm ask` / `domainvlm.answer`: a file or a series folder, rendered the way
the model's training images were.

Registered under the `domainvlm.image_readers` entry point as `dicom`, so the core asks it
about any input that is not a plain image and never imports this package. A series is
stacked by position (`series.load_volume`) and rendered with `vqa.render_views`, the function
`build_vqa` rendered the training data with, under the view the core passes: the one
recorded with the adapter (`build.json`'s `views`), with the caller's fields over it, and
`ViewSpec`'s defaults for the rest (a montage of 9 axial slices, lung / mediastinum / bone
windows as RGB). A single 2-D image without slice geometry (a radiograph, a secondary
capture) has no volume to take views of: it is shown with its own window, as `domainvlm dicom
render` shows it. Descriptions name slices, planes and windows, never a patient attribute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from domainvlm.errors import ConfigError
from domainvlm.image_readers import ReaderImages
from domainvlm.medical.errors import DicomError, NotDicomError, SeriesGeometryError
from domainvlm.medical.io import frame_count, iter_dicom, read_frames
from domainvlm.medical.render import render_frame
from domainvlm.medical.series import group_series, load_volume
from domainvlm.medical.vqa import ViewSpec, render_views

_WHOLE_NUMBERS = ("count", "image_size")


def read_dicom(path: Path, view: Mapping[str, Any]) -> ReaderImages | None:
    """The views of the DICOM series at `path` (a file, a folder of one series or a .zip);
    None when `path` holds no DICOM. DicomError when it does but cannot be shown."""
    try:
        sources = list(iter_dicom(Path(path)))
    except NotDicomError:
        return None
    if not sources:
        return None
    series = group_series(sources)
    if len(series) > 1:
        raise DicomError(f"{path}: holds {len(series)} series; ask about one series: point at "
                         "its folder (see `domainvlm dicom info`)")
    try:
        volume = load_volume(sources, name=str(path))
    except SeriesGeometryError:
        ds = sources[0].dataset
        if len(sources) > 1 or frame_count(ds, str(path)) > 1:
            raise
        image = render_frame(ds, read_frames(ds, str(path))[0], name=str(path))
        return ReaderImages([_pil(image)], f"DICOM {ds.get('Modality', '')} image without "
                            "slice geometry, shown with its own window (no view applies)")
    spec = view_spec(view)
    shown = render_views(volume, spec)
    count = volume.shape[0]
    head = f"DICOM {volume.modality} series of {count} slice{'s' if count != 1 else ''}: "
    captions = [item.description for item in shown]
    return ReaderImages([item.to_pil() for item in shown], head + "; ".join(captions),
                        dataclasses.asdict(spec), captions)


def view_spec(fields: Mapping[str, Any]) -> ViewSpec:
    """A ViewSpec from JSON or `key=value` text fields (count "4" is 4); ConfigError names an
    unknown field or a bad value."""
    known = [field.name for field in dataclasses.fields(ViewSpec)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ConfigError(f"view: unknown field {', '.join(map(repr, unknown))}; the fields "
                          f"are {', '.join(known)}")
    values = dict(fields)
    for key in _WHOLE_NUMBERS:
        if key in values:
            values[key] = _whole(key, values[key])
    return ViewSpec(**values)


def _whole(key: str, value: Any) -> int | None:
    if key == "image_size" and value in (None, "", "none", "None"):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ConfigError(f"view {key} must be a whole number, got {value!r}")


def _pil(image: Any) -> Any:
    from PIL import Image

    return Image.fromarray(image)
