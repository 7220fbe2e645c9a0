"""Series to volume: order from geometry (never InstanceNumber), and every broken stack named."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from domainvlm.medical.ct_writer import SeriesSpec, slice_normal, write_ct_series
from domainvlm.medical.errors import DicomError, SeriesGeometryError
from domainvlm.medical.io import iter_dicom
from domainvlm.medical.render import Window
from domainvlm.medical.series import group_series, load_volume

STUDY = "2.25.1001"
SERIES = "2.25.1001.7"
PHI = {"PatientName": "Doe^Jane", "PatientID": "PID-4711"}  # must never reach a message
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
COS30, SIN30 = float(np.cos(np.pi / 6)), float(np.sin(np.pi / 6))
# Rotated 30 degrees about z, then tilted: an oblique stack whose normal is no axis.
OBLIQUE = (COS30, SIN30, 0.0, -SIN30 * 0.8, COS30 * 0.8, 0.6)


def volume_hu(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Whole-HU noise: every slice differs from every other, so order errors cannot hide."""
    return np.random.default_rng(seed).integers(-1000, 2000, shape).astype(np.float32)


def spec(**changes) -> SeriesSpec:
    fields = {"study_uid": STUDY, "series_uid": SERIES, "attributes": PHI, **changes}
    return SeriesSpec(**fields)


def shuffle_names(paths: list[Path], folder: Path, seed: int = 0) -> None:
    """Move the files into `folder` under names whose sorted order is random."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(paths))
    for path, rank in zip(paths, order, strict=True):
        shutil.move(str(path), folder / f"x{rank * 37 % 1009:04d}.dcm")


def edit(path: Path, **tags) -> None:
    """Change or (value None) delete tags of a written slice."""
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def sop_uids(paths: list[Path]) -> tuple[str, ...]:
    return tuple(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths)


# --- stacks that load -------------------------------------------------------------------------
CASES = {
    "in order": dict(n=10),
    "instance numbers reversed": dict(n=10, numbers="reversed"),
    "instance numbers random, names shuffled": dict(n=16, numbers="random", shuffle=True),
    "oblique, numbers random, names shuffled": dict(n=12, numbers="random", shuffle=True,
                                                    orientation=OBLIQUE),
    "normal towards the feet": dict(n=8, orientation=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
                                    shuffle=True),
    "sagittal acquisition": dict(n=8, orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
                                 numbers="random"),
    "anisotropic spacing": dict(n=9, spacing=(5.0, 0.7, 0.8), numbers="reversed"),
    "zip archive, shuffled": dict(n=8, numbers="random", shuffle=True, archive=True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_slices_stack_in_geometric_order(tmp_path: Path, case: dict) -> None:
    n = case["n"]
    hu = volume_hu((n, 32, 24), seed=n)
    rng = np.random.default_rng(1)
    numbers = {None: None, "reversed": list(range(n, 0, -1)),
               "random": [int(v) for v in rng.permutation(n) + 1]}[case.get("numbers")]
    orientation = case.get("orientation", AXIAL)
    spacing = case.get("spacing", (2.5, 1.0, 1.0))
    origin = (-12.0, 30.5, -101.25)
    paths = write_ct_series(hu, tmp_path / "written", spec(
        orientation=orientation, spacing=spacing, origin=origin, instance_numbers=numbers))
    expected_uids = sop_uids(paths)
    source: Path = tmp_path / "written"
    if case.get("shuffle"):
        source = tmp_path / "shuffled"
        shuffle_names(paths, source)
    if case.get("archive"):
        archive = tmp_path / "series.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for file in sorted(source.iterdir(), reverse=True):
                zf.write(file, file.name)
        source = archive

    volume = load_volume(source)

    assert volume.values.dtype == np.float32 and volume.shape == hu.shape
    assert np.array_equal(volume.values, hu)  # exact: Modality LUT applied, order right
    assert volume.sop_instance_uids == expected_uids
    assert volume.spacing == pytest.approx(spacing, abs=1e-3)
    assert volume.origin == pytest.approx(origin, abs=1e-3)
    assert volume.orientation == pytest.approx(orientation, abs=1e-6)
    normal = slice_normal(orientation)
    assert volume.normal == pytest.approx(tuple(normal), abs=1e-6)
    first = float(np.dot(origin, normal))
    assert volume.positions == pytest.approx([first + k * spacing[0] for k in range(n)],
                                             abs=1e-3)
    assert (volume.study_uid, volume.series_uid, volume.modality) == (STUDY, SERIES, "CT")
    assert volume.window == Window(40.0, 400.0)
    assert volume.frame_numbers == (None,) * n and volume.warnings == ()
    # The affine puts the last voxel where the writer put it.
    far = volume.affine @ np.array([n - 1, 31, 23, 1.0])
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    written = (np.asarray(origin) + (n - 1) * spacing[0] * normal + 31 * spacing[1] * col
               + 23 * spacing[2] * row)
    assert far[:3] == pytest.approx(written, abs=1e-3)


def test_sources_and_paths_load_the_same(tmp_path: Path) -> None:
    hu = volume_hu((6, 16, 16))
    write_ct_series(hu, tmp_path / "s", spec(instance_numbers=[4, 2, 6, 1, 3, 5]))
    from_path = load_volume(tmp_path / "s")
    from_sources = load_volume(list(iter_dicom(tmp_path / "s"))[::-1], name="my series")
    assert np.array_equal(from_path.values, from_sources.values)
    assert from_path.sop_instance_uids == from_sources.sop_instance_uids
    assert from_path.name == str(tmp_path / "s") and from_sources.name == "my series"


def test_single_slice_uses_the_nominal_thickness(tmp_path: Path) -> None:
    hu = volume_hu((1, 16, 16))
    write_ct_series(hu, tmp_path / "s", spec(spacing=(3.0, 0.5, 0.5)))
    volume = load_volume(tmp_path / "s")
    assert volume.shape == (1, 16, 16) and np.array_equal(volume.values, hu)
    assert volume.spacing == (3.0, 0.5, 0.5)
    assert "single slice" in volume.warnings[0]


def test_rescale_differs_per_slice(tmp_path: Path) -> None:
    """Each slice's own Modality LUT: one slice stored with another intercept still reads HU."""
    hu = volume_hu((5, 16, 16))
    paths = write_ct_series(hu, tmp_path / "s", spec())
    ds = pydicom.dcmread(paths[2])
    stored = ds.pixel_array.astype(np.int32) - 1024 + 2000  # same HU, intercept -2000
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.RescaleIntercept = -2000
    ds.save_as(paths[2])
    assert np.array_equal(load_volume(tmp_path / "s").values, hu)


