"""Turn modality values into display pixels: VOI window or LUT, presets, colour.

`render_frame` follows the DICOM grayscale pipeline (PS3.3 C.11 and PS3.4 N.2) on the values
`io.read_frames` returns, which already carry the Modality LUT: the window from the tags (per
frame in enhanced objects), else the VOI LUT Sequence, else a 1st-99th percentile stretch (MR
and anything without VOI tags); MONOCHROME1 is inverted after VOI. A window preset or an
explicit (center, width) replaces the tags. Palette colour goes through its colour LUT;
colour frames arrive as RGB from `read_frames` (it converts YBR once, with the decoder).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from domainvlm.errors import ConfigError
from domainvlm.medical.errors import DicomDecodeError
from domainvlm.medical.io import apply_lut, functional_group


class Window(NamedTuple):
    """A VOI window in modality units (HU for CT)."""

    center: float
    width: float


# Radiopaedia, "Windowing (CT)" (radiopaedia.org/articles/windowing-ct), W/L in HU.
PRESETS: dict[str, Window] = {
    "lung": Window(-600.0, 1500.0),
    "mediastinum": Window(50.0, 350.0),
    "soft_tissue": Window(40.0, 400.0),
    "bone": Window(400.0, 1800.0),
    "brain": Window(40.0, 80.0),
    "liver": Window(30.0, 150.0),
}
PERCENTILE = "percentile"  # render_frame's window that forces the 1st-99th percentile stretch

WindowSpec = str | tuple[float, float] | Window


def resolve_window(window: WindowSpec) -> Window:
    """A preset name ("lung", "soft-tissue", ...) or a (center, width) pair as a Window."""
    if isinstance(window, str):
        key = window.strip().lower().replace("-", "_").replace(" ", "_")
        if key not in PRESETS:
            raise ConfigError(f"unknown window preset {window!r}; valid presets: "
                              f"{', '.join(PRESETS)} (or a (center, width) pair)")
        return PRESETS[key]
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError(f"window must be a preset name or (center, width), got {window!r}"
                          ) from None
    if not (np.isfinite(center) and np.isfinite(width)) or width < 1:
        raise ConfigError(f"window (center={center}, width={width}) needs a finite center and "
                          "a width of at least 1")
    return Window(center, width)


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI function (PS3.3 C.11.2.1.2.1) onto [0, 1]: float32, same shape.

    Values at or below c - 0.5 - (w - 1) / 2 give 0, above c - 0.5 + (w - 1) / 2 give 1.
    """
    if width < 1:
        raise ConfigError(f"window width {width} is below 1, which the linear VOI function "
                          "does not allow")
    x = np.asarray(values, dtype=np.float64)
    if width == 1:
        unit = (x > center - 0.5).astype(np.float64)
    else:
        unit = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return unit.astype(np.float32)


