"""Turn a Volume into the 2-D images a vision-language model reads, and remember their source.

Four strategies: `even_slices` (n slices spread over the stack), `mip` (maximum-intensity
projection onto the axial, coronal or sagittal plane), `montage` (n slices tiled in one grid)
and `slab_montage` (the stack cut into n consecutive slabs, each shown as its own MIP, tiled:
the sliding thin-slab MIP radiologists read for nodules, so that no slice goes unseen). The
tiles of a montage sit in a grid, or, with layout "sides", cut at the body's midline with the
two sides of the patient in the two halves of the image.
Every `View` names the plane, the volume slice indices and SOP Instance UIDs it used and the
window, so an answer about an image can point back to the DICOM it came from.

Images are shown the way radiologists read them, whatever the acquisition orientation:
axial with anterior up and the patient's right on the image left, coronal with the head up
and the patient's right on the left, sagittal with the head up and anterior on the left.
Pixels are resampled to be square in millimetres, so a coronal MIP of 5 mm slices is not
squashed. Windowing is `domainvlm.medical.render`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from domainvlm.medical.render import Window, apply_window, resolve_window, to_uint8
from domainvlm.medical.series import Volume

PLANES = ("axial", "coronal", "sagittal")
_PLANE_NORMAL = {"axial": 2, "coronal": 1, "sagittal": 0}  # patient axis (x, y, z) across it
# (patient axis down the image rows, +1 if rows grow along it), then the same for columns.
# LPS: +x patient left, +y posterior, +z head.
_DISPLAY = {"axial": ((1, 1), (0, 1)), "coronal": ((2, -1), (0, 1)),
            "sagittal": ((2, -1), (1, 1))}
WindowLike = str | tuple[float, float] | Window | None
LAYOUTS = ("grid", "sides")  # how montage tiles are arranged (see _arrange)
BODY_HU = -500.0  # above air and lung, below fat: where the body (or the table) is


@dataclass
class View:
    """One image for a model, and exactly what it shows.

    `image` is uint8 (rows, cols). `slice_indices` are volume indices (0-based, along the
    stack); `sop_instance_uids` and `frame_numbers` are aligned with them. `tiles` gives the box
    (x0, y0, x1, y1) in the image of each tile of a montage (or of a single slice), and
    `tile_slices` the volume slices each tile shows: one, or a slab's run. Both are empty for
    a whole-volume projection, where every pixel mixes all slices. `pixel_mm` is the size of
    one image pixel in millimetres (square).
    """

    image: np.ndarray
    plane: str
    slice_indices: tuple[int, ...]
    sop_instance_uids: tuple[str, ...]
    frame_numbers: tuple[int | None, ...]
    window: Window
    description: str
    pixel_mm: float
    tiles: tuple[tuple[int, int, int, int], ...] = ()
    tile_slices: tuple[tuple[int, ...], ...] = ()

    def to_pil(self):
        from PIL import Image

        return Image.fromarray(self.image)

    def slices_at(self, x: int, y: int) -> tuple[int, ...]:
        """The volume slice indices shown at image pixel (x, y); empty off the tiles."""
        for indices, (x0, y0, x1, y1) in zip(self.tile_slices, self.tiles, strict=True):
            if x0 <= x < x1 and y0 <= y < y1:
                return indices
        return ()


def pick_slices(count: int, n: int) -> list[int]:
    """`n` indices spread evenly over `count` slices: the centre of each of n equal parts."""
    if count < 1 or n < 1:
        raise ValueError(f"need at least one slice and n >= 1; got {count} slices, n={n}")
    if n >= count:
        return list(range(count))
    return [int((i + 0.5) * count / n) for i in range(n)]


def acquisition_plane(volume: Volume) -> str:
    """The anatomical plane nearest to the slices: the one the normal is most across."""
    axis = int(np.argmax(np.abs(volume.normal)))
    return {2: "axial", 1: "coronal", 0: "sagittal"}[axis]


def even_slices(volume: Volume, n: int, window: WindowLike = None) -> list[View]:
    """`n` slices of the stack evenly spread (all of them if n >= slices), one View each."""
    win = _window(volume, window)
    plane = acquisition_plane(volume)
    views = []
    for k in pick_slices(volume.shape[0], n):
        unit, pixel_mm = _display_slice(volume, volume.values[k], plane, win)
        image = to_uint8(unit)
        views.append(View(
            image=image, plane=plane, slice_indices=(k,),
            sop_instance_uids=(volume.sop_instance_uids[k],),
            frame_numbers=(volume.frame_numbers[k],), window=win,
            description=f"{plane} slice {_numbers(volume, [k])}, window {_win_text(win)}",
            pixel_mm=pixel_mm, tiles=((0, 0, image.shape[1], image.shape[0]),),
            tile_slices=((k,),)))
    return views


def mip(volume: Volume, plane: str, window: WindowLike = None) -> View:
    """Maximum-intensity projection of the whole volume onto `plane`, square pixels."""
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}; got {plane!r}")
    win = _window(volume, window)
    directions = _axis_directions(volume)
    across = int(np.argmax(np.abs(directions[:, _PLANE_NORMAL[plane]])))
    projected = volume.values.max(axis=across)
    remaining = [a for a in range(3) if a != across]
    unit, pixel_mm = _to_display(apply_window(projected, *win), remaining, plane, volume)
    count = volume.shape[0]
    what = ("its slices" if across == 0 else
            f"the {'rows' if across == 1 else 'columns'} of all slices")
    return View(
        image=to_uint8(unit), plane=plane, slice_indices=tuple(range(count)),
        sop_instance_uids=volume.sop_instance_uids, frame_numbers=volume.frame_numbers,
        window=win, pixel_mm=pixel_mm,
        description=(f"{plane} maximum-intensity projection across {what} ({count} slices, "
                     f"{volume.positions[0]:.1f} to {volume.positions[-1]:.1f} mm), "
                     f"window {_win_text(win)}, {pixel_mm:.3g} mm pixels"))


def montage(volume: Volume, n: int, columns: int | None = None, window: WindowLike = None,
            *, tile_size: int | None = None, gap: int = 2, layout: str = "grid",
            body: Volume | None = None) -> View:
    """`n` evenly spread slices tiled left to right, then top to bottom, in one image.

    `columns` defaults to a near-square grid; `tile_size` scales each tile so its longer side
    has that many pixels; tiles are separated by `gap` pixels of mid grey (128), which no
    windowed tissue is mistaken for at a glance. `layout` "sides" cuts every tile at the
    body's midline instead (see `_tile_sides`), the body found in `body` (default `volume`):
    a masked copy, such as the lungs alone, is cut where the whole patient is.
    """
    win = _window(volume, window)
    plane = acquisition_plane(volume)
    indices = pick_slices(volume.shape[0], n)
    units = [_display_slice(volume, volume.values[k], plane, win) for k in indices]
    image, boxes, pixel_mm, grid, owners = _arrange(units, body or volume, plane, columns,
                                                    tile_size, gap, layout)
    return View(
        image=image, plane=plane, slice_indices=tuple(indices),
        sop_instance_uids=tuple(volume.sop_instance_uids[k] for k in indices),
        frame_numbers=tuple(volume.frame_numbers[k] for k in indices), window=win,
        pixel_mm=pixel_mm, tiles=boxes, tile_slices=tuple((indices[o],) for o in owners),
        description=(f"montage of {plane} slices {_numbers(volume, indices)} in {grid}, "
                     f"window {_win_text(win)}"))


def pick_slabs(count: int, n: int) -> list[tuple[int, ...]]:
    """The stack cut into `n` consecutive runs as equal as possible, covering every slice."""
    if count < 1 or n < 1:
        raise ValueError(f"need at least one slice and n >= 1; got {count} slices, n={n}")
    n = min(n, count)
    edges = [i * count // n for i in range(n + 1)]
    return [tuple(range(a, b)) for a, b in zip(edges, edges[1:], strict=False)]


def slab_montage(volume: Volume, n: int, columns: int | None = None,
                 window: WindowLike = None, *, tile_size: int | None = None,
                 gap: int = 2, layout: str = "grid", body: Volume | None = None) -> View:
    """The stack cut into `n` slabs, each a maximum-intensity projection across its slices,
    tiled like `montage` (`body` as there).

    Every slice is in exactly one slab, so a finding on any slice shows somewhere in the
    image, and at its full contrast against darker tissue (a nodule in the lung, a hyperdense
    lesion in the liver), where a montage of `n` single slices would skip most of the stack.
    """
    win = _window(volume, window)
    plane = acquisition_plane(volume)
    slabs = pick_slabs(volume.shape[0], n)
    units = [_display_slice(volume, volume.values[slab[0]:slab[-1] + 1].max(axis=0), plane, win)
             for slab in slabs]
    image, boxes, pixel_mm, grid, owners = _arrange(units, body or volume, plane, columns,
                                                    tile_size, gap, layout)
    ranges = ", ".join(f"{s[0] + 1}-{s[-1] + 1}" if len(s) > 1 else f"{s[0] + 1}"
                       for s in slabs)
    count = volume.shape[0]
    return View(
        image=image, plane=plane, slice_indices=tuple(range(count)),
        sop_instance_uids=volume.sop_instance_uids, frame_numbers=volume.frame_numbers,
        window=win, pixel_mm=pixel_mm, tiles=boxes, tile_slices=tuple(slabs[o] for o in owners),
        description=(f"montage of {len(slabs)} {plane} slab maximum-intensity projections "
                     f"(slices {ranges} of {count}, {volume.positions[0]:.1f} to "
                     f"{volume.positions[-1]:.1f} mm) in {grid}, window {_win_text(win)}"))


def _arrange(units: list[tuple[np.ndarray, float]], volume: Volume, plane: str,
             columns: int | None, tile_size: int | None, gap: int, layout: str,
             ) -> tuple[np.ndarray, tuple[tuple[int, int, int, int], ...], float, str,
                        tuple[int, ...]]:
    """Tile `units` in `layout`; also returns, for each tile box, the index of its unit."""
    if layout == "grid":
        return (*_tile(units, columns, tile_size, gap), tuple(range(len(units))))
    if layout == "sides":
        return (*_tile_sides(units, _body_frame(volume, plane), columns, tile_size, gap),
                tuple(range(len(units))) * 2)
    raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")


def _body_frame(volume: Volume, plane: str) -> tuple[int, int, int, int]:
    """(top, bottom, midline, half width) in display pixels of the body on any slice of the
    stack: everything above BODY_HU, the table included. The whole image if nothing is."""
    inside = (volume.values > BODY_HU).any(axis=0).astype(np.float32)
    shown, _ = _to_display(inside, [1, 2], plane, volume)
    rows = np.flatnonzero(shown.max(axis=1) > 0.5)
    cols = np.flatnonzero(shown.max(axis=0) > 0.5)
    if rows.size == 0:
        height, width = shown.shape
        return 0, height, width // 2, width - width // 2
    midline = (int(cols[0]) + int(cols[-1]) + 1) // 2
    half = max(midline - int(cols[0]), int(cols[-1]) + 1 - midline)
    return int(rows[0]), int(rows[-1]) + 1, midline, half


def _tile_sides(units: list[tuple[np.ndarray, float]], frame: tuple[int, int, int, int],
                columns: int | None, tile_size: int | None, gap: int,
                ) -> tuple[np.ndarray, tuple[tuple[int, int, int, int], ...], float, str]:
    """Each unit cropped to the body and cut at its midline; the halves on the image's left
    (the patient's right, in the display convention) tiled in the left half of the image,
    the others in the right half, in the same order, on a grey square.

    So the side a finding is on is the half of the image it shows in, as on one axial slice,
    where a grid of whole slices puts it at a position within its tile. `columns` is per
    half; by default the one that makes the image nearest a square. Boxes: the left halves,
    then the right halves.
    """
    top, bottom, midline, half = frame
    halves: list[tuple[np.ndarray, float]] = []
    for side in (0, 1):
        for unit, pixel_mm in units:
            padded = np.pad(unit, ((0, 0), (half, half)))
            start = midline + side * half  # the padding shifts columns by `half`
            halves.append((padded[top:bottom, start:start + half], pixel_mm))
    tiles, pixel_mm = _scaled_tiles(halves, tile_size)
    height, width = tiles[0].shape
    n = len(units)

    def extent(cols: int) -> tuple[int, int]:
        rows = math.ceil(n / cols)
        return (rows * height + (rows - 1) * gap,
                2 * (cols * width + (cols - 1) * gap) + 2 * gap)

    if columns is not None and columns < 1:
        raise ValueError(f"columns must be >= 1; got {columns}")
    columns = min(columns or min(range(1, n + 1), key=lambda c: max(extent(c))), n)
    rows = math.ceil(n / columns)
    content_h, content_w = extent(columns)
    size = max(content_h, content_w)
    image = np.full((size, size), 128, np.uint8)
    y_pad, x_pad = (size - content_h) // 2, (size - content_w) // 2
    side_w = columns * width + (columns - 1) * gap + 2 * gap
    boxes = []
    for index, tile in enumerate(tiles):
        side, position = divmod(index, n)
        y0 = y_pad + (position // columns) * (height + gap)
        x0 = x_pad + side * side_w + (position % columns) * (width + gap)
        image[y0:y0 + height, x0:x0 + width] = tile
        boxes.append((x0, y0, x0 + width, y0 + height))
    grid = (f"halves cut at the body's midline, image-left halves on the left and image-right "
            f"halves on the right, each side {rows} row{'s' if rows > 1 else ''} of {columns}, "
            "left to right then top to bottom")
    return image, tuple(boxes), pixel_mm, grid


def _tile(units: list[tuple[np.ndarray, float]], columns: int | None, tile_size: int | None,
          gap: int) -> tuple[np.ndarray, tuple[tuple[int, int, int, int], ...], float, str]:
    """Tile [0, 1] images left to right, then top to bottom, on mid grey.

    Returns the uint8 image, each tile's box, the pixel size in mm and the grid in words.
    """
    columns = columns or math.ceil(math.sqrt(len(units)))
    if columns < 1:
        raise ValueError(f"columns must be >= 1; got {columns}")
    columns = min(columns, len(units))
    rows = math.ceil(len(units) / columns)
    tiles, pixel_mm = _scaled_tiles(units, tile_size)
    height, width = tiles[0].shape
    image = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap),
                    128, np.uint8)
    boxes = []
    for position, tile in enumerate(tiles):
        y0 = (position // columns) * (height + gap)
        x0 = (position % columns) * (width + gap)
        image[y0:y0 + height, x0:x0 + width] = tile
        boxes.append((x0, y0, x0 + width, y0 + height))
    grid = (f"{rows} row{'s' if rows > 1 else ''} of {columns}, left to right then top to "
            "bottom")
    return image, tuple(boxes), pixel_mm, grid


def _scaled_tiles(units: list[tuple[np.ndarray, float]],
                  tile_size: int | None) -> tuple[list[np.ndarray], float]:
    """uint8 tiles, each scaled so its longer side is `tile_size` (kept if None), and the
    pixel size in mm after scaling."""
    tiles, pixel_mm = [], 0.0
    for unit, pixel_mm in units:
        if tile_size:
            scale = tile_size / max(unit.shape)
            unit = _resize(unit, (max(1, round(unit.shape[0] * scale)),
                                  max(1, round(unit.shape[1] * scale))))
            pixel_mm /= scale
        tiles.append(to_uint8(unit))
    return tiles, pixel_mm


def windowed_volume(volume: Volume, window: WindowLike = None) -> np.ndarray:
    """The whole volume through a window: float32 (z, y, x) in [0, 1], as a model input.

    Windowed slice by slice: the same numbers as one call on the whole array, without a
    float64 copy of the volume (8 bytes per voxel) in memory at once.
    """
    win = _window(volume, window)
    out = np.empty(volume.values.shape, np.float32)
    for k, values in enumerate(volume.values):
        out[k] = apply_window(values, *win)
    return out


# --- helpers ------------------------------------------------------------------------------------
def _window(volume: Volume, window: WindowLike) -> Window:
    """The requested window; else the one in the DICOM tags; else the values' full range."""
    if window is not None:
        return resolve_window(window)
    if volume.window is not None:
        return resolve_window(volume.window)
    low, high = float(volume.values.min()), float(volume.values.max())
    return resolve_window(((low + high) / 2, max(high - low, 1.0)))


def _axis_directions(volume: Volume) -> np.ndarray:
    """(3, 3): patient direction (x, y, z) of volume axes k, j, i."""
    orientation = np.asarray(volume.orientation)
    return np.stack([np.asarray(volume.normal), orientation[3:], orientation[:3]])


def _display_slice(volume: Volume, values: np.ndarray, plane: str,
                   win: Window) -> tuple[np.ndarray, float]:
    """One stored slice (or a slab's projection) of `volume` windowed and shown upright."""
    return _to_display(apply_window(values, *win), [1, 2], plane, volume)


def _to_display(unit: np.ndarray, axes: Sequence[int], plane: str,
                volume: Volume) -> tuple[np.ndarray, float]:
    """Orient a 2-D image over volume `axes` for reading in `plane`; square pixels.

    Returns the [0, 1] image and its pixel size in mm.
    """
    directions = _axis_directions(volume)
    (down, down_sign), (right, right_sign) = _DISPLAY[plane]
    vertical = max(axes, key=lambda a: abs(directions[a, down]))
    horizontal = next(a for a in axes if a != vertical)
    if list(axes).index(vertical) == 1:
        unit = unit.T
    if np.sign(directions[vertical, down]) != down_sign:
        unit = unit[::-1]
    if np.sign(directions[horizontal, right]) != right_sign:
        unit = unit[:, ::-1]
    sizes = (volume.spacing[vertical], volume.spacing[horizontal])
    pixel = min(sizes)
    shape = (max(1, round(unit.shape[0] * sizes[0] / pixel)),
             max(1, round(unit.shape[1] * sizes[1] / pixel)))
    if shape != unit.shape:
        unit = _resize(unit, shape)
    return np.ascontiguousarray(unit, dtype=np.float32), float(pixel)


def _resize(unit: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float image to (rows, cols), values kept in [0, 1]."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(unit, dtype=np.float32))
    resized = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _numbers(volume: Volume, indices: Sequence[int]) -> str:
    """'5, 13, 21 of 24 (at 10.0, 30.0, 50.0 mm)': 1-based like a viewer's slice counter."""
    numbers = ", ".join(str(k + 1) for k in indices)
    positions = ", ".join(f"{volume.positions[k]:.1f}" for k in indices)
    return f"{numbers} of {volume.shape[0]} (at {positions} mm)"


def _win_text(win: Window) -> str:
    return f"center {win.center:g} / width {win.width:g}"
