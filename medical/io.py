"""Read DICOM from files, folders and zip archives; decode frames to modality values.

`iter_dicom` is the only way the medical module opens DICOM, so every caller gets the same
errors. `read_frames` applies the Modality LUT (RescaleSlope/Intercept or a Modality LUT
Sequence) per frame, from the functional groups of enhanced multi-frame objects when present,
so a series whose slices or frames carry different rescale tags is still right.

Every failure is a `DicomError` subclass naming the file and, for pixels, the transfer syntax
and what to install or do. Decoders, all permissively licensed (GPL ones are left out):

| Transfer syntax                          | Decoder                                   | Licence   |
|------------------------------------------|-------------------------------------------|-----------|
| Implicit/Explicit VR LE, Explicit VR BE  | pydicom + numpy                           | MIT, BSD  |
| Deflated Explicit VR LE                  | pydicom (zlib)                            | MIT       |
| RLE Lossless                             | pydicom (numpy) or pylibjpeg-rle          | MIT       |
| JPEG Baseline (8-bit)                    | python-gdcm or Pillow                     | BSD, HPND |
| JPEG Extended (12-bit)                   | python-gdcm, called here directly (1)     | BSD       |
| JPEG Lossless (Process 14, SV1)          | python-gdcm                               | BSD       |
| JPEG-LS Lossless / Near-lossless         | python-gdcm                               | BSD       |
| JPEG 2000 (lossless and lossy), HTJ2K    | pylibjpeg + pylibjpeg-openjpeg (OpenJPEG) | MIT, BSD  |
| MPEG-2/4, HEVC video, JPIP referenced    | none: DicomDecodeError saying so          |           |

(1) pydicom's GDCM plugin refuses 12-bit JPEG Extended, and the plugin that accepts it,
pylibjpeg-libjpeg, is GPL-3; GDCM's own codec decodes it (checked against pydicom's reference
values for JPGExtended.dcm), so `read_frames` falls back to it for monochrome frames.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainvlm.medical.archives import ArchiveLimits, zip_members
from domainvlm.medical.errors import ArchiveLimitError, DicomDecodeError, DicomError, NotDicomError
from domainvlm.quiet import native_stderr_hidden

MAX_DECODED_BYTES = 4 * 2**30  # float32 output; a larger object is refused, not swapped to death

# Permissive packages that decode each compressed syntax; named in "install ..." messages.
_GDCM = "python-gdcm (BSD)"
_OPENJPEG = "pylibjpeg and pylibjpeg-openjpeg (MIT)"
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": f"{_GDCM} or pillow (HPND)",
    "1.2.840.10008.1.2.4.51": _GDCM,
    "1.2.840.10008.1.2.4.57": _GDCM,
    "1.2.840.10008.1.2.4.70": _GDCM,
    "1.2.840.10008.1.2.4.80": _GDCM,
    "1.2.840.10008.1.2.4.81": _GDCM,
    "1.2.840.10008.1.2.4.90": _OPENJPEG,
    "1.2.840.10008.1.2.4.91": _OPENJPEG,
    "1.2.840.10008.1.2.4.201": _OPENJPEG,
    "1.2.840.10008.1.2.4.202": _OPENJPEG,
    "1.2.840.10008.1.2.4.203": _OPENJPEG,
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (MIT), or numpy alone",
}
_VIDEO_PREFIXES = ("1.2.840.10008.1.2.4.10", "1.2.840.10008.1.2.4.11")  # MPEG-2/4, HEVC
_REQUIRED_PIXEL_ATTRIBUTES = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated",
                              "PhotometricInterpretation")
_PARSE_ERRORS = (EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError,
                 NotImplementedError, OverflowError)


@dataclass
class DicomSource:
    """A parsed data set and where it came from (a path, or `archive.zip:member`)."""

    name: str
    dataset: Any  # pydicom.Dataset


def read_dataset(data: Path | bytes, name: str, *, stop_before_pixels: bool = False) -> Any:
    """Parse one DICOM file (path or bytes); NotDicomError if it is not DICOM.

    A data set stored without the Part-10 header (no preamble, no 'DICM') is still read when
    it parses to an object with a SOP Class UID, as older archives and network dumps hold them.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    def source() -> Any:
        return io.BytesIO(data) if isinstance(data, bytes) else str(data)

    try:
        return pydicom.dcmread(source(), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass
    except OSError as err:
        raise DicomError(f"{name}: cannot be read ({err.strerror or err})") from None
    except _PARSE_ERRORS as err:  # a DICOM header, then a broken data set: worth reporting
        raise DicomError(f"{name}: unreadable DICOM ({_detail(err)})") from None
    try:
        ds = pydicom.dcmread(source(), stop_before_pixels=stop_before_pixels, force=True)
        sop_class = str(ds.get("SOPClassUID", ""))
    except (OSError, *_PARSE_ERRORS):
        sop_class = ""
    if not (sop_class.startswith("1.2.") and set(sop_class) <= set("0123456789.")):
        raise NotDicomError(f"{name}: not a DICOM file (no 'DICM' header and no SOP Class UID)")
    return ds


def iter_dicom(path: Path, *, stop_before_pixels: bool = False,
               skip_non_dicom: bool = True,
               limits: ArchiveLimits | None = None,
               unreadable: list[str] | None = None) -> Iterator[DicomSource]:
    """Every DICOM data set under `path`: a file, a folder (recursive, sorted) or a .zip.

    Non-DICOM files in folders and archives are skipped (DICOMDIR indexes too) unless
    `skip_non_dicom` is False; a single named file that is not DICOM always raises. Zip
    members are streamed within `limits` (default `ArchiveLimits.from_env()`, see
    `domainvlm.medical.archives`): ArchiveLimitError names the archive, member and limit.
    Given a list `unreadable`, a member of a folder or archive that is DICOM but cannot be read
    is recorded there ("name: why") and passed over, so one broken file does not stop the rest.

    Example::

        from domainvlm.medical import iter_dicom

        for source in iter_dicom("dicom/", stop_before_pixels=True):
            print(source.name, source.dataset.Modality)
    """
    path = Path(path)
    if not path.exists():
        raise DicomError(f"{path}: no such file or folder")
    if path.is_file() and not zipfile.is_zipfile(path):
        yield DicomSource(str(path), read_dataset(path, str(path),
                                                  stop_before_pixels=stop_before_pixels))
        return
    for name, load in _members(path, limits or ArchiveLimits.from_env()):
        try:
            ds = read_dataset(load(), name, stop_before_pixels=stop_before_pixels)
        except NotDicomError:
            if skip_non_dicom:
                continue
            raise
        except DicomError as err:
            if unreadable is None or isinstance(err, ArchiveLimitError):
                raise
            unreadable.append(str(err))
            continue
        if "DirectoryRecordSequence" in ds:  # a DICOMDIR index, not an image
            continue
        yield DicomSource(name, ds)


def _members(path: Path, limits: ArchiveLimits) -> Iterator[tuple[str, Any]]:
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if zipfile.is_zipfile(file):
                yield from _members(file, limits)
            else:
                yield str(file), (lambda f=file: f)
        return
    yield from zip_members(path, limits)


def read_frames(ds: Any, name: str = "<dataset>") -> Any:
    """Modality values of every frame: float32 (frames, rows, cols) or (frames, rows, cols, 3).

    Grey frames get their own Modality LUT (per-frame, then shared functional groups, then the
    top-level tags); RT Dose is scaled to Gy by DoseGridScaling. PALETTE COLOR frames are the
    stored indices. Colour frames are RGB in stored units: YBR_FULL/YBR_FULL_422 and JPEG 2000
    YBR_ICT/YBR_RCT are converted once, by the decoder path, which alone knows whether the codec
    already did it. Raises DicomDecodeError (file, transfer syntax, what to do) on any failure.

    Example::

        from domainvlm.medical import iter_dicom, read_frames

        source = next(iter_dicom("dicom/ct-001.dcm"))
        hu = read_frames(source.dataset, source.name)[0]   # (rows, cols) in HU for CT
    """
    import numpy as np

    stored = _decode(ds, name)
    if stored.ndim == 4 or _photometric(ds) == "PALETTE COLOR":
        return stored.astype(np.float32)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) < len(stored):
        raise DicomDecodeError(
            f"{name}: PerFrameFunctionalGroupsSequence has {len(per_frame)} items for "
            f"{len(stored)} frames; the enhanced object is inconsistent, re-export it")
    values = np.empty(stored.shape, dtype=np.float32)
    for index, frame in enumerate(stored):
        values[index] = _modality_values(frame, ds, index, name)
    return values


