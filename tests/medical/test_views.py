"""Volume to VLM images: the right pixels, read the radiologist's way, traceable to their slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series
from domainvlm.medical.render import PRESETS, Window, apply_window, to_uint8
from domainvlm.medical.series import Volume, load_volume
from domainvlm.medical.views import (
    acquisition_plane,
    even_slices,
    mip,
    montage,
    pick_slabs,
    pick_slices,
    slab_montage,
    windowed_volume,
)

SOFT = Window(40.0, 400.0)
NZ, NY, NX = 10, 12, 14  # unequal, so a swapped axis changes the shape


def patient(seed: int = 0) -> np.ndarray:
    """HU on a 1 mm patient grid H[z, y, x] (LPS), every voxel distinct enough to trace."""
    return np.random.default_rng(seed).integers(-200, 300, (NZ, NY, NX)).astype(np.float32)


# The same patient acquired four ways; `stored` maps H to what each scanner writes (k, j, i).
# Voxel (k, j, i) lies at origin + i*row + j*col + k*normal, with 1 mm everywhere.
ACQUISITIONS = {
    "axial": ((1, 0, 0, 0, 1, 0), (0, 0, 0), lambda h: h),
    "axial, rotated 180": ((-1, 0, 0, 0, -1, 0), (NX - 1, NY - 1, 0),
                           lambda h: h[:, ::-1, ::-1]),
    "sagittal": ((0, 1, 0, 0, 0, -1), (NX - 1, 0, NZ - 1),
                 lambda h: np.transpose(h, (2, 0, 1))[::-1, ::-1, :]),
    "coronal": ((1, 0, 0, 0, 0, -1), (0, 0, NZ - 1),
                lambda h: np.transpose(h, (1, 0, 2))[:, ::-1, :]),
}


def write(folder: Path, hu: np.ndarray, **spec) -> Volume:
    write_ct_series(hu, folder, SeriesSpec(study_uid="2.25.9", series_uid="2.25.9.1", **spec))
    return load_volume(folder)


@pytest.fixture(scope="module")
def acquired(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Volume]:
    h = patient()
    root = tmp_path_factory.mktemp("acquisitions")
    return {name: write(root / name.replace(" ", "_").replace(",", ""), stored(h),
                        orientation=tuple(float(v) for v in orientation),
                        origin=tuple(float(v) for v in origin), spacing=(1.0, 1.0, 1.0))
            for name, (orientation, origin, stored) in ACQUISITIONS.items()}


def shown(values: np.ndarray, window: Window = SOFT) -> np.ndarray:
    return to_uint8(apply_window(values, *window))


@pytest.mark.parametrize(("count", "n", "expected"), [
    (24, 3, [4, 12, 20]),
    (10, 1, [5]),
    (10, 4, [1, 3, 6, 8]),
    (5, 5, [0, 1, 2, 3, 4]),
    (5, 9, [0, 1, 2, 3, 4]),  # asking for more gives every slice once
])
def test_pick_slices_spreads_evenly(count: int, n: int, expected: list[int]) -> None:
    assert pick_slices(count, n) == expected


@pytest.mark.parametrize(("count", "n"), [(0, 3), (5, 0)])
def test_pick_slices_refuses_nothing(count: int, n: int) -> None:
    with pytest.raises(ValueError, match="at least one slice"):
        pick_slices(count, n)


def test_acquisition_plane_follows_the_normal(acquired: dict[str, Volume]) -> None:
    planes = {name: acquisition_plane(v) for name, v in acquired.items()}
    assert planes == {"axial": "axial", "axial, rotated 180": "axial",
                      "sagittal": "sagittal", "coronal": "coronal"}


# What a radiologist sees of H: axial anterior up and patient right on the left; coronal and
# sagittal head up (z flipped), patient right / anterior on the left.
EXPECTED_MIP = {
    "axial": lambda h: h.max(axis=0),
    "coronal": lambda h: h.max(axis=1)[::-1],
    "sagittal": lambda h: h.max(axis=2)[::-1],
}


@pytest.mark.parametrize("acquisition", list(ACQUISITIONS))
@pytest.mark.parametrize("plane", list(EXPECTED_MIP))
def test_mip_shows_the_patient_the_same_whatever_the_acquisition(
        acquired: dict[str, Volume], acquisition: str, plane: str) -> None:
    volume = acquired[acquisition]
    view = mip(volume, plane, SOFT)
    assert view.image.dtype == np.uint8
    assert np.array_equal(view.image, shown(EXPECTED_MIP[plane](patient())))
    assert view.plane == plane and view.window == SOFT and view.pixel_mm == 1.0
    assert view.slice_indices == tuple(range(volume.shape[0]))
    assert view.sop_instance_uids == volume.sop_instance_uids and view.tiles == ()
    assert view.slices_at(0, 0) == ()
    assert view.description.startswith(f"{plane} maximum-intensity projection")


def test_even_slices_of_a_rotated_acquisition_are_shown_upright(
        acquired: dict[str, Volume]) -> None:
    h = patient()
    for name in ("axial", "axial, rotated 180"):
        views = even_slices(acquired[name], 3, "soft_tissue")
        assert [v.slice_indices for v in views] == [(1,), (5,), (8,)]
        for view in views:
            assert np.array_equal(view.image, shown(h[view.slice_indices[0]]))


def test_even_slices_point_back_to_their_dicom(acquired: dict[str, Volume]) -> None:
    volume = acquired["axial"]
    views = even_slices(volume, 3, "lung")
    assert [v.slice_indices for v in views] == [(1,), (5,), (8,)]
    for view in views:
        (k,) = view.slice_indices
        assert view.sop_instance_uids == (volume.sop_instance_uids[k],)
        assert view.frame_numbers == (None,) and view.window == PRESETS["lung"]
        assert view.tiles == ((0, 0, NX, NY),) and view.slices_at(3, 3) == (k,)
        assert view.image.shape == (NY, NX)
    assert views[1].description == ("axial slice 6 of 10 (at 5.0 mm), window center -600 / "
                                    "width 1500")
    assert views[0].to_pil().size == (NX, NY)


def test_window_defaults_to_the_tags(acquired: dict[str, Volume]) -> None:
    volume = acquired["axial"]
    assert mip(volume, "axial").window == volume.window == SOFT
    bare = Volume(**{**volume.__dict__, "window": None})
    full = mip(bare, "axial")  # no tags: the values' full range
    low, high = float(volume.values.min()), float(volume.values.max())
    assert full.window == Window((low + high) / 2, high - low)


def test_mip_resamples_to_square_millimetres(tmp_path: Path) -> None:
    """Pixels take the finer of the two spacings shown, the coarser axis is stretched."""
    hu = np.full((6, 16, 8), -1000.0, np.float32)  # 24 mm tall (z), 16 mm deep (y), 16 wide
    hu[2, 4, 3] = 500.0  # one bright voxel: where it lands checks scaling and flips
    volume = write(tmp_path / "s", hu, spacing=(4.0, 1.0, 2.0))
    # plane: (image shape, mm per pixel, rows and columns where the bright voxel must show)
    expected = {"axial": ((16, 16), 1.0, range(4, 5), range(6, 8)),
                "coronal": ((12, 8), 2.0, range(6, 8), range(3, 4)),
                "sagittal": ((24, 16), 1.0, range(12, 16), range(4, 5))}
    for plane, (shape, pixel_mm, rows, cols) in expected.items():
        view = mip(volume, plane, SOFT)
        assert view.image.shape == shape and view.pixel_mm == pixel_mm, plane
        bright = np.argwhere(view.image == view.image.max())
        assert {int(r) for r in bright[:, 0]} <= set(rows), (plane, bright)
        assert {int(c) for c in bright[:, 1]} <= set(cols), (plane, bright)


def test_montage_tiles_left_to_right_and_maps_back(acquired: dict[str, Volume]) -> None:
    volume = acquired["axial"]
    view = montage(volume, 5, columns=3, window=SOFT, gap=2)
    assert view.slice_indices == (1, 3, 5, 7, 9)
    assert view.image.shape == (2 * NY + 2, 3 * NX + 2 * 2)
    singles = {v.slice_indices[0]: v.image for v in even_slices(volume, 5, SOFT)}
    for k, (x0, y0, x1, y1) in zip(view.slice_indices, view.tiles, strict=True):
        assert np.array_equal(view.image[y0:y1, x0:x1], singles[k])
        assert view.slices_at(x0, y0) == (k,) and view.slices_at(x1 - 1, y1 - 1) == (k,)
    assert view.tiles[3] == (0, NY + 2, NX, 2 * NY + 2)  # second row starts at the left
    assert view.slices_at(NX, 0) == ()  # the gap
    assert np.all(view.image[NY + 2:, 2 * (NX + 2):] == 128)  # the empty sixth cell
    assert view.sop_instance_uids == tuple(volume.sop_instance_uids[k] for k in (1, 3, 5, 7, 9))
    assert "in 2 rows of 3" in view.description and "2, 4, 6, 8, 10 of 10" in view.description


def test_montage_tile_size_and_default_grid(acquired: dict[str, Volume]) -> None:
    view = montage(acquired["axial"], 4, tile_size=7, window=SOFT, gap=0)
    assert view.image.shape == (2 * 6, 2 * 7)  # 12 x 14 tiles scaled to 6 x 7, 2 x 2 grid
    assert view.pixel_mm == pytest.approx(2.0)


@pytest.mark.parametrize(("count", "n", "expected"), [
    (10, 4, [(0, 1), (2, 3, 4), (5, 6), (7, 8, 9)]),
    (16, 4, [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15)]),
    (3, 5, [(0,), (1,), (2,)]),  # more slabs than slices: one slice each
])
def test_pick_slabs_covers_every_slice_once(count: int, n: int,
                                            expected: list[tuple[int, ...]]) -> None:
    assert pick_slabs(count, n) == expected


def test_slab_montage_shows_each_slab_mip_and_maps_back(acquired: dict[str, Volume]) -> None:
    """Every slice lands in one tile at its brightest: the same picture whatever the
    acquisition direction of an axial stack."""
    h = patient()
    for name in ("axial", "axial, rotated 180"):
        view = slab_montage(acquired[name], 4, window=SOFT, gap=2)
        assert view.tile_slices == ((0, 1), (2, 3, 4), (5, 6), (7, 8, 9))
        assert view.slice_indices == tuple(range(NZ)) and view.image.shape == (2 * NY + 2,
                                                                              2 * NX + 2)
        for slab, (x0, y0, x1, y1) in zip(view.tile_slices, view.tiles, strict=True):
            expected = shown(h[slab[0]:slab[-1] + 1].max(axis=0))
            assert np.array_equal(view.image[y0:y1, x0:x1], expected), (name, slab)
            assert view.slices_at(x1 - 1, y1 - 1) == slab
        assert view.slices_at(NX, 0) == ()  # the gap
    assert "montage of 4 axial slab maximum-intensity projections (slices 1-2, 3-5, 6-7, " \
        "8-10 of 10" in view.description


def test_slab_montage_finds_what_a_slice_montage_skips(tmp_path: Path) -> None:
    """A nodule on one slice between the slices a 4-slice montage picks shows in the slabs."""
    hu = np.full((12, 16, 16), -850.0, np.float32)
    hu[4, 8, 8] = 30.0  # on slice 4, which the montage shows (it picks 1, 4, 7, 10)
    hu[5, 3, 3] = 30.0  # on slice 5, which it skips
    volume = write(tmp_path / "lungs", hu)
    lung = PRESETS["lung"]
    shown_slices = montage(volume, 4, window=lung)
    assert 5 not in shown_slices.slice_indices
    slabs = slab_montage(volume, 4, window=lung)
    bright = shown(np.float32(30.0), lung)
    assert int((slabs.image == bright).sum()) == 2
    assert int((shown_slices.image == bright).sum()) == 1


def sided_patient() -> np.ndarray:
    """Air around a body off the image centre (columns 2-21 of 30), a marker on the patient's
    right (image left) on slice 1 and one on the patient's left on slice 6."""
    hu = np.full((8, 20, 30), -1000.0, np.float32)
    hu[:, 3:17, 2:22] = 40.0
    hu[1, 8, 5] = 300.0
    hu[6, 10, 18] = 300.0
    return hu


