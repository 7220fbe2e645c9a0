"""The MONAI reader against MONAI's own: PydicomReader on series whose InstanceNumbers follow
the geometry is the oracle (every voxel at the same world point with the same value, before and
after Orientation and Spacing); the writer's geometry and HU are the oracle where
PydicomReader's InstanceNumber order is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.data import DataLoader, Dataset, PydicomReader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImage,
    LoadImaged,
    Orientation,
    Spacing,
)
from pydicom.data import get_testdata_file

from domainvlm.medical.ct_writer import SeriesSpec, slice_normal, write_ct_series
from domainvlm.medical.errors import DicomDecodeError, SeriesGeometryError
from domainvlm.medical.monai_reader import DomainvlmDicomReader

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

STUDY, SERIES = "2.25.3001", "2.25.3001.4"
PHI = {"PatientName": "Roe^Richard", "PatientID": "MRN-99173", "PatientBirthDate": "19580214"}
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ORIENTATIONS = {
    "axial": AXIAL,
    "normal towards the feet": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    # Turned about z, then about the row: normal (0.36, -0.48, 0.8). Exact decimals, so the
    # positions written to 4 decimals put PydicomReader's slice step exactly on the normal:
    # Spacing rounds its grid's origin, and affines 1e-6 apart can land half a voxel apart.
    "oblique": (0.8, 0.6, 0.0, -0.48, 0.64, 0.6),
}
TESTDATA = Path(get_testdata_file("CT_small.dcm")).parent
CT_SERIES = TESTDATA / "dicomdirtests" / "98892001" / "CT5N"  # 5 slices, numbers against z
MIXED_ORIENTATIONS = TESTDATA / "dicomdirtests" / "98892003" / "MR700"


def write(folder: Path, hu: np.ndarray, **changes) -> list[Path]:
    fields = {"study_uid": STUDY, "series_uid": SERIES, "attributes": PHI,
              "origin": (-40.0, 25.5, -310.25), "spacing": (2.5, 0.8, 0.7), **changes}
    return write_ct_series(hu, folder, SeriesSpec(**fields))


def volume_hu(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Whole-HU noise: every voxel differs, so no misplaced slice or flipped axis can hide."""
    return np.random.default_rng(seed).integers(-1000, 2000, shape).astype(np.float32)


def ours(path: Path | list[Path], **options):
    load = LoadImage(reader=DomainvlmDicomReader(**options), image_only=True,
                     ensure_channel_first=True)
    return load(path if isinstance(path, list) else str(path))


def monai_pydicom(path: Path, **options):
    load = LoadImage(reader=PydicomReader(**options), image_only=True, ensure_channel_first=True)
    return load(str(path))


def assert_same_world(a, b) -> None:
    """Every voxel of `a` lies at the world point of a voxel of `b`, and holds its value."""
    a_values, b_values = np.asarray(a)[0], np.asarray(b)[0]
    assert a_values.shape == b_values.shape or sorted(a_values.shape) == sorted(b_values.shape)
    to_b = np.linalg.inv(np.asarray(b.affine, float)) @ np.asarray(a.affine, float)
    assert np.allclose(to_b, np.rint(to_b), atol=1e-3), to_b  # a permutation, flips, a shift
    index = np.indices(a_values.shape).reshape(3, -1)
    mapped = np.rint(to_b[:3, :3] @ index + to_b[:3, 3:]).astype(int)
    assert np.all(mapped >= 0) and np.all(mapped < np.array(b_values.shape)[:, None])
    assert np.array_equal(a_values.reshape(-1), b_values[tuple(mapped)])


def assert_same_after_transforms(a, b, pixdim: tuple[float, float, float]) -> None:
    """Orientation(RAS) gives both the same array and affine; so does Spacing after it."""
    orient = Orientation(axcodes="RAS")
    a, b = orient(a), orient(b)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.allclose(a.affine, b.affine, atol=1e-4)
    spacing = Spacing(pixdim=pixdim)
    a, b = spacing(a), spacing(b)
    assert a.shape == b.shape
    assert np.allclose(a.affine, b.affine, atol=1e-4)
    assert np.allclose(np.asarray(a), np.asarray(b), atol=1e-3)