def functional_group(ds: Any, frame: int, keyword: str) -> Any:
    """The first item of sequence `keyword` for `frame` (0-based): per-frame functional group,
    else shared functional group; None when neither has it (then top-level tags apply)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame) and per_frame[frame].get(keyword):
        return per_frame[frame][keyword][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(keyword):
        return shared[0][keyword][0]
    return None


def apply_lut(values: Any, item: Any, ds: Any) -> Any:
    """Look `values` up in a Modality or VOI LUT item (LUTDescriptor + LUTData): float64.

    Values below the first mapped value take the first entry, above the table the last
    (PS3.3 C.11.1.1.1 and C.11.2.1.1).
    """
    import numpy as np

    entries, first, _bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    if first > 32767 and int(ds.get("PixelRepresentation", 0) or 0) == 1:
        first -= 65536  # descriptor stored as US although the first value is signed
    data = item.LUTData
    if isinstance(data, bytes):
        lut = np.frombuffer(data, dtype="<u2" if _is_little_endian(ds) else ">u2")
    else:
        lut = np.atleast_1d(np.asarray(data, dtype=np.float64))
    if len(lut) < entries:
        raise ValueError(f"LUT Data has {len(lut)} entries, its descriptor says {entries}")
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, entries - 1)
    return lut[index].astype(np.float64)


def _modality_values(frame: Any, ds: Any, index: int, name: str) -> Any:
    import numpy as np

    item = functional_group(ds, index, "PixelValueTransformationSequence")
    try:
        if item is None and ds.get("ModalityLUTSequence"):
            values = apply_lut(frame, ds.ModalityLUTSequence[0], ds)
        else:
            source = item if item is not None else ds
            slope = source.get("RescaleSlope")
            intercept = source.get("RescaleIntercept")
            values = frame.astype(np.float64)
            if slope not in (None, ""):
                values *= float(slope)
            if intercept not in (None, ""):
                values += float(intercept)
        if ds.get("Modality") == "RTDOSE" and ds.get("DoseGridScaling") not in (None, ""):
            values = values * float(ds.DoseGridScaling)
    except _PARSE_ERRORS as err:
        raise DicomDecodeError(
            f"{name}: Modality LUT of frame {index + 1} is invalid ({_detail(err)}); "
            "fix RescaleSlope/RescaleIntercept or the Modality LUT Sequence") from None
    return values


def _decode(ds: Any, name: str) -> Any:
    """Stored values, (frames, rows, cols[, 3]) in the decoder's dtype; colour as RGB."""
    import numpy as np

    keywords = [k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds]
    if not keywords:
        sop = ds.get("SOPClassUID")
        raise DicomDecodeError(
            f"{name}: no pixel data (SOP class {getattr(sop, 'name', sop) or 'unknown'}); "
            "reports, plans, waveforms and indexes hold none: pass image objects only")
    frames, rows, cols, samples = _image_shape(ds, name)
    syntax = _transfer_syntax(ds, name)
    label = f"{syntax.name} ({syntax})" if syntax.name != str(syntax) else str(syntax)
    decoder = _decoder(syntax, label, name)
    # The codecs print their view of bad bytes on fd 2; what went wrong reaches the user as
    # the DicomDecodeError below.
    with native_stderr_hidden():
        try:
            from pydicom.pixels.utils import as_pixel_options

            pixels, meta = decoder.as_array(ds, validate=True, **as_pixel_options(ds))
            photometric = str(meta.get("photometric_interpretation", _photometric(ds)))
        except MemoryError:
            raise
        except Exception as err:  # pydicom and its plugins raise many types for bad data
            if syntax == "1.2.840.10008.1.2.4.51" and samples == 1 and _bits_stored(ds) > 8:
                pixels, photometric = _gdcm_jpeg12(ds, frames, rows, cols, name, label, err), ""
            else:
                raise DicomDecodeError(
                    f"{name}: pixel data ({label}) cannot be decoded ({_detail(err)}); the "
                    "data are corrupt or truncated, or the image attributes (group 0028) do "
                    "not match them: re-export the file from its source") from None
    if pixels.ndim == (2 if samples == 1 else 3):
        pixels = pixels[None]
    if samples == 3 and photometric != "RGB":
        if photometric not in ("YBR_FULL", "YBR_FULL_422"):
            raise DicomDecodeError(f"{name}: colour space {photometric} ({label}) is not "
                                   "supported; convert the file to RGB (e.g. gdcmconv --raw)")
        from pydicom.pixels import convert_color_space

        pixels = convert_color_space(pixels, photometric, "RGB", per_frame=True)
    return np.asarray(pixels)


