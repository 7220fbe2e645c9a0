"""The view a data set's images were rendered with, carried from the data to the adapter.

`domainvlm dicom build-vqa` writes `build.json` beside its split files, with `views`: how each
scan became images (a montage of 9 slices, a window...). An adapter trained on those images
should be asked about a new scan rendered the same way, so fine-tuning copies that object into
the adapter folder as `data_views.json`, merging copies it on, and `domainvlm ask` hands it to
the reader that renders scans. The core reads and copies JSON only: what the fields mean is
the reader's business (`domainvlm.medical`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from domainvlm.atomic import write_bytes
from domainvlm.errors import ModelLoadError

BUILD_FILE = "build.json"  # written by the data builder beside train.jsonl / val.jsonl
VIEWS_FILE = "data_views.json"  # in an adapter (or merged model) folder


def training_views(data: Any) -> dict[str, Any] | None:
    """The `views` object of the build.json beside the data file `data`, or None.

    A build.json without a `views` object, or that is not JSON, was not written by a data
    builder of ours and is passed over."""
    if not isinstance(data, str | Path) or not Path(data).is_file():
        return None
    build = Path(data).parent / BUILD_FILE
    try:
        views = json.loads(build.read_text(encoding="utf-8")).get("views")
    except (OSError, ValueError, AttributeError):
        return None
    return views if isinstance(views, dict) else None


def write_views(folder: Path, views: dict[str, Any]) -> None:
    """Record `views` in a model or adapter folder (atomically)."""
    text = json.dumps({"views": views}, indent=2, sort_keys=True) + "\n"
    write_bytes(Path(folder) / VIEWS_FILE, text.encode("utf-8"))


def recorded_views(folder: str | Path) -> dict[str, Any] | None:
    """The views recorded in a model or adapter folder, or None (a hub id, or none recorded)."""
    path = Path(folder) / VIEWS_FILE
    if not path.is_file():
        return None
    try:
        views = json.loads(path.read_text(encoding="utf-8"))["views"]
    except (ValueError, KeyError, TypeError):
        views = None
    if not isinstance(views, dict):
        raise ModelLoadError(f"{path}: not a views record (a JSON object with `views`); "
                             "restore it from the training run or delete it")
    return views


def copy_views(source: Path, target: Path) -> None:
    """Carry the recorded views of `source` (if any) into the folder `target`."""
    if (Path(source) / VIEWS_FILE).is_file():
        shutil.copyfile(Path(source) / VIEWS_FILE, Path(target) / VIEWS_FILE)