def test_enhanced_multiframe_object_loads_as_a_volume(tmp_path: Path) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    hu = volume_hu((7, 16, 20))
    paths = write_ct_series(hu, tmp_path / "s", spec(spacing=(2.0, 0.8, 0.9),
                                                     instance_numbers=[7, 1, 6, 2, 5, 3, 4]))
    legacy = [pydicom.dcmread(p) for p in paths[::-1]]
    enhanced = LegacyConvertedEnhancedCTImage(legacy, series_instance_uid="2.25.1001.8",
                                              series_number=2, sop_instance_uid="2.25.1001.8.1",
                                              instance_number=1)
    enhanced.save_as(tmp_path / "enhanced.dcm")

    volume = load_volume(tmp_path / "enhanced.dcm")
    assert np.array_equal(volume.values, hu)
    assert volume.spacing == pytest.approx((2.0, 0.8, 0.9))
    assert volume.positions == pytest.approx([2.0 * k for k in range(7)])
    assert volume.sop_instance_uids == ("2.25.1001.8.1",) * 7
    frames = [pydicom.dcmread(tmp_path / "enhanced.dcm").PerFrameFunctionalGroupsSequence[f - 1]
              .PlanePositionSequence[0].ImagePositionPatient[2] for f in volume.frame_numbers]
    assert [float(z) for z in frames] == pytest.approx(volume.positions)
    assert volume.window == Window(40.0, 400.0)


# --- stacks that do not -----------------------------------------------------------------------
def build_gap(folder: Path, hu: np.ndarray) -> None:
    paths = write_ct_series(hu, folder, spec())
    for k in (5, 6):
        paths[k].unlink()


def build_uneven(folder: Path, hu: np.ndarray) -> None:
    paths = write_ct_series(hu, folder, spec())
    edit(paths[6], ImagePositionPatient=[0.0, 0.0, 16.0])  # 15.0 on the grid


