"""Open images for records: every failure names the record and the file."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from domainvlm.errors import DataError


def open_image(ref: Any, source: str):
    """An RGB PIL image from a path or a PIL image; DataError if missing or undecodable."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    path = Path(ref)
    if not path.is_file():
        raise DataError(f"{source}: image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{source}: image {path} cannot be decoded ({exc})") from None


def image_digest(ref: Any) -> str:
    """Content hash of an image file or PIL image, for cache keys."""
    from PIL import Image

    digest = hashlib.sha256()
    if isinstance(ref, Image.Image):
        digest.update(f"{ref.mode}{ref.size}".encode())
        digest.update(ref.tobytes())
    else:
        path = Path(ref)
        digest.update(path.read_bytes() if path.is_file() else f"missing:{path}".encode())
    return digest.hexdigest()
