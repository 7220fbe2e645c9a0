"""DICOM reading: pydicom's whole test corpus, lossless/lossy pairs, known values, archives.

Every file pydicom ships must either decode (and render) or raise the DicomError subclass
its row in EXPECTED_FAILURES names, so a file that starts failing, or a crash of any other
type, fails here. Pixel truth comes from outside our decoder: raw PixelData bytes, pydicom's
published reference values, the same image in another syntax, or a file we wrote.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series
from domainvlm.medical.errors import DicomDecodeError, DicomError, NotDicomError
from domainvlm.medical.io import iter_dicom, read_dataset, read_frames
from domainvlm.medical.render import render_frame

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

_ROOT = Path(pydicom.data.__file__).parent / "test_files"


def _relative(path: str) -> str:
    try:
        return Path(path).relative_to(_ROOT).as_posix()
    except ValueError:  # an external pydicom-data file already in the local cache
        return Path(path).name


CORPUS = {_relative(p): Path(p) for p in get_testdata_files()}
FILES = sorted(k for k, p in CORPUS.items() if p.is_file())
FOLDERS = sorted(k for k, p in CORPUS.items() if p.is_dir())

_NO_PIXELS = (DicomDecodeError, "no pixel data")
_NOT_DICOM = (NotDicomError, "not a DICOM file")
# relative path (glob) -> (error type, message fragment); every other file must decode.
EXPECTED_FAILURES = {
    "ExplVR_BigEndNoMeta.dcm": _NO_PIXELS,  # headerless RT Ion Plan: read, but no image
    "ExplVR_LitEndNoMeta.dcm": _NO_PIXELS,
    "JPEG2000-embedded-sequence-delimiter.dcm": (  # codestream bytes overwritten on purpose
        DicomDecodeError, "JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91)) cannot be"),
    "MR_truncated.dcm": (DicomDecodeError, "Explicit VR Little Endian (1.2.840.10008.1.2.1))"),
    "README.txt": _NOT_DICOM,
    "UN_sequence.dcm": _NO_PIXELS,
    "badVR.dcm": (DicomDecodeError, "NumberOfFrames is not a whole number"),  # it is "1A"
    "crayons.icc": _NOT_DICOM,
    "dicomdirtests/DICOMDIR*": _NO_PIXELS,
    "dicomdirtests/README.txt": _NOT_DICOM,
    "dicomdirtests/TINY_ALPHA/DICOMDIR": _NO_PIXELS,
    "dicomdirtests/TINY_ALPHA/PT000000/*": _NO_PIXELS,  # images stripped of their pixels
    "dicomdirtests/TINY_ALPHA/README": _NOT_DICOM,
    "empty_charset_LEI.dcm": _NO_PIXELS,
    "meta_missing_tsyntax.dcm": (DicomDecodeError, "pixel data without Rows, Columns"),
    "nested_priv_SQ.dcm": (DicomDecodeError, "pixel data without Rows, Columns"),
    "no_meta.dcm": _NOT_DICOM,  # no header and nothing that parses to an object
    "no_meta_group_length.dcm": _NO_PIXELS,
    "priv_SQ.dcm": _NO_PIXELS,
    "reportsi*.dcm": _NO_PIXELS,
    "rtplan*.dcm": _NO_PIXELS,
    "rtstruct.dcm": _NO_PIXELS,
    "*.dump": _NOT_DICOM,
    "*.json": _NOT_DICOM,
    "zipMR.gz": _NOT_DICOM,  # gzip, not zip
    "test-SR.dcm": _NO_PIXELS,
    "waveform_ecg.dcm": _NO_PIXELS,
}


def _expected_failure(relpath: str) -> tuple[type, str] | None:
    for pattern, outcome in EXPECTED_FAILURES.items():
        if fnmatch.fnmatchcase(relpath, pattern):
            return outcome
    return None


def _read(name: str):
    return read_dataset(CORPUS[name], name)


def test_corpus_is_the_full_pydicom_set_and_the_table_is_current():
    assert len(FILES) >= 78, f"only {len(FILES)} corpus files found under {_ROOT}"
    stale = [p for p in EXPECTED_FAILURES if not any(fnmatch.fnmatchcase(f, p) for f in FILES)]
    assert not stale, f"EXPECTED_FAILURES rows that match no corpus file: {stale}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("relpath", FILES)
def test_corpus_file_decodes_or_raises_its_typed_error(relpath):
    expected = _expected_failure(relpath)
    if expected is not None:
        error, fragment = expected
        with pytest.raises(DicomError) as caught:
            read_frames(read_dataset(CORPUS[relpath], relpath), relpath)
        assert type(caught.value) is error, caught.value
        assert relpath in str(caught.value) and fragment in str(caught.value)
        return
    ds = read_dataset(CORPUS[relpath], relpath)
    values = read_frames(ds, relpath)
    colour = int(ds.SamplesPerPixel) == 3
    shape = (int(ds.get("NumberOfFrames") or 1), ds.Rows, ds.Columns) + ((3,) if colour else ())
    assert values.shape == shape and values.dtype == np.float32
    assert np.isfinite(values).all()
    for index, frame in enumerate(values):
        image = render_frame(ds, frame, frame=index, name=relpath)
        colour_out = colour or ds.PhotometricInterpretation == "PALETTE COLOR"
        assert image.dtype == np.uint8
        assert image.shape == (ds.Rows, ds.Columns) + ((3,) if colour_out else ())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("relpath", FOLDERS)
def test_corpus_folder_yields_every_dicom_file_but_indexes(relpath):
    folder = CORPUS[relpath]
    expected = [str(p) for p in sorted(folder.rglob("*")) if p.is_file()
                and not p.name.startswith("DICOMDIR") and p.read_bytes()[128:132] == b"DICM"]
    assert [s.name for s in iter_dicom(folder, stop_before_pixels=True)] == expected


# --- correct pixels ------------------------------------------------------------------------

LOSSLESS_PAIRS = [  # (reference, same image in another syntax): must be equal
    ("MR_small.dcm", "MR_small_RLE.dcm"),
    ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
    ("MR_small.dcm", "MR_small_bigendian.dcm"),
    ("MR_small.dcm", "MR_small_expb.dcm"),
    ("MR_small.dcm", "MR_small_implicit.dcm"),
    ("MR_small.dcm", "MR_small_padded.dcm"),
    ("rtdose.dcm", "rtdose_rle.dcm"),
    ("rtdose.dcm", "rtdose_expb.dcm"),
    ("rtdose_1frame.dcm", "rtdose_rle_1frame.dcm"),
    ("rtdose_1frame.dcm", "rtdose_expb_1frame.dcm"),
    ("liver_1frame.dcm", "liver_expb_1frame.dcm"),
    ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"),
    ("SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm"),  # JPEG Lossless SV1
    ("SC_rgb_rle.dcm", "SC_rgb_gdcm_KY.dcm"),  # JPEG 2000
    ("SC_rgb_jpeg_dcmd.dcm", "SC_rgb_jpeg.dcm"),  # dcmtk's decode of the same JPEG
    ("SC_rgb_jpeg_dcmd.dcm", "SC_jpeg_no_color_transform.dcm"),
    ("SC_rgb_jpeg_app14_dcmd.dcm", "SC_jpeg_no_color_transform_2.dcm"),
    ("JPGExtended.dcm", "JPEG-lossy.dcm"),  # the broken and fixed 12-bit streams
]
LOSSY_PAIRS = [  # (reference, lossy copy, largest difference allowed in stored units)
    ("SC_rgb_rle.dcm", "SC_rgb_jls_lossy_line.dcm", 2),  # JPEG-LS NEAR=2
    ("SC_rgb_rle.dcm", "SC_rgb_jls_lossy_sample.dcm", 2),
    ("SC_rgb_rle.dcm", "SC_rgb_dcmtk_+eb+cr.dcm", 3),  # JPEG baseline, RGB components
    ("SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm", 6),  # chroma halved at edges
    ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_jpeg.dcm", 4),
]
# SC_rgb*: ten 10-row bands, sampled at column 50 (pydicom's reference values).
BANDS = [(255, 0, 0), (255, 128, 128), (0, 255, 0), (128, 255, 128), (0, 0, 255),
         (128, 128, 255), (0, 0, 0), (64, 64, 64), (192, 192, 192), (255, 255, 255)]
BAND_FILES = {  # file -> largest difference allowed at the band centres (8-bit units)
    "SC_rgb_rle.dcm": 0, "SC_rgb_rle_16bit.dcm": 0, "SC_rgb_rle_32bit.dcm": 0,
    "SC_rgb_jpeg_gdcm.dcm": 0, "SC_rgb_gdcm_KY.dcm": 0, "SC_rgb_dcmtk_+eb+cr.dcm": 0,
    "SC_ybr_full_422_uncompressed.dcm": 5,  # YCbCr stored at 8 bits: green is (0, 255, 5)
    "SC_rgb_jls_lossy_line.dcm": 2,
    "SC_rgb_jpeg_lossy_gdcm.dcm": 2, "SC_rgb_jpeg_dcmtk.dcm": 5,
    "SC_rgb_dcmtk_+eb+cy+n1.dcm": 5, "SC_rgb_dcmtk_+eb+cy+n2.dcm": 5,
    "SC_rgb_dcmtk_+eb+cy+np.dcm": 5, "SC_rgb_dcmtk_+eb+cy+s2.dcm": 5,
    "SC_rgb_dcmtk_+eb+cy+s4.dcm": 5,  # YCbCr baseline JPEG: quantisation + colour rounding
}


@pytest.mark.parametrize(("reference", "copy"), LOSSLESS_PAIRS)
def test_lossless_copy_equals_its_reference(reference, copy):
    np.testing.assert_array_equal(read_frames(_read(copy)), read_frames(_read(reference)))


@pytest.mark.parametrize(("reference", "copy", "tolerance"), LOSSY_PAIRS)
def test_lossy_copy_is_within_its_tolerance(reference, copy, tolerance):
    expected, got = read_frames(_read(reference)), read_frames(_read(copy))
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= tolerance


@pytest.mark.parametrize(("name", "tolerance"), sorted(BAND_FILES.items()))
def test_colour_bands_are_the_published_rgb(name, tolerance):
    ds = _read(name)
    image = render_frame(ds, read_frames(ds)[0])
    got = np.array([image[5 + 10 * band, 50] for band in range(10)], dtype=int)
    assert np.abs(got - np.array(BANDS)).max() <= tolerance


def test_ct_small_hounsfield_units_are_stored_times_slope_plus_intercept():
    ds = _read("CT_small.dcm")
    stored = np.frombuffer(ds.PixelData, dtype="<i2").reshape(ds.Rows, ds.Columns)
    assert stored[24, 36:40].tolist() == [520, 802, 930, 1008]  # pydicom's reference values
    hu = stored.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    values = read_frames(ds)
    np.testing.assert_array_equal(values[0], hu)
    assert values[0, 40:45, 40].tolist() == [114, 141, 89, 64, 48]  # stored - 1024


def test_12bit_jpeg_extended_decodes_to_pydicoms_reference_values():
    values = read_frames(_read("JPGExtended.dcm"))
    assert values.shape == (1, 1024, 256)
    assert (values[0, 420, 140], values[0, 230, 120]) == (244, 95)


def test_jpeg2000_ybr_rct_is_rgb():
    values = read_frames(_read("GDCMJ2K_TextGBR.dcm"))[0]
    assert tuple(values[45, 140]) == (223, 32, 32)
    assert tuple(values[46, 140]) == (255, 0, 0)
    assert tuple(values[350, 195]) == (128, 128, 128)


@pytest.mark.parametrize(("name", "frames"), [
    ("rtdose.dcm", 15), ("examples_ybr_color.dcm", 30), ("SC_rgb_rle_2frame.dcm", 2),
    ("liver_1frame.dcm", 1)])
def test_multi_frame_objects_keep_every_frame(name, frames):
    assert len(read_frames(_read(name))) == frames


def test_second_frame_of_sc_rgb_2frame_is_the_first_inverted():
    values = read_frames(_read("SC_rgb_rle_2frame.dcm"))
    np.testing.assert_array_equal(values[1], 255 - values[0])


def test_rt_dose_is_scaled_to_gray():
    values = read_frames(_read("rtdose.dcm"))
    np.testing.assert_allclose(values[0, 0, :3], [1.249, 1.249, 1.250], rtol=1e-6)
    np.testing.assert_allclose(values[7, 4, 3:6], [1.026, 1.023, 1.022], rtol=1e-6)


def test_one_bit_segmentation_unpacks():
    values = read_frames(_read("liver_1frame.dcm"))[0]
    assert tuple(values[155, 310:314]) == (1, 0, 1, 0)
    assert tuple(values[254, 304:310]) == (1, 0, 0, 1, 1, 0)


# --- every syntax GDCM can write round-trips; decoders are permissive ----------------------

GDCM_SYNTAXES = ["JPEGLosslessProcess14", "JPEGLosslessProcess14_1", "JPEGLSLossless",
                 "JPEGLSNearLossless", "JPEG2000Lossless", "JPEG2000", "RLELossless"]


@pytest.fixture(scope="module")
def ct_slice(tmp_path_factory):
    hu = np.random.default_rng(0).integers(-1024, 2000, size=(1, 24, 40)).astype(float)
    folder = tmp_path_factory.mktemp("slice")
    [path] = write_ct_series(hu, folder, SeriesSpec("1.2.826.0.1.3680043.8.498.1",
                                                    "1.2.826.0.1.3680043.8.498.2"))
    return hu, path


@pytest.mark.parametrize("syntax", GDCM_SYNTAXES)
def test_gdcm_transcoded_ct_round_trips_exactly(ct_slice, syntax, tmp_path):
    import gdcm

    hu, source = ct_slice
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(tmp_path / "out.dcm"))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    ds = read_dataset(tmp_path / "out.dcm", "out.dcm")
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    # GDCM's default lossy settings keep these 12-bit values exact
    np.testing.assert_array_equal(read_frames(ds), hu)


def test_every_compressed_syntax_pydicom_knows_has_a_permissive_decoder():
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID, AllTransferSyntaxes

    assert importlib.util.find_spec("libjpeg") is None, "GPL pylibjpeg-libjpeg is installed"
    missing = []
    for uid in map(UID, AllTransferSyntaxes):
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            continue  # video, JPIP: pydicom has no decoder at all (tested below)
        if not decoder.is_available:
            missing.append(uid.name)
    assert not missing, f"no installed decoder for {missing}"


# --- errors: typed, naming file and syntax, saying what to do ------------------------------

def _with_syntax(ds, syntax: str, path: Path) -> Path:
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(("syntax", "advice"), [
    ("1.2.840.10008.1.2.4.102", "ffmpeg"),  # MPEG-4 AVC/H.264
    ("1.2.840.10008.1.2.4.94", "JPIP"),
    ("1.2.826.0.1.3680043.8.498.99", "transcode it"),  # a private syntax
])
def test_undecodable_syntax_is_a_decode_error_naming_file_and_syntax(ct_slice, syntax,
                                                                      advice, tmp_path):
    ds = pydicom.dcmread(ct_slice[1])
    path = _with_syntax(ds, syntax, tmp_path / "odd.dcm")
    with pytest.raises(DicomDecodeError, match=advice) as caught:
        read_frames(read_dataset(path, "odd.dcm"), "odd.dcm")
    assert "odd.dcm" in str(caught.value) and syntax in str(caught.value)


def test_corrupt_codestream_names_file_and_syntax(ct_slice, tmp_path):
    ds = pydicom.dcmread(ct_slice[1])
    path = _with_syntax(ds, "1.2.840.10008.1.2.4.90", tmp_path / "junk.dcm")
    with pytest.raises(DicomDecodeError, match=r"junk\.dcm: pixel data \(JPEG 2000"):
        read_frames(read_dataset(path, "junk.dcm"), "junk.dcm")


def test_headerless_image_is_read_with_the_syntax_it_was_parsed_with(ct_slice, tmp_path):
    hu, source = ct_slice
    ds = pydicom.dcmread(source)
    del ds.file_meta
    ds.preamble = None
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert bare.read_bytes()[:4] == b"\x08\x00\x08\x00"  # starts with the data set itself
    np.testing.assert_array_equal(read_frames(read_dataset(bare, "bare.dcm")), hu)


# --- folders and zip archives -------------------------------------------------------------

@pytest.fixture()
def mixed_folder(tmp_path):
    hu = np.arange(3 * 8 * 8, dtype=float).reshape(3, 8, 8) - 100
    folder = tmp_path / "study"
    paths = write_ct_series(hu, folder / "series", SeriesSpec("1.2.826.0.1.3680043.8.498.3",
                                                              "1.2.826.0.1.3680043.8.498.4"))
    (folder / "notes.txt").write_text("not an image")
    (folder / "series" / "thumbs.db").write_bytes(b"\x00" * 300)
    return hu, folder, paths


def test_folder_skips_non_dicom_and_reads_slices_in_order(mixed_folder):
    hu, folder, paths = mixed_folder
    sources = list(iter_dicom(folder))
    assert [s.name for s in sources] == [str(p) for p in paths]
    np.testing.assert_array_equal(np.concatenate([read_frames(s.dataset) for s in sources]), hu)
    with pytest.raises(NotDicomError, match="notes.txt: not a DICOM file"):
        list(iter_dicom(folder, skip_non_dicom=False))


def test_zip_archive_members_are_read_and_named(mixed_folder, tmp_path):
    hu, folder, paths = mixed_folder
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(folder.rglob("*")):
            zf.write(file, file.relative_to(folder).as_posix())
    sources = list(iter_dicom(archive))
    assert [s.name for s in sources] == [f"{archive}:series/{p.name}" for p in paths]
    np.testing.assert_array_equal(np.concatenate([read_frames(s.dataset) for s in sources]), hu)
    with pytest.raises(NotDicomError, match=r"study\.zip:notes\.txt"):
        list(iter_dicom(archive, skip_non_dicom=False))


def test_zip_inside_a_folder_is_opened(mixed_folder, tmp_path):
    hu, folder, paths = mixed_folder
    outer = tmp_path / "outer"
    outer.mkdir()
    with zipfile.ZipFile(outer / "inner.zip", "w") as zf:
        zf.write(paths[0], "a.dcm")
    [source] = iter_dicom(outer)
    assert source.name == f"{outer / 'inner.zip'}:a.dcm"
    np.testing.assert_array_equal(read_frames(source.dataset)[0], hu[0])


def test_missing_path_raises(tmp_path):
    with pytest.raises(DicomError, match="missing.dcm: no such file or folder"):
        list(iter_dicom(tmp_path / "missing.dcm"))


def test_a_named_non_dicom_file_raises_even_when_skipping(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(NotDicomError, match=r"x\.txt: not a DICOM file"):
        list(iter_dicom(tmp_path / "x.txt"))