def frame_count(ds: Any, name: str) -> int:
    """NumberOfFrames (1 when absent), or DicomDecodeError naming the file when it is not a
    whole number: the one reading of it, so a malformed value never ends as a bare ValueError."""
    try:
        return int(ds.get("NumberOfFrames") or 1)
    except _PARSE_ERRORS as err:
        raise DicomDecodeError(f"{name}: NumberOfFrames is not a whole number ({_detail(err)}); "
                               "re-export the file from its source") from None


def _image_shape(ds: Any, name: str) -> tuple[int, int, int, int]:
    missing = [k for k in _REQUIRED_PIXEL_ATTRIBUTES if k not in ds]
    if missing:
        raise DicomDecodeError(
            f"{name}: pixel data without {', '.join(missing)}; the Image Pixel module "
            "(group 0028) is incomplete, re-export the file from its source")
    frames = frame_count(ds, name)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.SamplesPerPixel)
        int(ds.BitsAllocated)
        _photometric(ds)
    except _PARSE_ERRORS as err:
        raise DicomDecodeError(
            f"{name}: image attributes missing or invalid ({_detail(err)}); the Image Pixel "
            "module (group 0028) is broken, re-export the file from its source") from None
    if min(frames, rows, cols) <= 0 or samples not in (1, 3):
        raise DicomDecodeError(f"{name}: unsupported image shape ({frames} frames of {rows}x"
                               f"{cols}, {samples} samples per pixel)")
    size = frames * rows * cols * samples * 4
    if size > MAX_DECODED_BYTES:
        raise DicomDecodeError(
            f"{name}: {frames}x{rows}x{cols}x{samples} decodes to {size / 2**30:.1f} GiB, over "
            f"the {MAX_DECODED_BYTES / 2**30:.0f} GiB limit (io.MAX_DECODED_BYTES); raise it or "
            "read frames one by one with pydicom.pixels.iter_pixels")
    return frames, rows, cols, samples