def build_copy(folder: Path, hu: np.ndarray) -> None:
    paths = write_ct_series(hu, folder, spec())
    shutil.copy(paths[3], folder / "0003 copy.dcm")


def build_two_phases(folder: Path, hu: np.ndarray) -> None:
    write_ct_series(hu, folder / "arterial", spec())
    write_ct_series(hu + 50, folder / "venous", spec())


def build_localizer(folder: Path, hu: np.ndarray) -> None:
    write_ct_series(hu, folder / "axial", spec())
    write_ct_series(hu[:3], folder / "scout", spec(orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
                                                   origin=(0.0, 40.0, 0.0)))


def build_matrix(folder: Path, hu: np.ndarray) -> None:
    write_ct_series(hu, folder / "a", spec())
    write_ct_series(hu[:2, :8, :8], folder / "b", spec(origin=(0.0, 0.0, 100.0)))


def build_pixel_spacing(folder: Path, hu: np.ndarray) -> None:
    write_ct_series(hu, folder / "a", spec())
    write_ct_series(hu[:2], folder / "b", spec(spacing=(2.5, 0.5, 0.5), origin=(0, 0, 100.0)))


def build_no_position(folder: Path, hu: np.ndarray) -> None:
    paths = write_ct_series(hu, folder, spec())
    edit(paths[4], ImagePositionPatient=None)


def build_no_orientation(folder: Path, hu: np.ndarray) -> None:
    paths = write_ct_series(hu, folder, spec())
    edit(paths[2], ImageOrientationPatient=None)


def build_tilt(folder: Path, hu: np.ndarray) -> None:
    paths = write_ct_series(hu, folder, spec())
    for k, path in enumerate(paths):  # gantry tilt: each slice 0.6 mm further posterior
        edit(path, ImagePositionPatient=[0.0, 0.6 * k, 2.5 * k])


def build_two_series(folder: Path, hu: np.ndarray) -> None:
    write_ct_series(hu, folder / "a", spec())
    write_ct_series(hu[:4], folder / "b", spec(series_uid="2.25.1001.9"))


BROKEN = {
    # name: (builder, words the message must contain, the option that accepts it or None)
    "gap": (build_gap, ["slice gap of 7.5 mm between positions 10 and 17.5",
                        "expected 2.5 mm", "2 slices missing?", "allow_gaps=True"],
            "allow_gaps"),
    "uneven spacing": (build_uneven, ["slice gap of 3.5 mm", "uneven spacing"], "allow_gaps"),
    "copied slice": (build_copy, ["share position 7.5 mm", "identical copies",
                                  "drop_duplicates=True"], "drop_duplicates"),
    "two phases in one series": (build_two_phases, ["12 duplicate slice position(s)",
                                                    "different images", "AcquisitionNumber"],
                                 None),
    "localizer in the series": (build_localizer, ["mixed slice orientations",
                                                  "12 at [1, 0, 0, 0, 1, 0]",
                                                  "3 at [1, 0, 0, 0, 0, -1]", "scout"], None),
    "matrix differs": (build_matrix, ["rows x columns", "12 with 16 x 16", "2 with 8 x 8"],
                       None),
    "pixel spacing differs": (build_pixel_spacing, ["PixelSpacing", "12 with 1 x 1",
                                                    "2 with 0.5 x 0.5"], None),
    "position missing": (build_no_position, ["0004.dcm", "ImagePositionPatient is missing"],
                         None),
    "orientation missing": (build_no_orientation, ["0002.dcm", "ImageOrientationPatient"],
                            None),
    "gantry tilt": (build_tilt, ["in-plane", "gantry tilt", "allow_tilt=True"], "allow_tilt"),
    "two series": (build_two_series, ["2 series (12, 4 files)", "group_series()"], None),
}


@pytest.mark.parametrize(("build", "words", "option"), BROKEN.values(), ids=list(BROKEN))
def test_broken_stack_is_named_with_its_numbers(tmp_path: Path, build, words, option) -> None:
    folder = tmp_path / "study"
    hu = volume_hu((12, 16, 16))
    build(folder, hu)
    with pytest.raises(SeriesGeometryError) as caught:
        load_volume(folder)
    message = str(caught.value)
    for word in words:
        assert word in message, message
    assert str(folder) in message
    for secret in (*PHI.values(), STUDY, SERIES):  # no patient attribute, no UID
        assert secret not in message
    if option is None:
        return
    volume = load_volume(folder, **{option: True})  # the offered fix works, and is reported
    assert volume.warnings and all(secret not in " ".join(volume.warnings)
                                   for secret in PHI.values())


