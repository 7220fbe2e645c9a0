"""The CT phantom: tissue values where anatomy should be, lesions where the truth says."""

from __future__ import annotations

import numpy as np
import pytest

from domainvlm.medical.phantom import (
    HU,
    LESION_HU,
    MAX_LESIONS,
    PatientTruth,
    default_spacing,
    lesion_fraction,
    make_patient,
    size_class,
)

WINDOWS = {"lung": (-600.0, 1500.0), "liver": (40.0, 400.0)}  # (centre, width) to read each


def voxel_at(truth: PatientTruth, x: float, y: float, k: int) -> tuple[int, int, int]:
    """(slice, row, column) of patient point (x, y) mm on slice k."""
    dz, dy, dx = truth.spacing
    return k, round((y - truth.origin[1]) / dy), round((x - truth.origin[0]) / dx)


def test_same_seed_same_patient_and_other_seed_differs():
    hu_a, truth_a = make_patient(5)
    hu_b, truth_b = make_patient(5)
    hu_c, truth_c = make_patient(6)
    assert np.array_equal(hu_a, hu_b) and truth_a == truth_b
    assert not np.array_equal(hu_a, hu_c)
    assert hu_a.dtype == np.float32 and hu_a.shape == (32, 64, 64)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("organ", "x", "y", "level"), [
    ("air", -150.0, -150.0, "top"),
    ("soft_tissue", 0.0, -60.0, "top"),  # anterior midline, between the lungs
    ("lung", -63.0, -5.0, "top"),  # patient's right lung: image left
    ("lung", 63.0, -5.0, "top"),  # patient's left lung: image right
    ("liver", -55.0, -10.0, "bottom"),  # liver on the patient's right = image left
    ("soft_tissue", 55.0, -10.0, "bottom"),  # and not on the left
    ("bone", 0.0, 75.0, "top"),  # spine: posterior (+y) midline
    ("bone", 0.0, 75.0, "bottom"),
])
def test_tissue_values_where_the_anatomy_is(seed, organ, x, y, level):
    hu, truth = make_patient(seed, n_lesions=0)
    k = truth.shape[0] - 3 if level == "top" else 2
    k, j, i = voxel_at(truth, x, y, k)
    patch = hu[k, j - 1:j + 2, i - 1:i + 2]
    assert abs(float(np.median(patch)) - HU[organ]) < 40, (organ, patch)


