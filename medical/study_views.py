"""What the model is shown of a stored study: one series rendered the way `domainvlm ask`
renders it (`image_reader.read_dicom`, the one home of that), under the adapter's view.

A page asks for the views, then each PNG, then asks its question about the same images: a
small cache of the last renderings (de-identified pixels, in memory only) makes that one
rendering instead of several.
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainvlm.adapters.service.problems import Problem
from domainvlm.medical.errors import DicomError

CACHED = 8  # renderings kept


@dataclass(frozen=True)
class Shown:
    """One series as the model sees it."""

    series_uid: str
    images: list[Any]  # PIL images, in the order the model sees them
    description: str  # slices, planes and windows in words
    captions: list[str]  # one description per image
    view: dict[str, Any] | None  # every view setting used; None: an image without a volume


class Renders:
    """The last CACHED renderings, by study, series and view fields; thread-safe."""

    def __init__(self, size: int = CACHED) -> None:
        self._items: OrderedDict[tuple[str, str, str], Shown] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def shown(self, study_id: str, folder: Path, series: list[dict[str, Any]],
              series_uid: str | None, fields: Mapping[str, Any]) -> Shown:
        """The rendering of `series_uid` (None: the first series with a volume) under
        `fields`; from the cache when it was made lately."""
        key = (study_id, series_uid or "", json.dumps(fields, sort_keys=True, default=str))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        made = render(folder, series, series_uid, fields)
        with self._lock:
            self._items[key] = made
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return made

    def forget(self, study_id: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == study_id]:
                del self._items[key]


def render(folder: Path, series: list[dict[str, Any]], series_uid: str | None,
           fields: Mapping[str, Any]) -> Shown:
    """Render `series_uid`, or else the first series (by number) that stacks into a volume,
    else the first that renders at all. 404 for a series not in the study; 422 when none can
    be shown, with the reader's reason (its paths replaced by the series UID)."""
    from domainvlm.medical.image_reader import read_dicom

    if series_uid is not None and series_uid not in {s["uid"] for s in series}:
        raise Problem(404, "this study has no series with that UID; see the study's `series`",
                      "no-such-series")
    candidates = [s["uid"] for s in series if series_uid in (None, s["uid"])]
    fallback: Shown | None = None
    failed: str | None = None
    for uid in candidates:
        path = folder / uid
        try:
            made = read_dicom(path, dict(fields))
        except DicomError as err:
            failed = failed or str(err).replace(str(path), f"series {uid}")
            continue
        if made is None:
            continue
        shown = Shown(uid, list(made.images), made.description,
                      list(made.captions or [made.description] * len(made.images)), made.view)
        if made.view is not None:
            return shown
        fallback = fallback or shown
    if fallback is not None:
        return fallback
    raise Problem(422, f"no series of this study can be shown: {failed or 'no images'}",
                  "cannot-render")


def png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def sources(folder: Path, series_uid: str) -> list[Any]:
    """The de-identified data sets of one series, headers only: what an SR cites."""
    from domainvlm.medical.io import iter_dicom

    return [source.dataset for source in iter_dicom(folder / series_uid,
                                                    stop_before_pixels=True)]
