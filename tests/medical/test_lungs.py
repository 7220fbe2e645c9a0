"""The lung mask from HU alone, and slab MIPs through it that nothing can hide a nodule in."""

from __future__ import annotations

import numpy as np
import pytest

from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series
from domainvlm.medical.lungs import LUNG_HU, fill_holes, lung_mask, lungs_only
from domainvlm.medical.phantom import LESION_HU, lesion_fraction, make_patient
from domainvlm.medical.series import load_volume
from domainvlm.medical.views import pick_slabs, slab_montage
from domainvlm.medical.vqa import ViewSpec, render_views

SHAPE = (32, 128, 128)


def test_fill_holes_fills_what_the_border_cannot_reach():
    mask = np.zeros((1, 7, 7), bool)
    mask[0, 1:6, 1:6] = True
    mask[0, 2:5, 2:5] = False  # a ring around a 3x3 hole
    mask[0, 3, 5] = False  # ... then a channel from the hole to the ring's edge: not a hole
    open_ring = mask.copy()
    mask[0, 3, 5] = True
    filled = np.zeros((1, 7, 7), bool)
    filled[0, 1:6, 1:6] = True
    assert np.array_equal(fill_holes(mask), filled)
    assert np.array_equal(fill_holes(open_ring), open_ring)


@pytest.mark.parametrize("index", range(6))
def test_the_mask_holds_the_lung_nodules_and_no_other_tissue(index):
    hu, truth = make_patient(np.random.default_rng([7, index, 0]), SHAPE, n_lesions=3)
    mask = lung_mask(hu)
    nodules = np.zeros(SHAPE, bool)
    for lesion in truth.lesions:
        centre = tuple(int(round(v)) for v in lesion.centre_voxel)
        assert mask[centre] == (lesion.organ == "lung"), lesion
        if lesion.organ == "lung":
            nodules |= lesion_fraction(lesion, SHAPE, truth.spacing, truth.origin) > 0
    assert not (mask & (hu > LUNG_HU) & ~nodules).any()  # no wall, liver, heart or bone
    assert not mask[:, 0, :].any() and not mask[:, :, 0].any()  # nor the air around the body
    assert 0.03 < mask.mean() < 0.2


def hidden_nodule() -> tuple[np.ndarray, tuple[int, int], tuple[int, ...]]:
    """A phantom whose first lung nodule a 4-slab MIP hides: its slab has tissue at least as
    dense as the nodule in the nodule's column. Returns HU, the column (y, x) and the slab."""
    for index in range(200):
        rng = [0, index, 0]
        hu, truth = make_patient(np.random.default_rng(rng), SHAPE)
        empty, _ = make_patient(np.random.default_rng(rng), SHAPE, n_lesions=0)
        for lesion in (le for le in truth.lesions if le.organ == "lung"):
            z, y, x = (int(round(v)) for v in lesion.centre_voxel)
            slab = next(s for s in pick_slabs(SHAPE[0], 4) if z in s)
            if empty[slab[0]:slab[-1] + 1, y, x].max() >= LESION_HU["lung"]:
                return hu, (y, x), slab
    raise AssertionError("no hidden nodule in 200 phantoms")


def contrast(mip: np.ndarray, y: int, x: int) -> float:
    """The pixel at (y, x) against the median of the ring 3 to 8 pixels around it."""
    ring = mip[y - 8:y + 9, x - 8:x + 9].astype(float)
    ring[5:12, 5:12] = np.nan
    return float(mip[y, x] - np.nanmedian(ring))


def test_through_the_lungs_a_slab_mip_shows_the_nodule_it_hid(tmp_path):
    hu, (y, x), slab = hidden_nodule()
    write_ct_series(hu, tmp_path, SeriesSpec(study_uid="2.25.1", series_uid="2.25.1.1"))
    volume = load_volume(tmp_path)
    plain = volume.values[slab[0]:slab[-1] + 1].max(axis=0)
    seen = lungs_only(volume).values[slab[0]:slab[-1] + 1].max(axis=0)
    around = seen[y - 12:y + 13, x - 12:x + 13]
    assert contrast(seen, y, x) > contrast(plain, y, x) + 500  # it stands out only through
    assert seen[y, x] > LUNG_HU  # through the lungs: the nodule ...
    assert np.median(around[around > -1000]) < -700  # ... on lung
    assert (seen[plain > 0] == -1000).mean() > 0.5  # the wall and liver are gone


def test_lung_only_is_the_red_of_a_composite_and_the_rest_is_untouched(tmp_path):
    hu, _ = make_patient(np.random.default_rng([3, 1, 0]), SHAPE, n_lesions=2)
    write_ct_series(hu, tmp_path, SeriesSpec(study_uid="2.25.2", series_uid="2.25.2.1"))
    volume = load_volume(tmp_path)
    spec = ViewSpec(strategy="slabs", count=4, window="lung-only+liver+mediastinum")
    [view] = render_views(volume, spec)
    [red] = render_views(lungs_only(volume), ViewSpec(strategy="slabs", count=4, window="lung"))
    [green] = render_views(volume, ViewSpec(strategy="slabs", count=4, window="liver"))
    [plain] = render_views(volume, ViewSpec(strategy="slabs", count=4, window="lung"))
    assert np.array_equal(view.image[..., 0], red.image)
    assert np.array_equal(view.image[..., 1], green.image)
    assert not np.array_equal(red.image, plain.image)
    assert "RGB = lung-only, liver, mediastinum windows" in view.description


def test_the_sides_layout_cuts_the_lungs_where_it_cuts_the_body(tmp_path):
    hu, _ = make_patient(np.random.default_rng([3, 2, 0]), SHAPE, n_lesions=2)
    write_ct_series(hu, tmp_path, SeriesSpec(study_uid="2.25.3", series_uid="2.25.3.1"))
    volume = load_volume(tmp_path)
    sides = {"strategy": "slabs", "count": 4, "layout": "sides"}
    [view] = render_views(volume, ViewSpec(window="lung-only+liver+mediastinum", **sides))
    [green] = render_views(volume, ViewSpec(window="liver", **sides))
    [alone] = render_views(lungs_only(volume), ViewSpec(window="lung", **sides))
    assert view.tiles == green.tiles != alone.tiles  # alone, the lungs would frame themselves
    assert np.array_equal(view.image[..., 1], green.image)
    lung_wide = slab_montage(lungs_only(volume), 4, window="lung", layout="sides", body=volume)
    assert np.array_equal(view.image[..., 0], lung_wide.image)