def written_corners_ras(hu_shape, orientation, origin, spacing) -> np.ndarray:
    """RAS mm of voxel corners (i, j, k) = 0 or last, from the writer's own geometry."""
    n, rows, cols = hu_shape
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = slice_normal(orientation)
    points = []
    for k in (0, n - 1):
        for j in (0, rows - 1):
            for i in (0, cols - 1):
                lps = (np.asarray(origin) + k * spacing[0] * normal + j * spacing[1] * col
                       + i * spacing[2] * row)
                points.append(lps * np.array([-1.0, -1.0, 1.0]))
    return np.array(points)


# --- synthetic CT against PydicomReader ----------------------------------------------------------
@pytest.mark.parametrize("orientation", ORIENTATIONS.values(), ids=list(ORIENTATIONS))
def test_synthetic_ct_matches_pydicom_reader(tmp_path: Path, orientation) -> None:
    hu = volume_hu((7, 12, 10), seed=3)
    write(tmp_path / "s", hu, orientation=orientation)

    image, oracle = ours(tmp_path / "s"), monai_pydicom(tmp_path / "s")

    assert image.shape == (1, 10, 12, 7) and image.dtype == oracle.dtype
    assert np.allclose(image.affine, oracle.affine, atol=1e-4)  # numbers follow the geometry
    assert_same_world(image, oracle)
    assert_same_after_transforms(image, oracle, pixdim=(1.1, 0.9, 2.0))
    # Corners sit where the writer put them (RAS), and hold the written HU.
    corners = np.array([[i, j, k, 1.0] for k in (0, 6) for j in (0, 11) for i in (0, 9)])
    world = (np.asarray(image.affine) @ corners.T).T[:, :3]
    assert world == pytest.approx(written_corners_ras(hu.shape, orientation, (-40.0, 25.5,
                                                                              -310.25),
                                                      (2.5, 0.8, 0.7)), abs=1e-3)
    assert np.array_equal(np.asarray(image)[0].transpose(2, 1, 0), hu)
    meta = image.meta
    assert meta["space"] == "RAS" and meta["modality"] == "CT"
    assert np.isnan(float(meta["original_channel_dim"]))
    assert tuple(int(v) for v in meta["spatial_shape"]) == (10, 12, 7)
    assert np.allclose(meta["spacing"], oracle.meta["spacing"], atol=1e-4)
    assert np.allclose(meta["original_affine"], oracle.meta["original_affine"], atol=1e-4)


def test_irrational_direction_cosines_are_written_as_valid_ds(tmp_path: Path) -> None:
    """cos 30 deg needs 18 characters as Python prints it; DS allows 16, and MONAI's reader
    drops an over-long ImageOrientationPatient (identity affine)."""
    cos30, sin30 = float(np.cos(np.pi / 6)), float(np.sin(np.pi / 6))
    write(tmp_path / "s", volume_hu((5, 8, 6)), orientation=(cos30, sin30, 0.0, -sin30, cos30,
                                                              0.0))
    image, oracle = ours(tmp_path / "s"), monai_pydicom(tmp_path / "s")
    assert oracle.affine[0, 0] == pytest.approx(-0.7 * cos30, abs=1e-6)  # it read the cosines
    assert np.allclose(image.affine, oracle.affine, atol=1e-4)
    assert_same_world(image, oracle)


def test_lps_affine_when_asked(tmp_path: Path) -> None:
    write(tmp_path / "s", volume_hu((5, 8, 8)), orientation=ORIENTATIONS["oblique"])
    image = ours(tmp_path / "s", affine_lps_to_ras=False)
    oracle = monai_pydicom(tmp_path / "s", affine_lps_to_ras=False)
    assert image.meta["space"] == "LPS" == oracle.meta["space"]
    assert np.allclose(image.affine, oracle.affine, atol=1e-4)
    assert_same_world(image, oracle)


