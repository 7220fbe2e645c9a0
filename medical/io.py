"""Read DICOM from files, folders and zip archives; decode frames to modality values.

`iter_dicom` is the only way the medical module opens DICOM, so every caller gets the same
errors. `read_frames` applies the Modality LUT (RescaleSlope/Intercept or a LUT sequence) per
frame, so a series whose slices carry different rescale tags is still right.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainvlm.medical.errors import DicomDecodeError, DicomError, NotDicomError


@dataclass
class DicomSource:
    """A parsed data set and where it came from (a path, or `archive.zip:member`)."""

    name: str
    dataset: Any  # pydicom.Dataset


def read_dataset(data: Path | bytes, name: str, *, stop_before_pixels: bool = False) -> Any:
    """Parse one DICOM file (path or bytes); NotDicomError if it is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    try:
        return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as err:
        raise NotDicomError(f"{name}: not a DICOM file ({err})") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise NotDicomError(f"{name}: unreadable DICOM ({type(err).__name__}: {err})") from None


def iter_dicom(path: Path, *, stop_before_pixels: bool = False,
               skip_non_dicom: bool = True) -> Iterator[DicomSource]:
    """Every DICOM data set under `path`: a file, a folder (recursive, sorted) or a .zip.

    Non-DICOM files in folders and archives are skipped (DICOMDIR indexes too) unless
    `skip_non_dicom` is False; a single named file that is not DICOM always raises.
    """
    path = Path(path)
    if not path.exists():
        raise DicomError(f"{path}: no such file or folder")
    if path.is_file() and not zipfile.is_zipfile(path):
        yield DicomSource(str(path), read_dataset(path, str(path),
                                                  stop_before_pixels=stop_before_pixels))
        return
    for name, load in _members(path):
        try:
            ds = read_dataset(load(), name, stop_before_pixels=stop_before_pixels)
        except NotDicomError:
            if skip_non_dicom:
                continue
            raise
        if "DirectoryRecordSequence" in ds:  # a DICOMDIR index, not an image
            continue
        yield DicomSource(name, ds)


def _members(path: Path) -> Iterator[tuple[str, Any]]:
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if zipfile.is_zipfile(file):
                yield from _members(file)
            else:
                yield str(file), (lambda f=file: f)
        return
    with zipfile.ZipFile(path) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if not info.is_dir():
                yield f"{path}:{info.filename}", (lambda i=info: archive.read(i))


def read_frames(ds: Any, name: str = "<dataset>") -> Any:
    """Modality values of every frame: float32 (frames, rows, cols) or (frames, rows, cols, 3).

    Grey images get the Modality LUT of each frame (per-frame functional groups in enhanced
    multi-frame objects); colour images are returned as stored (after decoding).
    Raises DicomDecodeError when the pixel data cannot be decoded.
    """
    import numpy as np
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomDecodeError(f"{name}: no pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for missing decoders and bad data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise DicomDecodeError(
            f"{name}: cannot decode pixel data (transfer syntax "
            f"{getattr(syntax, 'name', syntax)}): {err}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    if frames == 1:
        pixels = pixels[None]
    if samples > 1:
        return pixels.astype(np.float32)
    return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