@pytest.mark.parametrize("acquisition", ["axial", "axial, rotated 180"])
def test_sides_layout_puts_each_side_of_the_patient_in_its_half(tmp_path: Path,
                                                                acquisition: str) -> None:
    """Cut at the body's midline (not the image centre): the patient's right halves of the
    slabs on the image's left, the left halves on its right, on a square, mapped back."""
    h = sided_patient()
    if acquisition == "axial":
        volume = write(tmp_path / "v", h)
    else:
        volume = write(tmp_path / "v", h[:, ::-1, ::-1], orientation=(-1.0, 0, 0, 0, -1.0, 0),
                       origin=(29.0, 19.0, 0.0))
    view = slab_montage(volume, 2, window=SOFT, gap=2, layout="sides")
    slabs = ((0, 1, 2, 3), (4, 5, 6, 7))
    assert view.tile_slices == slabs + slabs
    assert view.image.shape == (30, 30)  # 2 rows of 14 + gap; padded from 2 x 10 + 4 wide
    midline = 12  # body columns 2-21
    for index, (x0, y0, x1, y1) in enumerate(view.tiles):
        side, slab = divmod(index, 2)
        projection = shown(h[slabs[slab][0]:slabs[slab][-1] + 1].max(axis=0))
        columns = slice(2, midline) if side == 0 else slice(midline, 22)
        assert np.array_equal(view.image[y0:y1, x0:x1], projection[3:17, columns])
        assert (x1 <= 15) == (side == 0), view.tiles  # left halves in the left of the image
    marker = shown(np.float32(300.0))
    markers = np.argwhere(view.image == marker)
    assert len(markers) == 2
    (ya, xa), (yb, xb) = sorted(markers.tolist(), key=lambda p: p[1])
    assert xa < 15 <= xb  # patient's right shows on the image's left, and the left on its right
    assert view.slices_at(xa, ya) == slabs[0] and view.slices_at(xb, yb) == slabs[1]
    assert "cut at the body's midline" in view.description


def test_sides_layout_of_a_slice_montage(tmp_path: Path) -> None:
    view = montage(write(tmp_path / "v", sided_patient()), 3, window=SOFT, layout="sides")
    assert view.tile_slices == ((1,), (4,), (6,)) * 2
    assert view.image.shape[0] == view.image.shape[1]


def test_unknown_layout_is_refused(acquired: dict[str, Volume]) -> None:
    with pytest.raises(ValueError, match="grid, sides"):
        slab_montage(acquired["axial"], 2, window=SOFT, layout="mirror")


def test_windowed_volume_matches_one_window_call(acquired: dict[str, Volume]) -> None:
    volume = acquired["sagittal"]
    unit = windowed_volume(volume, "bone")
    assert unit.dtype == np.float32 and unit.shape == volume.shape
    assert np.array_equal(unit, apply_window(volume.values, *PRESETS["bone"]))


def test_unknown_plane_is_refused(acquired: dict[str, Volume]) -> None:
    with pytest.raises(ValueError, match="axial, coronal, sagittal"):
        mip(acquired["axial"], "oblique", SOFT)