def _transfer_syntax(ds: Any, name: str) -> Any:
    """The file's transfer syntax; for a data set read without a header, the one it was
    parsed with (only possible for native, uncompressed pixel data)."""
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return UID(meta.TransferSyntaxUID)
    implicit, little = ds.original_encoding
    pixels = ds.data_element("PixelData")  # the element (its length), or None
    if implicit is None:
        raise DicomDecodeError(f"{name}: no Transfer Syntax UID in the file meta header; set "
                               "file_meta.TransferSyntaxUID or re-export the file with it")
    if pixels is not None and pixels.is_undefined_length:
        raise DicomDecodeError(
            f"{name}: no Transfer Syntax UID in the file meta header and the pixel data are "
            "compressed, so the codec is unknown; re-export the file with its header")
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _decoder(syntax: Any, label: str, name: str) -> Any:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        if str(syntax).startswith(_VIDEO_PREFIXES):
            advice = "video is not decoded here; extract frames with ffmpeg, or ask the " \
                     "PACS for Explicit VR Little Endian"
        elif str(syntax).startswith("1.2.840.10008.1.2.4.94"):
            advice = "the pixels are on a JPIP server; retrieve the object uncompressed"
        else:
            advice = "transcode it to Explicit VR Little Endian (gdcmconv --raw, dcmdjpeg)"
        raise DicomDecodeError(f"{name}: no pixel decoder exists for {label}; {advice}") from None
    if not decoder.is_available:
        package = _DECODER_PACKAGES.get(str(syntax), "a pydicom decoder plugin")
        raise DicomDecodeError(f"{name}: no decoder installed for {label}; pip install {package}")
    return decoder


