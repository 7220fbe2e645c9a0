"""How the images given to `ask` / `answer` become the images the model sees.

An image file is read as it is. Anything else (a DICOM file, a series folder) goes to the
readers that other parts of domainvlm register under the entry-point group
`domainvlm.image_readers` (`domainvlm.medical` registers `dicom`), so the core never imports
them. A reader is a callable `read(path, view) -> ReaderImages | None`: None when the path is
not its format (the next reader is asked), a DomainVLMError when it is but cannot be used.

`view` is how a reader renders (for DICOM: strategy, count, window...): a JSON object whose
fields only the reader knows. It is the view recorded with the model (the training data's,
`domainvlm.data.views`), with the fields given by the caller laid over it; with neither, the
reader's default.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainvlm.errors import ConfigError, DataError

GROUP = "domainvlm.image_readers"


@dataclass(frozen=True)
class ReaderImages:
    """What a reader made of one path."""

    images: list[Any]  # PIL images, in the order the model sees them
    description: str  # what they show, in words; never a patient attribute
    view: dict[str, Any] | None = None  # every view setting used; None: no view applied
    captions: list[str] | None = None  # what each image shows, where the reader can say


@dataclass(frozen=True)
class InputImages:
    """One input given by the caller and the images it became."""

    input: str  # the path as given, or "image N" for an image object
    kind: str  # "image", or the name of the reader that took it ("dicom")
    images: list[Any]  # PIL images
    description: str | None = None
    view: dict[str, Any] | None = None
    view_from: str | None = None  # recorded | given | recorded+given | default

    def summary(self) -> dict[str, Any]:
        """A JSON-ready account of this input (what `domainvlm ask --json` prints)."""
        return {"input": self.input, "kind": self.kind, "images": len(self.images),
                "sizes": [list(image.size) for image in self.images],
                "description": self.description, "view": self.view,
                "view_from": self.view_from}


def read_inputs(refs: Sequence[Any], *, view: Mapping[str, Any] | None = None,
                recorded: Mapping[str, Any] | None = None) -> list[InputImages]:
    """The images of every input in `refs` (paths or PIL images), in order.

    `recorded` is the model's recorded view, `view` the caller's fields over it. Raises
    DataError for a missing path or one that neither Pillow nor any reader takes."""
    from PIL import Image

    settings = {**(recorded or {}), **(view or {})}
    origin = ("recorded+given" if recorded and view else "recorded" if recorded
              else "given" if view else "default")
    inputs = []
    for number, ref in enumerate(refs, start=1):
        if isinstance(ref, Image.Image):
            inputs.append(InputImages(f"image {number}", "image", [ref.convert("RGB")]))
            continue
        path = Path(ref)
        if not path.exists():
            raise DataError(f"image {path} does not exist")
        plain, why = _open_plain(path)
        if plain is not None:
            inputs.append(InputImages(str(ref), "image", [plain]))
            continue
        for name, read in _readers().items():
            made = read(path, dict(settings))
            if made is not None:
                inputs.append(InputImages(str(ref), name, list(made.images), made.description,
                                          made.view, origin if made.view is not None else None))
                break
        else:
            takes = ", ".join(_readers()) or "none installed"
            what = "a folder no reader takes" if path.is_dir() else \
                f"not an image Pillow can open ({why}), nor a file any reader takes"
            raise DataError(f"{path}: {what} (readers: {takes}); pass an image file, a DICOM "
                            "file or a DICOM series folder")
    return inputs


def _open_plain(path: Path) -> tuple[Any, str | None]:
    """(RGB image, None) for an image file Pillow opens; (None, why) for anything else."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return None, "a folder"
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB"), None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return None, str(exc) or type(exc).__name__


@functools.cache
def _readers() -> dict[str, Callable[[Path, dict[str, Any]], ReaderImages | None]]:
    from importlib.metadata import entry_points

    return {entry.name: entry.load() for entry in entry_points(group=GROUP)}


def parse_view(view: str | Mapping[str, Any] | Any | None) -> dict[str, Any] | None:
    """View fields from a JSON object (`{"strategy": "slabs", "count": 4}`), from
    `key=value` pairs joined by commas (`strategy=slabs,count=4,window=lung`; a piece without
    `=` continues the value before it, so `window=40,400` is one value), from a mapping or
    from a dataclass such as `domainvlm.medical.ViewSpec`. Values from pairs stay text: the
    reader converts them."""
    if view is None:
        return None
    if dataclasses.is_dataclass(view) and not isinstance(view, type):
        return dataclasses.asdict(view)
    if isinstance(view, Mapping):
        return dict(view)
    if not isinstance(view, str):
        raise ConfigError(f"view must be a mapping, a dataclass or text, got "
                          f"{type(view).__name__}")
    text = view.strip()
    if text.startswith("{"):
        try:
            fields = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--view {view!r} is not valid JSON ({exc})") from None
        if not isinstance(fields, dict):
            raise ConfigError(f"--view {view!r}: give a JSON object")
        return fields
    fields: dict[str, Any] = {}
    last = None
    for piece in text.split(","):
        key, equals, value = piece.partition("=")
        if equals and key.strip():
            last = key.strip()
            fields[last] = value.strip()
        elif last is not None and not equals:
            fields[last] += "," + piece.strip()
        else:
            raise ConfigError(f"--view {view!r}: write key=value pairs joined by commas "
                              "(strategy=slabs,count=4) or a JSON object")
    return fields
