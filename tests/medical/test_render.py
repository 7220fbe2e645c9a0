"""Display pixels: window formula, presets, VOI from tags/LUT, MONOCHROME1, colour, composite.

Expected values are computed here from the DICOM formulas or read from raw bytes of the
files, never from the code under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from domainvlm.errors import ConfigError
from domainvlm.medical.errors import DicomDecodeError
from domainvlm.medical.io import read_dataset, read_frames
from domainvlm.medical.render import (
    PRESETS,
    Window,
    apply_window,
    percentile_scale,
    render_frame,
    resolve_window,
    three_window_composite,
    to_uint8,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CORPUS = {Path(p).name: Path(p) for p in get_testdata_files() if Path(p).is_file()}


def _corpus(name: str):
    ds = read_dataset(CORPUS[name], name)
    return ds, read_frames(ds, name)


def _image(stored: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> Dataset:
    """A real CT-like data set (stored uint16, shape (frames, rows, cols)) with `tags`."""
    stored = np.asarray(stored, dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(
        entropy_srcs=["render-test"])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.Modality = "CT"
    ds.NumberOfFrames = len(stored)
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    return ds


def _saved(ds: Dataset, folder: Path, name: str = "image.dcm"):
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return read_dataset(path, name)


def _item(**tags) -> Dataset:
    item = Dataset()
    for keyword, value in tags.items():
        setattr(item, keyword, value)
    return item


# --- window formula (PS3.3 C.11.2.1.2.1) ---------------------------------------------------

@pytest.mark.parametrize(("value", "center", "width", "expected"), [
    (-160.0, 40, 400, 0.0),  # c - 0.5 - (w - 1) / 2: last value that is black
    (-1000.0, 40, 400, 0.0),
    (239.0, 40, 400, 1.0),  # c - 0.5 + (w - 1) / 2: first value that is white
    (3000.0, 40, 400, 1.0),
    (40.0, 40, 400, 0.5 + 0.5 / 399),  # ((x - (c - 0.5)) / (w - 1) + 0.5)
    (39.5, 40, 400, 0.5),
    (-600.0, -600, 1500, 0.5 + 0.5 / 1499),
    (9.5, 10, 1, 0.0),  # width 1 is a threshold at c - 0.5
    (10.0, 10, 1, 1.0),
])
def test_apply_window_follows_the_dicom_linear_function(value, center, width, expected):
    got = apply_window(np.array([value]), center, width)
    assert got.dtype == np.float32
    assert got[0] == pytest.approx(expected, abs=1e-6)


def test_apply_window_matches_pydicom_windowing_scaled_to_unit():
    from pydicom.pixels import apply_windowing

    values = np.arange(0, 4096, 7, dtype=np.uint16)[None]
    ds = _image(values[None], WindowCenter=1200, WindowWidth=901)
    reference = apply_windowing(values.astype(np.float64), ds) / 65535.0
    np.testing.assert_allclose(apply_window(values, 1200, 901), reference, atol=1e-6)


def test_window_width_below_one_is_a_config_error():
    with pytest.raises(ConfigError, match="width 0.5"):
        apply_window(np.zeros(3), 0, 0.5)


# --- presets and resolution ---------------------------------------------------------------

@pytest.mark.parametrize(("spec", "expected"), [
    ("lung", Window(-600, 1500)),
    ("mediastinum", Window(50, 350)),
    ("soft_tissue", Window(40, 400)),
    ("Soft-Tissue", Window(40, 400)),
    ("bone", Window(400, 1800)),
    ("brain", Window(40, 80)),
    ("liver", Window(30, 150)),
    ((35, 350), Window(35, 350)),
    ([-500.0, 1200.0], Window(-500, 1200)),
    (Window(1, 2), Window(1, 2)),
])
def test_resolve_window(spec, expected):
    assert resolve_window(spec) == expected


def test_every_required_preset_exists():
    assert {"lung", "mediastinum", "soft_tissue", "bone", "brain", "liver"} <= set(PRESETS)


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ConfigError) as caught:
        resolve_window("kidney")
    assert "'kidney'" in str(caught.value)
    assert all(name in str(caught.value) for name in PRESETS)


@pytest.mark.parametrize("spec", [(1, 2, 3), ("a", "b"), (40, 0), (float("nan"), 10), 5])
def test_malformed_window_is_a_config_error(spec):
    with pytest.raises(ConfigError):
        resolve_window(spec)


# --- uint8 and percentiles ----------------------------------------------------------------

def test_to_uint8_rounds_clips_and_zeroes_nan():
    got = to_uint8(np.array([0.0, 0.5, 1.0, np.nan, -1.0, 2.0, 0.2]))
    assert got.dtype == np.uint8
    assert got.tolist() == [0, 128, 255, 0, 0, 255, 51]


def test_percentile_scale_maps_1st_and_99th_percentiles():
    values = np.arange(101, dtype=float)  # percentile p is the value p
    got = percentile_scale(values)
    assert got[1] == 0 and got[99] == 1 and got[0] == 0 and got[100] == 1
    assert got[50] == pytest.approx(49 / 98)


def test_percentile_scale_sparse_mask_and_constant_image():
    mask = np.zeros((100, 100))
    mask[0, :5] = 1  # 0.05 % of the pixels: both percentiles are 0
    assert percentile_scale(mask).max() == 1
    assert not percentile_scale(np.full((4, 4), 7.0)).any()


def test_mr_without_voi_tags_is_percentile_scaled():
    ds, values = _corpus("MR_small.dcm")
    del ds.WindowCenter, ds.WindowWidth
    expected = to_uint8(percentile_scale(values[0]))
    np.testing.assert_array_equal(render_frame(ds, values[0]), expected)
    np.testing.assert_array_equal(render_frame(_corpus("MR_small.dcm")[0], values[0],
                                               "percentile"), expected)


# --- VOI from the file --------------------------------------------------------------------

@pytest.mark.parametrize(("name", "window"), [
    ("CT_small.dcm", None),  # no window tags: percentiles (checked against the formula below)
    ("J2K_pixelrep_mismatch.dcm", (40, 100)),  # [40, 40, 40] / [100, 100, 200]: first
    ("examples_overlay.dcm", (450, 790)),  # [450, 200] / [790, 443]: first
    ("MR_small.dcm", (600, 1600)),
])
def test_window_comes_from_the_tags_first_value(name, window):
    ds, values = _corpus(name)
    unit = percentile_scale(values[0]) if window is None else apply_window(values[0], *window)
    np.testing.assert_array_equal(render_frame(ds, values[0]), to_uint8(unit))


def test_preset_overrides_the_tags_on_ct_hounsfield_units():
    ds, values = _corpus("CT_small.dcm")
    expected = to_uint8(apply_window(values[0], -600, 1500))
    np.testing.assert_array_equal(render_frame(ds, values[0], "lung"), expected)


def test_voi_lut_sequence_is_applied_when_there_is_no_window(tmp_path):
    lut = [0, 100, 1000, 4095]  # 12-bit entries for inputs 10, 11, 12, 13
    voi = _item(LUTDescriptor=[4, 10, 12])
    voi.add_new("LUTData", "OW", np.array(lut, dtype="<u2").tobytes())  # OW: raw bytes
    ds = _saved(_image([[[5, 10, 11, 12, 13, 60]]], VOILUTSequence=[voi]), tmp_path)
    got = render_frame(ds, read_frames(ds)[0])
    expected = to_uint8(np.array([0, 0, 100, 1000, 4095, 4095]) / 4095)
    np.testing.assert_array_equal(got[0], expected)


@pytest.mark.parametrize(("function", "expected"), [
    ("LINEAR_EXACT", [0, 64, 128, 255]),  # (x - c) / w + 0.5 at c - w/2, c - w/4, c, c + w/2
    ("SIGMOID", [30, 69, 128, 225]),  # 1 / (1 + exp(-4 (x - c) / w))
])
def test_voi_lut_function_from_tags(function, expected, tmp_path):
    ds = _saved(_image([[[950, 975, 1000, 1050]]], WindowCenter=1000, WindowWidth=100,
                       VOILUTFunction=function), tmp_path)
    assert render_frame(ds, read_frames(ds)[0])[0].tolist() == expected


def test_monochrome1_is_inverted_after_voi(tmp_path):
    tags = dict(RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=26, WindowWidth=1000)
    stored = [[[0, 1050, 2000]]]  # HU -1024, 26, 976
    mono2 = _saved(_image(stored, "MONOCHROME2", **tags), tmp_path)
    assert render_frame(mono2, read_frames(mono2)[0])[0].tolist() == [0, 128, 255]
    mono1 = _saved(_image(stored, "MONOCHROME1", **tags), tmp_path, "mono1.dcm")
    # Inverting before VOI would put the middle pixel at 102; after VOI it is 255 - 128.
    assert render_frame(mono1, read_frames(mono1)[0])[0].tolist() == [255, 127, 0]
    assert render_frame(mono1, read_frames(mono1)[0], "lung")[0].tolist() == [
        255 - v for v in to_uint8(apply_window(np.array([-1024, 26, 976]), -600, 1500))]


def test_monochrome1_corpus_cr_is_inverted():
    ds, values = _corpus("6154")  # dicomdirtests/77654033/CR1/6154
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    unit = 1 - apply_window(values[0], float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_array_equal(render_frame(ds, values[0]), to_uint8(unit))


# --- per-frame Modality LUT and VOI in an enhanced multi-frame object ---------------------

def _enhanced(tmp_path, per_frame_groups, shared_groups=None):
    stored = np.array([[[0, 100], [200, 300]], [[0, 100], [200, 300]]])
    ds = _image(stored, PerFrameFunctionalGroupsSequence=per_frame_groups,
                SharedFunctionalGroupsSequence=[shared_groups or Dataset()])
    return _saved(ds, tmp_path), stored


def _rescale(slope, intercept):
    return [_item(RescaleSlope=slope, RescaleIntercept=intercept, RescaleType="HU")]


def test_per_frame_rescale_differs_between_frames(tmp_path):
    groups = [_item(PixelValueTransformationSequence=_rescale(1, -1024)),
              _item(PixelValueTransformationSequence=_rescale(2, 0))]
    ds, stored = _enhanced(tmp_path, groups)
    values = read_frames(ds)
    np.testing.assert_array_equal(values[0], stored[0] - 1024)
    np.testing.assert_array_equal(values[1], stored[1] * 2)


def test_shared_rescale_applies_to_every_frame(tmp_path):
    shared = _item(PixelValueTransformationSequence=_rescale(0.5, 10))
    ds, stored = _enhanced(tmp_path, [Dataset(), Dataset()], shared)
    np.testing.assert_array_equal(read_frames(ds), stored * 0.5 + 10)


def test_per_frame_window_is_used_for_its_frame(tmp_path):
    groups = [_item(FrameVOILUTSequence=[_item(WindowCenter=150, WindowWidth=101)]),
              _item(FrameVOILUTSequence=[_item(WindowCenter=250, WindowWidth=101)])]
    ds, _ = _enhanced(tmp_path, groups)
    values = read_frames(ds)
    for frame, center in enumerate((150, 250)):
        np.testing.assert_array_equal(render_frame(ds, values[frame], frame=frame),
                                      to_uint8(apply_window(values[frame], center, 101)))


def test_fewer_per_frame_items_than_frames_is_a_decode_error(tmp_path):
    ds, _ = _enhanced(tmp_path, [_item(PixelValueTransformationSequence=_rescale(1, 0))])
    with pytest.raises(DicomDecodeError, match="1 items for 2 frames"):
        read_frames(ds, "image.dcm")


def test_modality_lut_sequence_maps_stored_values(tmp_path):
    lut = _item(LUTDescriptor=[3, 100, 16], ModalityLUTType="US")
    lut.add_new("LUTData", "US", [7, 70, 700])  # US: a list of values
    ds = _saved(_image([[[50, 100, 101, 102, 900]]], ModalityLUTSequence=[lut]), tmp_path)
    assert read_frames(ds)[0, 0].tolist() == [7, 7, 70, 700, 700]


# --- colour -------------------------------------------------------------------------------

def test_palette_colour_matches_the_lut_in_the_file():
    ds, values = _corpus("examples_palette.dcm")
    indices = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns)
    entries, first, bits = ds.RedPaletteColorLookupTableDescriptor
    assert (entries, first, bits) == (256, 0, 16)
    luts = [np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, dtype="<u2")
            for c in ("Red", "Green", "Blue")]
    expected = np.stack([np.rint(lut[indices] / 65535 * 255) for lut in luts], axis=-1)
    np.testing.assert_array_equal(render_frame(ds, values[0]), expected.astype(np.uint8))


def test_ybr_full_422_becomes_the_rgb_of_the_dicom_formula():
    ds, values = _corpus("SC_ybr_full_422_uncompressed.dcm")
    raw = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns // 2, 4)
    y = raw[..., :2].reshape(ds.Rows, ds.Columns).astype(float)  # Y0 Y1 Cb Cr per pair
    cb, cr = (np.repeat(raw[..., k].astype(float) - 128, 2, axis=1) for k in (2, 3))
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
    expected = np.clip(np.rint(rgb), 0, 255)
    assert np.abs(render_frame(ds, values[0]).astype(int) - expected).max() <= 1


@pytest.mark.parametrize("name", ["SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm"])
def test_deep_rgb_is_scaled_to_8_bits(name):
    ds, values = _corpus(name)
    rgb8 = _corpus("SC_rgb_rle.dcm")[1][0]
    np.testing.assert_array_equal(render_frame(ds, values[0]), rgb8.astype(np.uint8))


# --- three-window composite ---------------------------------------------------------------

def test_composite_channels_each_equal_their_window():
    _, values = _corpus("CT_small.dcm")
    composite = three_window_composite(values[0])
    assert composite.shape == values[0].shape + (3,) and composite.dtype == np.uint8
    for channel, preset in enumerate(("lung", "mediastinum", "bone")):
        np.testing.assert_array_equal(composite[..., channel],
                                      to_uint8(apply_window(values[0], *PRESETS[preset])))
    assert not np.array_equal(composite[..., 0], composite[..., 2])


def test_composite_takes_custom_windows_and_needs_three():
    hu = np.array([[-1000.0, 0.0, 1000.0]])
    got = three_window_composite(hu, ("brain", (0, 2001), Window(-1000, 1)))
    assert got[0].tolist() == [[0, 0, 255], [0, 128, 255], [255, 255, 255]]
    with pytest.raises(ConfigError, match="exactly 3"):
        three_window_composite(hu, ("lung", "bone"))


def test_render_frame_refuses_a_stack():
    ds, values = _corpus("CT_small.dcm")
    with pytest.raises(ValueError, match="one frame"):
        render_frame(ds, np.stack([values[0]] * 2))