def test_radiological_convention_liver_is_on_image_left():
    hu, truth = make_patient(0, n_lesions=0)
    low = hu[: truth.organs["liver"][1] // 2]
    half = hu.shape[2] // 2
    smooth = sum(np.roll(low, (dj, di), axis=(1, 2)) for dj in (-1, 0, 1)
                 for di in (-1, 0, 1)) / 9  # noise down to ~3 HU: liver and muscle separate
    liver_like = (smooth > 52) & (smooth < 75)
    assert liver_like[..., :half].sum() > 5 * liver_like[..., half:].sum()


@pytest.mark.parametrize(("diameter", "expected"), [
    (6.0, "small"), (9.9, "small"), (10.0, "medium"), (15.0, "medium"), (20.0, "medium"),
    (20.1, "large"), (32.0, "large"),
])
def test_size_class_thresholds(diameter, expected):
    assert size_class(diameter) == expected


def test_lesion_counts_cover_zero_to_three_and_n_lesions_is_respected():
    counts = {len(make_patient(seed)[1].lesions) for seed in range(30)}
    assert counts == set(range(MAX_LESIONS + 1))
    for n in range(MAX_LESIONS + 1):
        assert len(make_patient(100 + n, n_lesions=n)[1].lesions) == n


def near_another(truth: PatientTruth, lesion, k: int, j: int, i: int) -> bool:
    """Whether voxel (k, j, i) lies within a voxel of some other lesion of the patient."""
    dz, dy, dx = truth.spacing
    point = np.array([truth.origin[0] + i * dx, truth.origin[1] + j * dy,
                      truth.origin[2] + k * dz])
    return any(np.linalg.norm(point - np.array(other.centre_mm))
               < other.diameter_mm / 2 + max(dz, dy, dx)
               for other in truth.lesions if other is not lesion)


def lesions_of_many_patients():
    for seed in range(25):
        hu, truth = make_patient(seed, n_lesions=3)
        for lesion in truth.lesions:
            yield hu, truth, lesion


def test_every_lesion_sits_in_its_organ_on_its_side_and_shows_on_its_window():
    seen = set()
    for hu, truth, lesion in lesions_of_many_patients():
        k, j, i = lesion.centre_voxel
        nz, ny, nx = truth.shape
        x, y, z = lesion.centre_mm
        assert lesion.size_class == size_class(lesion.diameter_mm)
        assert lesion.hu == LESION_HU[lesion.organ]
        assert (x > 0) == (lesion.side == "left") == (i > (nx - 1) / 2)
        assert lesion.organ == "lung" or lesion.side == "right"
        assert abs(x) >= lesion.diameter_mm / 2  # wholly on one side of the midline
        dz, dy, dx = truth.spacing
        assert z == pytest.approx(truth.origin[2] + k * dz)
        assert x == pytest.approx(truth.origin[0] + i * dx)
        first, last = lesion.slice_range
        assert 0 <= first <= k <= last < nz
        # the surroundings, just outside the sphere, are the organ's tissue
        ring = int(np.ceil(lesion.diameter_mm / 2 / dx)) + 1
        around = [hu[k, j + dj, i + di] for dj, di in ((-ring, 0), (ring, 0), (0, -ring),
                                                      (0, ring), (-ring, -ring), (ring, ring))
                  if not near_another(truth, lesion, k, j + dj, i + di)]
        background = HU["lung"] if lesion.organ == "lung" else HU["liver"]
        assert abs(float(np.median(around)) - background) < 60, lesion
        # and the lesion stands out on the window used to read that organ
        _, width = WINDOWS[lesion.organ]
        assert (float(hu[k, j, i]) - background) / width > 0.15, lesion
        seen.add((lesion.organ, lesion.side, lesion.size_class))
    assert {("lung", "left"), ("lung", "right"), ("liver", "right")} <= {s[:2] for s in seen}
    assert {s[2] for s in seen} == {"small", "medium", "large"}


def test_slice_range_is_where_the_lesion_covers_its_centre_voxel():
    for hu, truth, lesion in lesions_of_many_patients():
        k0, j, i = lesion.centre_voxel
        fraction = lesion_fraction(lesion, truth.shape, truth.spacing, truth.origin)
        assert fraction[k0, j, i] == fraction.max() >= 0.5
        covered = np.flatnonzero(fraction[:, j, i] >= fraction.max() / 2)
        assert lesion.slice_range == (covered[0], covered[-1])
        background = HU["lung"] if lesion.organ == "lung" else HU["liver"]
        contrast = lesion.hu - background
        dz = truth.spacing[0]
        for k in range(truth.shape[0]):
            if abs(k - k0) * dz > lesion.diameter_mm / 2 + 4.0 or near_another(truth, lesion,
                                                                                k, j, i):
                continue  # beyond the organ margin the lesion promises
            expected = background + fraction[k, j, i] * contrast
            assert abs(float(hu[k, j, i]) - expected) < 45, (lesion, k)


@pytest.mark.parametrize("shape", [(48, 128, 128), (40, 96, 80)])
def test_lesion_sizes_are_in_millimetres_on_any_grid(shape):
    hu, truth = make_patient(7, shape=shape, n_lesions=3)
    assert hu.shape == shape and truth.spacing == default_spacing(shape)
    dz, dy, dx = truth.spacing
    measured = 0
    for lesion in truth.lesions:
        if lesion.diameter_mm < 2.5 * max(dy, dx, dz):
            continue  # too few voxels to measure
        k, j, i = lesion.centre_voxel
        background = HU["lung"] if lesion.organ == "lung" else HU["liver"]
        level = (background + lesion.hu) / 2
        r = int(lesion.diameter_mm / dx) + 2
        patch = hu[k, j - r:j + r + 1, i - r:i + r + 1]
        inside = (patch > level) if lesion.hu > background else (patch < level)
        area_mm2 = inside.sum() * dy * dx
        equivalent = 2 * np.sqrt(area_mm2 / np.pi)
        assert equivalent == pytest.approx(lesion.diameter_mm, rel=0.3), lesion
        measured += 1
    assert measured >= 1


def test_truth_round_trips_through_json():
    import json

    _, truth = make_patient(4, n_lesions=3)
    again = PatientTruth.from_json(json.loads(json.dumps(truth.to_json())))
    assert again == truth


@pytest.mark.parametrize(("shape", "message"), [
    ((32, 64), "shape must be"),
    ((2, 64, 64), "shape must be"),
])
def test_bad_shapes_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        make_patient(0, shape=shape)


def test_a_volume_too_small_for_a_lesion_says_so():
    with pytest.raises(ValueError, match="cannot fit"):
        make_patient(0, shape=(4, 64, 64), spacing=(1.0, 5.0, 5.0), n_lesions=3)


@pytest.mark.parametrize("seed", range(6))
def test_a_coarse_grid_still_gives_every_lesion_its_slices(seed):
    hu, truth = make_patient(seed, shape=(8, 32, 32), n_lesions=3)
    for lesion in truth.lesions:
        first, last = lesion.slice_range
        assert first <= lesion.centre_voxel[0] <= last