def percentile_scale(values: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Stretch the low..high percentiles of the finite values onto [0, 1]: float32.

    Falls back to min..max when the percentiles coincide (sparse masks), and to zeros for a
    constant image.
    """
    if not 0 <= low < high <= 100:
        raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    x = np.asarray(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros(x.shape, dtype=np.float32)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        lo, hi = finite.min(), finite.max()
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 (rounded); NaN gives 0, values outside are clipped."""
    x = np.nan_to_num(np.asarray(unit, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def tag_window(ds: Any, frame: int = 0) -> tuple[Window, str] | None:
    """The window the file asks for and its VOI LUT Function, or None.

    Frame VOI LUT functional groups win over the top-level tags; of multi-valued tags the
    first (the default view) is used; an unusable window counts as absent.
    """
    source = functional_group(ds, frame, "FrameVOILUTSequence") or ds
    try:
        center, width = (_first(source.get(k)) for k in ("WindowCenter", "WindowWidth"))
        function = str(source.get("VOILUTFunction") or "LINEAR").strip().upper()
        window = Window(float(center), float(width))
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(window.center) and np.isfinite(window.width)) or window.width <= 0:
        return None
    if function == "LINEAR" and window.width < 1:
        return None
    return window, function


def voi_function(values: np.ndarray, window: Window, function: str = "LINEAR") -> np.ndarray:
    """VOI LUT Function of PS3.3 C.11.2.1.3 (LINEAR, LINEAR_EXACT, SIGMOID) onto [0, 1]."""
    x = np.asarray(values, dtype=np.float64)
    center, width = window
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0).astype(np.float32)
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    return apply_window(x, center, width)


def voi_lut(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The first VOI LUT Sequence item applied and scaled by its entry depth, or None."""
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    mapped = apply_lut(values, item, ds)
    bits = int(item.LUTDescriptor[2])
    # Some writers declare fewer bits than the entries use; trust the data then.
    top = max(2.0**bits - 1, float(2 ** int(np.ceil(np.log2(mapped.max() + 1))) - 1))
    return (mapped / top).astype(np.float32)


def render_frame(ds: Any, frame_values: np.ndarray, window: WindowSpec | None = None, *,
                 frame: int = 0, name: str = "<dataset>") -> np.ndarray:
    """One frame of `io.read_frames` output for display: uint8 (rows, cols) or (rows, cols, 3).

    `window`: None uses the file's VOI (window tags, else VOI LUT, else percentiles);
    a preset name or (center, width) overrides it; "percentile" forces the stretch. Windows
    apply to grey images only. `frame` picks per-frame VOI tags in enhanced objects.

    Example::

        from PIL import Image
        from domainvlm.medical import iter_dicom, read_frames, render_frame

        source = next(iter_dicom("dicom/chest-xray.dcm"))
        pixels = render_frame(source.dataset, read_frames(source.dataset)[0])  # its own VOI
        Image.fromarray(pixels).save("xray.png")
    """
    values = np.asarray(frame_values)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if values.ndim == 3:
        if values.shape[-1] != 3:
            raise ValueError(f"expected one frame (rows, cols[, 3]), got shape {values.shape}")
        return _rgb_to_uint8(values, ds)
    if values.ndim != 2:
        raise ValueError(f"expected one frame (rows, cols[, 3]), got shape {values.shape}")
    if photometric == "PALETTE COLOR":
        return _palette_to_rgb(values, ds, name)
    try:
        unit = _grey_unit(values, ds, window, frame)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise DicomDecodeError(f"{name}: VOI LUT unusable ({type(err).__name__}: {err}); "
                               "pass a window preset or (center, width) instead") from None
    if photometric == "MONOCHROME1":  # after VOI: low values are white on this interpretation
        unit = 1.0 - unit
    return to_uint8(unit)


def three_window_composite(values: np.ndarray,
                           windows: Sequence[WindowSpec] = ("lung", "mediastinum", "bone"),
                           ) -> np.ndarray:
    """Three windows of one grey frame as the R, G and B channels: uint8 (rows, cols, 3)."""
    if len(windows) != 3:
        raise ConfigError(f"a composite needs exactly 3 windows, got {len(windows)}")
    channels = [to_uint8(apply_window(values, *resolve_window(w))) for w in windows]
    return np.stack(channels, axis=-1)


def _grey_unit(values: np.ndarray, ds: Any, window: WindowSpec | None, frame: int) -> np.ndarray:
    if isinstance(window, str) and window.strip().lower() == PERCENTILE:
        return percentile_scale(values)
    if window is not None:
        return apply_window(values, *resolve_window(window))
    tagged = tag_window(ds, frame)
    if tagged is not None:
        return voi_function(values, *tagged)
    looked_up = voi_lut(values, ds)
    return looked_up if looked_up is not None else percentile_scale(values)


def _rgb_to_uint8(values: np.ndarray, ds: Any) -> np.ndarray:
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    return to_uint8(np.asarray(values, dtype=np.float64) / (2.0**bits - 1))


def _palette_to_rgb(values: np.ndarray, ds: Any, name: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    try:
        rgb = apply_color_lut(np.rint(values).astype(np.int64), ds)[..., :3]
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise DicomDecodeError(f"{name}: palette colour LUT unusable ({type(err).__name__}: "
                               f"{err}); the Palette Color LUT module is broken") from None
    return to_uint8(rgb / float(np.iinfo(rgb.dtype).max))


def _first(value: Any) -> Any:
    if value is None or isinstance(value, str | bytes):
        return value
    try:
        return value[0]
    except (TypeError, IndexError):
        return value