def test_allow_gaps_keeps_the_slices_it_has(tmp_path: Path) -> None:
    hu = volume_hu((12, 16, 16))
    build_gap(tmp_path / "s", hu)
    volume = load_volume(tmp_path / "s", allow_gaps=True)
    kept = [k for k in range(12) if k not in (5, 6)]
    assert np.array_equal(volume.values, hu[kept])
    assert volume.positions == pytest.approx([2.5 * k for k in kept])
    assert volume.spacing[0] == 2.5
    assert volume.warnings == ("slice gap of 7.5 mm between positions 10 and 17.5 (expected "
                               "2.5 mm): 2 slices missing?",)


def test_allow_tilt_keeps_each_slice_where_it_was_acquired(tmp_path: Path) -> None:
    hu = volume_hu((12, 16, 16))
    build_tilt(tmp_path / "s", hu)  # slice k at (0, 0.6 k, 2.5 k): 0.24 mm posterior per mm
    volume = load_volume(tmp_path / "s", allow_tilt=True)
    assert np.array_equal(volume.values, hu)
    assert volume.shear == pytest.approx((0.0, 0.24, 0.0), abs=1e-6)
    for k in (0, 5, 11):  # the affine puts every slice's first voxel at its written position
        assert (volume.affine @ [k, 0, 0, 1.0])[:3] == pytest.approx([0.0, 0.6 * k, 2.5 * k],
                                                                     abs=1e-4)
    write_ct_series(hu, tmp_path / "straight", spec())
    assert load_volume(tmp_path / "straight").shear == (0.0, 0.0, 0.0)


def test_small_position_jitter_is_tolerated(tmp_path: Path) -> None:
    hu = volume_hu((8, 16, 16))
    paths = write_ct_series(hu, tmp_path / "s", spec())
    edit(paths[3], ImagePositionPatient=[0.0, 0.0, 7.5 + 0.05])  # 2 % of the 2.5 mm step
    volume = load_volume(tmp_path / "s")
    assert np.array_equal(volume.values, hu) and volume.warnings == ()
    with pytest.raises(SeriesGeometryError, match="uneven spacing"):
        load_volume(tmp_path / "s", tolerance=0.01)


def test_drop_duplicates_keeps_one_copy_and_refuses_different_images(tmp_path: Path) -> None:
    hu = volume_hu((12, 16, 16))
    build_copy(tmp_path / "copy", hu)
    volume = load_volume(tmp_path / "copy", drop_duplicates=True)
    assert np.array_equal(volume.values, hu) and volume.shape[0] == 12
    assert "dropped duplicate" in volume.warnings[0]
    build_two_phases(tmp_path / "phases", hu)
    with pytest.raises(SeriesGeometryError, match="different acquisitions"):
        load_volume(tmp_path / "phases", drop_duplicates=True)


def test_group_series_splits_a_study_and_each_part_loads(tmp_path: Path) -> None:
    hu = volume_hu((12, 16, 16))
    build_two_series(tmp_path / "study", hu)
    groups = group_series(iter_dicom(tmp_path / "study"))
    assert {uid: len(files) for uid, files in groups.items()} == {SERIES: 12, "2.25.1001.9": 4}
    assert np.array_equal(load_volume(groups[SERIES]).values, hu)
    assert np.array_equal(load_volume(groups["2.25.1001.9"]).values, hu[:4])


def test_group_series_refuses_a_file_without_series_uid(tmp_path: Path) -> None:
    paths = write_ct_series(volume_hu((2, 8, 8)), tmp_path / "s", spec())
    edit(paths[1], SeriesInstanceUID=None)
    with pytest.raises(DicomError, match=r"0001\.dcm: no SeriesInstanceUID"):
        group_series(iter_dicom(tmp_path / "s"))


def test_empty_input_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SeriesGeometryError, match="no DICOM images"):
        load_volume([], name="empty")