# --- slice order: only ImagePositionPatient tells it ---------------------------------------------
def shuffled_copy(paths: list[Path], folder: Path, numbers: list[int], names: list[int]) -> None:
    """The series again, with these InstanceNumbers and file names (sorted order says nothing)."""
    folder.mkdir(parents=True)
    for path, number, name in zip(paths, numbers, names, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        ds.save_as(folder / f"f{name * 37 % 1009:04d}.dcm")


@given(data=st.data())
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_numbering_and_naming_gives_the_honest_series(tmp_path_factory, data) -> None:
    n = data.draw(st.integers(3, 7), label="slices")
    orientation = data.draw(st.sampled_from(list(ORIENTATIONS.values())), label="orientation")
    numbers = data.draw(st.permutations(range(1, n + 1)), label="instance numbers")
    names = data.draw(st.permutations(range(n)), label="file names")
    root = tmp_path_factory.mktemp("order")
    hu = volume_hu((n, 6, 5), seed=n)
    paths = write(root / "honest", hu, orientation=orientation)
    shuffled_copy(paths, root / "shuffled", list(numbers), list(names))

    image = ours(root / "shuffled")

    oracle = monai_pydicom(root / "honest")
    assert_same_world(image, oracle)
    assert_same_after_transforms(image, oracle, pixdim=(1.0, 1.0, 1.5))


def test_reversed_and_shuffled_numbers_where_pydicom_reader_misorders(tmp_path: Path) -> None:
    hu = volume_hu((6, 8, 7), seed=5)
    paths = write(tmp_path / "honest", hu)
    shuffled_copy(paths, tmp_path / "reversed", [6, 5, 4, 3, 2, 1], [0, 1, 2, 3, 4, 5])
    shuffled_copy(paths, tmp_path / "shuffled", [3, 1, 6, 2, 5, 4], [4, 2, 0, 5, 1, 3])
    oracle = monai_pydicom(tmp_path / "honest")

    for folder in ("reversed", "shuffled"):
        image = ours(tmp_path / folder)
        assert np.allclose(image.affine, oracle.affine, atol=1e-4)  # slices ascend the normal
        assert np.array_equal(np.asarray(image), np.asarray(oracle))
    # The check can fail: MONAI's reader, by InstanceNumber, misplaces the shuffled slices.
    misordered = monai_pydicom(tmp_path / "shuffled")
    with pytest.raises(AssertionError):
        assert_same_world(misordered, oracle)


# --- values: each slice's own Modality LUT ------------------------------------------------------
def test_each_slice_rescaled_by_its_own_slope_and_intercept(tmp_path: Path) -> None:
    hu = volume_hu((5, 8, 6), seed=9)
    paths = write(tmp_path / "s", hu)
    for k, path in enumerate(paths):  # stored = HU + 1024, now read as 2 * stored - 2048 + k
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = 2, -2048 + k
        ds.save_as(path)

    image = ours(tmp_path / "s")

    expected = 2 * hu + np.arange(5, dtype=np.float32)[:, None, None]
    assert np.array_equal(np.asarray(image)[0].transpose(2, 1, 0), expected)
    assert_same_world(image, monai_pydicom(tmp_path / "s"))


# --- gantry tilt: a sheared affine, as the positions say -----------------------------------------
def test_gantry_tilt_gives_the_sheared_affine_of_the_positions(tmp_path: Path) -> None:
    hu = volume_hu((6, 10, 8), seed=2)
    paths = write(tmp_path / "s", hu, origin=(0.0, 0.0, 0.0), spacing=(2.5, 1.0, 1.0))
    for k, path in enumerate(paths):  # each slice 0.6 mm further posterior: a tilted gantry
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 0.6 * k, 2.5 * k]
        ds.save_as(path)

    with pytest.raises(SeriesGeometryError, match="gantry tilt.*allow_tilt=True"):
        DomainvlmDicomReader().read(tmp_path / "s")
    image = ours(tmp_path / "s", allow_tilt=True)

    assert "gantry tilt" in image.meta["series_warnings"]
    oracle = monai_pydicom(tmp_path / "s")  # first to last position over n - 1: the shear
    assert np.allclose(image.affine, oracle.affine, atol=1e-4)
    assert_same_world(image, oracle)
    assert_same_after_transforms(image, oracle, pixdim=(1.0, 1.0, 2.5))
    last_slice_origin = np.asarray(image.affine) @ np.array([0.0, 0.0, 5.0, 1.0])
    assert last_slice_origin[:3] == pytest.approx([0.0, -3.0, 12.5], abs=1e-4)  # RAS of LPS