def _gdcm_jpeg12(ds: Any, frames: int, rows: int, cols: int, name: str, label: str,
                 cause: Exception) -> Any:
    """Decode 12-bit JPEG Extended with GDCM's own codec (see the module docstring)."""
    import numpy as np
    from pydicom.encaps import generate_frames

    try:
        import gdcm
    except ImportError:
        raise DicomDecodeError(f"{name}: pixel data ({label}) cannot be decoded "
                               f"({_detail(cause)}); pip install {_GDCM}") from None
    bits_stored = _bits_stored(ds)
    out = np.empty((frames, rows, cols), dtype=np.int32)
    decoded = 0
    for index, fragment_bytes in enumerate(generate_frames(ds.PixelData,
                                                           number_of_frames=frames)):
        if index >= frames:
            break
        fragment = gdcm.Fragment()
        fragment.SetByteStringValue(fragment_bytes)
        fragments = gdcm.SequenceOfFragments.New()
        fragments.AddFragment(fragment)
        element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
        element.SetValue(fragments.__ref__())
        image = gdcm.Image()
        image.SetNumberOfDimensions(2)
        image.SetDimensions((cols, rows, 1))
        image.SetDataElement(element)
        image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(
            gdcm.PhotometricInterpretation.GetPIType(_photometric(ds))))
        image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(
            "1.2.840.10008.1.2.4.51")))
        image.SetPixelFormat(gdcm.PixelFormat(1, 16, bits_stored, bits_stored - 1, 0))
        buffer = image.GetBuffer()  # GDCM hands char* back as str
        raw = buffer.encode("utf-8", "surrogateescape") if isinstance(buffer, str) else b""
        if len(raw) != rows * cols * 2:
            raise DicomDecodeError(f"{name}: frame {index + 1} of the pixel data ({label}) is "
                                   "corrupt (GDCM decoded nothing usable); re-export the file")
        out[index] = np.frombuffer(raw, dtype=np.uint16).reshape(rows, cols) & (
            (1 << bits_stored) - 1)
        decoded += 1
    if decoded != frames:
        raise DicomDecodeError(f"{name}: {decoded} of {frames} frames present ({label}); "
                               "the pixel data are truncated, re-export the file")
    if int(ds.get("PixelRepresentation") or 0) == 1:  # two's complement within BitsStored
        out = np.where(out >= 1 << (bits_stored - 1), out - (1 << bits_stored), out)
    return out


def _bits_stored(ds: Any) -> int:
    try:
        return int(ds.get("BitsStored") or 0)
    except (TypeError, ValueError):
        return 0


def _photometric(ds: Any) -> str:
    return str(ds.PhotometricInterpretation).strip().upper()


def _is_little_endian(ds: Any) -> bool:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return meta.TransferSyntaxUID != "1.2.840.10008.1.2.2"
    return ds.original_encoding[1] is not False


def _detail(err: BaseException) -> str:
    """An exception in one short line. Raised while decoding group 0028 and pixel data,
    pydicom's messages carry image attributes, never patient ones."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = text.replace(":; ", ": ")
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