# --- pydicom's own files ------------------------------------------------------------------------
def test_pydicom_ct_series_matches_pydicom_reader() -> None:
    image, oracle = ours(CT_SERIES), monai_pydicom(CT_SERIES)
    assert image.shape == (1, 16, 16, 5)
    assert image.affine[2, 2] == pytest.approx(2.5)  # slices ascend z; numbers descend it
    assert oracle.affine[2, 2] == pytest.approx(-2.5)
    assert_same_world(image, oracle)
    assert_same_after_transforms(image, oracle, pixdim=(1.0, 1.0, 1.0))
    top = pydicom.dcmread(CT_SERIES / "2062")  # the highest slice, z = 8.7625
    assert top.RescaleIntercept == -1024 and top.RescaleSlope == 1
    assert np.array_equal(np.asarray(image)[0, :, :, -1], top.pixel_array.T - 1024.0)


SINGLE_FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
                "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]


@pytest.mark.parametrize("name", SINGLE_FILES)
def test_pydicom_single_files_match_pydicom_reader(name: str) -> None:
    path = Path(get_testdata_file(name))
    image, oracle = ours(path), monai_pydicom(path)  # ours (1, x, y, 1); MONAI's (1, x, y)
    assert image.shape == (*oracle.shape, 1)
    assert np.array_equal(np.asarray(image)[..., 0], np.asarray(oracle))
    in_plane = [0, 1, 3]
    assert np.allclose(image.affine[:3, in_plane], oracle.affine[:3, in_plane], atol=1e-4)
    thickness = float(pydicom.dcmread(path, stop_before_pixels=True).SliceThickness)
    assert image.affine[:3, 2] == pytest.approx([0.0, 0.0, thickness])  # axial: +z, 1 slice
    assert "single slice" in image.meta["series_warnings"]
    if name.startswith("MR_small"):  # every encoding decodes to the same values
        plain = ours(Path(get_testdata_file("MR_small.dcm")))
        assert np.array_equal(np.asarray(image), np.asarray(plain))


def test_mixed_orientations_are_refused_by_name() -> None:
    with pytest.raises(SeriesGeometryError, match="mixed slice orientations") as caught:
        DomainvlmDicomReader().read(MIXED_ORIENTATIONS)
    assert str(MIXED_ORIENTATIONS) in str(caught.value)


# --- LoadImaged, by name, channels ---------------------------------------------------------------
def test_dictionary_pipeline_and_loading_by_name(tmp_path: Path) -> None:
    hu = volume_hu((4, 6, 5), seed=4)
    write(tmp_path / "a", hu)
    write(tmp_path / "b", hu + 1, series_uid=SERIES + ".2")
    load = LoadImaged(keys=["image", "other"], reader=DomainvlmDicomReader())
    item = {"image": str(tmp_path / "a"), "other": str(tmp_path / "b")}
    out = EnsureChannelFirstd(keys=["image", "other"])(load(item))
    assert item == {"image": str(tmp_path / "a"), "other": str(tmp_path / "b")}  # untouched
    assert np.array_equal(np.asarray(out["other"]), np.asarray(out["image"]) + 1)

    by_name = LoadImage(reader="domainvlm.medical.monai_reader.DomainvlmDicomReader",
                        image_only=True, ensure_channel_first=True)(str(tmp_path / "a"))
    assert np.array_equal(np.asarray(by_name), np.asarray(out["image"]))
    assert np.allclose(by_name.affine, out["image"].affine)

    pipeline = Compose([LoadImaged(keys="image", reader=DomainvlmDicomReader()),
                        EnsureChannelFirstd(keys="image")])
    dataset = Dataset([{"image": str(tmp_path / name)} for name in ("a", "b")], pipeline)
    batch = next(iter(DataLoader(dataset, batch_size=2)))  # the meta collates
    assert batch["image"].shape == (2, 1, 5, 6, 4)
    assert np.array_equal(np.asarray(batch["image"][1]), np.asarray(out["other"]))
    assert list(batch["image"].meta["modality"]) == ["CT", "CT"]


def test_several_series_on_one_grid_stack_as_channels(tmp_path: Path) -> None:
    hu = volume_hu((4, 6, 5), seed=6)
    write(tmp_path / "a", hu)
    write(tmp_path / "b", 1000 - hu, series_uid=SERIES + ".2")
    write(tmp_path / "c", hu[:3], series_uid=SERIES + ".3")

    stacked = ours([tmp_path / "a", tmp_path / "b"])
    assert stacked.shape == (2, 5, 6, 4) and stacked.meta["original_channel_dim"] == 0
    assert np.array_equal(np.asarray(stacked)[1], 1000 - np.asarray(stacked)[0])
    reader = DomainvlmDicomReader()
    with pytest.raises(ValueError, match="must share one grid") as caught:
        reader.get_data(reader.read([tmp_path / "a", tmp_path / "c"]))
    assert str(tmp_path / "c") in str(caught.value)


# --- patient data -------------------------------------------------------------------------------
def test_meta_holds_no_patient_data_unless_asked(tmp_path: Path) -> None:
    write(tmp_path / "s", volume_hu((3, 6, 6)), attributes={**PHI, "PatientAge": "066Y"})
    secrets = [*PHI.values(), "066Y", STUDY, SERIES]

    image = ours(tmp_path / "s")
    text = repr({k: v for k, v in image.meta.items() if k != "filename_or_obj"})
    assert not [s for s in secrets if s in text]

    asked = ours(tmp_path / "s", tags=("SeriesInstanceUID", "PatientAge", "PixelSpacing",
                                       "InstanceNumber", "AcquisitionDate"))
    assert asked.meta["SeriesInstanceUID"] == SERIES and asked.meta["PatientAge"] == "066Y"
    assert asked.meta["PixelSpacing"] == [0.8, 0.7] and asked.meta["AcquisitionDate"] == ""
    assert isinstance(asked.meta["InstanceNumber"], int)


@pytest.mark.parametrize(("tags", "words"), [
    (("SeriesUID",), "'SeriesUID' not DICOM keywords"),
    (("ReferencedImageSequence", "PixelData"), "sequences or binary data"),
])
def test_bad_tags_are_refused_at_construction(tags, words) -> None:
    with pytest.raises(ValueError, match=words):
        DomainvlmDicomReader(tags=tags)


def test_read_errors_name_the_file_not_the_patient(tmp_path: Path) -> None:
    paths = write(tmp_path / "s", volume_hu((3, 6, 6)))
    ds = pydicom.dcmread(paths[1])
    ds.PixelData = ds.PixelData[:10]  # truncated
    ds.save_as(paths[1])
    with pytest.raises(DicomDecodeError) as caught:
        DomainvlmDicomReader().read(tmp_path / "s")
    message = str(caught.value)
    assert str(paths[1]) in message
    assert not [s for s in (*PHI.values(), STUDY, SERIES) if s in message]


def test_verify_suffix_accepts_folders_archives_and_dicom_files(tmp_path: Path) -> None:
    reader = DomainvlmDicomReader()
    paths = write(tmp_path / "s", volume_hu((2, 4, 4)))
    plain = shutil.copy(paths[0], tmp_path / "no_suffix")
    (tmp_path / "notes.txt").write_text("not an image")
    assert reader.verify_suffix(tmp_path / "s") and reader.verify_suffix([paths[0], plain])
    assert reader.verify_suffix("study.zip")
    assert not reader.verify_suffix(tmp_path / "notes.txt")
    assert not reader.verify_suffix([paths[0], tmp_path / "notes.txt"])
