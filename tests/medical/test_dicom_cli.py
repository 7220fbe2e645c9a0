"""`domainvlm dicom ...` end to end through the installed command: output, exit codes, no PHI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from domainvlm.medical.io import iter_dicom

CLI_KEY = "cli-key-Hd4Rw8Nq2Zm7Lx3Vb9Tk6PyQs"


def cli(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domainvlm.cli", "dicom", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "cohort"
    result = cli("synth", folder, "--patients", 3, "--slices", 8, "--size", 32, "--seed", 5)
    assert result.returncode == 0, result.stderr
    assert "3 patients, 24 questions" in result.stdout
    return folder


def phi_of(folder: Path) -> list[str]:
    ds = next(iter_dicom(folder)).dataset
    return [str(ds.PatientName).split("^")[0], str(ds.PatientID), str(ds.AccessionNumber),
            str(ds.InstitutionName), str(ds.StudyInstanceUID)]


def test_info_lists_series_without_phi(cohort):
    result = cli("info", cohort)
    assert result.returncode == 0, result.stderr
    assert "24 DICOM objects in 3 series" in result.stdout
    assert "CT" in result.stdout and "32 x 32" in result.stdout
    assert not [v for v in phi_of(cohort) if v in result.stdout + result.stderr]


def test_render_writes_png(cohort, tmp_path):
    from PIL import Image

    out = tmp_path / "scan.png"
    result = cli("render", cohort / "patient-0000", out, "--window", "composite", "--count", 4)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).mode == "RGB"
    result = cli("render", cohort / "patient-0000", tmp_path / "s.png", "--strategy", "slices",
                 "--count", 2)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.glob("s-*.png")) == ["s-0.png", "s-1.png"]
    result = cli("render", cohort / "patient-0000", tmp_path / "h.png", "--strategy", "slabs",
                 "--layout", "sides", "--count", 2)
    assert result.returncode == 0, result.stderr
    width, height = Image.open(tmp_path / "h.png").size
    assert width == height  # the halves, padded to a square


def test_render_refuses_several_series(cohort, tmp_path):
    result = cli("render", cohort, tmp_path / "x.png")
    assert result.returncode == 2
    assert "holds 3 series" in result.stderr and "Traceback" not in result.stderr


def test_deid_then_build_vqa(cohort, tmp_path):
    env = {"DOMAINVLM_PROJECT_KEY": CLI_KEY}
    result = cli("deid", cohort, tmp_path / "clean", env=env)
    assert result.returncode == 0, result.stderr
    assert "24 files, 3 series, 3 studies, 3 patients" in result.stdout
    blob = b"".join(p.read_bytes() for p in (tmp_path / "clean").rglob("*.dcm"))
    assert not [v for v in phi_of(cohort) if v.encode() in blob]
    again = cli("deid", cohort, tmp_path / "clean", env=env)
    assert again.returncode == 2 and "already exists" in again.stderr
    result = cli("build-vqa", cohort, cohort / "labels.jsonl", tmp_path / "vqa",
                 "--split", "0.67,0,0.33", env=env)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(x) for x in (tmp_path / "vqa" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {r["question_type"] for r in rows} == {"closed", "open"}


@pytest.mark.parametrize("args, message", [
    (("deid", "{cohort}", "{tmp}/o"), "no project key: make one with `domainvlm dicom keygen"),
    (("deid", "{cohort}", "{tmp}/o", "--project-key", "change-me"), "well-known example value"),
    (("deid", "{cohort}", "{tmp}/o", "--project-key", "password"), "well-known example value"),
    (("deid", "{cohort}", "{tmp}/o", "--project-key", "domainvlm-demo"),
     "--project-key is a well-known"),
    (("build-vqa", "{cohort}", "{cohort}/labels.jsonl", "{tmp}/o", "--project-key",
      "hospital-2026-study"), "19 characters long, too short"),
    (("deid", "{cohort}", "{tmp}/o", "--project-key", CLI_KEY, "--project-key-file",
      "{tmp}/k"), "not both"),
    (("deid", "{cohort}", "{tmp}/o", "--project-key-file", "{tmp}/missing.key"),
     "missing.key: cannot be read"),
    (("deid", "{tmp}/nothing", "{tmp}/o", "--project-key", CLI_KEY), "no such file or folder"),
    (("info", "{tmp}"), "no DICOM files found"),
    (("build-vqa", "{cohort}", "{cohort}/labels.jsonl", "{tmp}/o", "--project-key", CLI_KEY,
      "--window", "sunset"), "unknown window preset"),
    (("build-vqa", "{cohort}", "{cohort}/labels.jsonl", "{tmp}/o", "--project-key", CLI_KEY,
      "--split", "0.5,0.5"), "give three fractions"),
])
def test_bad_input_is_one_line_and_exit_2(cohort, tmp_path, args, message):
    result = cli(*(a.format(cohort=cohort, tmp=tmp_path) for a in args))
    assert result.returncode == 2
    assert message.lower() in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_import_vqa_command(tmp_path):
    items = [{"image_name": f"synpic{i}.jpg", "question": "Is there a mass?", "answer": "no",
              "answer_type": "CLOSED"} for i in range(10)]
    (tmp_path / "rad.json").write_text(json.dumps(items))
    result = cli("import-vqa", tmp_path / "rad.json", tmp_path / "out", "--split", "0.5,0,0.5")
    assert result.returncode == 0, result.stderr
    assert "train: 5 questions" in result.stdout and "test: 5 questions" in result.stdout


def test_keygen_key_file_works_and_is_never_overwritten(cohort, tmp_path):
    import stat

    key_file = tmp_path / "keys" / "project.key"
    result = cli("keygen", key_file)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 32 and key not in result.stdout + result.stderr  # never printed
    before = key_file.read_bytes()
    again = cli("keygen", key_file)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert key_file.read_bytes() == before
    assert len(list(key_file.parent.iterdir())) == 1  # no temporary file left behind
    labels = tmp_path / "labels.csv"
    rows = [json.loads(x) for x in (cohort / "labels.jsonl").read_text().splitlines()][:4]
    labels.write_text("series_uid,question,answer,mrn,report\n" + "".join(
        f"{r['series_uid']},{r['question']},{r['answer']},MRN-{k}-8899,Seen by Dr Quux\n"
        for k, r in enumerate(rows)))
    result = cli("build-vqa", cohort, labels, tmp_path / "vqa", "--split", "1,0,0",
                 "--keep-column", "mrn", env={"DOMAINVLM_PROJECT_KEY_FILE": str(key_file)})
    assert result.returncode == 0, result.stderr
    assert "left out of the records (they may hold patient data): report" in result.stdout
    assert "kept by --keep-column (your responsibility): mrn" in result.stdout
    text = (tmp_path / "vqa" / "train.jsonl").read_text()
    assert "MRN-0-8899" in text and "Quux" not in text
    key_file.chmod(0o644)
    result = cli("deid", cohort, tmp_path / "clean", "--project-key-file", key_file)
    assert result.returncode == 2 and "chmod 600" in result.stderr
    assert key not in result.stderr


def test_deid_refuses_ultrasound_without_the_tag_and_reports_what_it_let_through(tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    folder = tmp_path / "us"
    folder.mkdir()
    shutil.copy(get_testdata_file("ExplVR_BigEnd.dcm"), folder / "us.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    env = {"DOMAINVLM_PROJECT_KEY": CLI_KEY}
    result = cli("deid", folder, tmp_path / "out", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "us.dcm: Ultrasound Image without BurnedInAnnotation" in result.stderr
    result = cli("deid", folder, tmp_path / "out", "--allow-burned-in", env=env)
    assert result.returncode == 0, result.stderr
    assert "0 marked BurnedInAnnotation=YES, 1 of a kind that often shows text" in result.stdout
    assert "1 files say PatientIdentityRemoved=NO" in result.stdout


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Two good CT files, one that ends inside a sequence item, one with a malformed
    attribute."""
    import struct

    from pydicom.data import get_testdata_file

    folder = tmp_path / "mixed"
    folder.mkdir()
    good = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (folder / "a-good.dcm").write_bytes(good)
    syntax = b"1.2.840.10008.1.2.1\0"  # meta group, then a sequence cut off inside an item
    (folder / "b-truncated.dcm").write_bytes(
        b"\0" * 128 + b"DICM" + struct.pack("<HH2sHI", 2, 0, b"UL", 4, 28)
        + struct.pack("<HH2sH", 2, 0x10, b"UI", len(syntax)) + syntax
        + struct.pack("<HH2sHI", 8, 0x1140, b"SQ", 0, 0xFFFFFFFF) + b"\xfe\xff\x00\xe0"
        + b"\xff\xff\xff\xff" + b"\x08\x00\x50\x11UI\x40\x00")
    (folder / "c-badvr.dcm").write_bytes(Path(get_testdata_file("badVR.dcm")).read_bytes())
    import pydicom

    second = pydicom.dcmread(folder / "a-good.dcm")
    second.SOPInstanceUID = second.SOPInstanceUID + ".2"
    second.SeriesInstanceUID = second.SeriesInstanceUID + ".2"  # a series of its own
    second.save_as(folder / "d-good.dcm")
    return folder


@pytest.mark.parametrize("command", ["info", "deid", "build-vqa"])
def test_broken_files_in_a_folder_are_listed_and_the_rest_processed(command, mixed_folder,
                                                                     tmp_path):
    """One broken file no longer aborts the folder: the good ones are processed, the bad ones
    listed on stderr, and the exit code (1) says that not all went through."""
    import pydicom

    key = {"DOMAINVLM_PROJECT_KEY": CLI_KEY}
    if command == "info":
        result = cli("info", mixed_folder)
    elif command == "deid":
        result = cli("deid", mixed_folder, tmp_path / "clean", env=key)
    else:
        study = pydicom.dcmread(mixed_folder / "a-good.dcm").StudyInstanceUID
        labels = tmp_path / "labels.jsonl"
        labels.write_text(json.dumps({"study_uid": study, "question": "Is there a nodule?",
                                      "answer": "no"}) + "\n")
        result = cli("build-vqa", mixed_folder, labels, tmp_path / "vqa", "--strategy",
                     "slices", "--count", "1", "--split", "1,0,0", env=key)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    listed = result.stderr.split("skipped:", 1)[1]
    assert "b-truncated.dcm" in listed and "a-good.dcm" not in listed
    assert "d-good.dcm" not in listed
    if command == "info":
        assert "2 DICOM objects in 2 series" in result.stdout and "c-badvr.dcm" in listed
    elif command == "deid":
        assert len(list((tmp_path / "clean").rglob("*.dcm"))) == 3  # the two CTs and badVR
    else:
        assert "train: 1 questions" in result.stdout


def test_info_reads_pydicoms_whole_test_folder():
    """pydicom's own corpus (broken files included) gives a table and a list, never a
    traceback."""
    from pydicom.data import get_testdata_file

    result = cli("info", Path(get_testdata_file("CT_small.dcm")).parent)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "DICOM objects in" in result.stdout
    assert "badVR.dcm: malformed image attributes" in result.stderr


QUIET_VARIABLES = ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "PYTHONWARNINGS",
                   "DOMAINVLM_QUIET")  # an earlier in-process CLI run may have set them here


def plain_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in QUIET_VARIABLES}, **extra}


# (pydicom test file, exit code, what its decoder (or pydicom) prints on stderr)
NOISY_FILES = [
    ("JPEG-lossy.dcm", 0, "Unsupported JPEG data precision 12"),  # libjpeg in GDCM, then ok
    ("JPEG2000-embedded-sequence-delimiter.dcm", 2, "Invalid number of tiles"),  # OpenJPEG
    ("SC_rgb_jpeg.dcm", 0, "UserWarning: Expected explicit VR"),  # pydicom, as it reads
]


@pytest.mark.parametrize(("name", "code", "noise"), NOISY_FILES)
def test_decoder_noise_is_hidden_unless_verbose(name, code, noise, tmp_path):
    """What the C decoders print about a file, and pydicom's notes on what it repaired, stay
    off the user's terminal; a file that cannot be decoded still ends in our one error line;
    `--verbose` shows them all."""
    from pydicom.data import get_testdata_file

    def render(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "domainvlm.cli", *flags, "dicom", "render",
             get_testdata_file(name), str(tmp_path / f"{len(flags)}.png")],
            capture_output=True, text=True, timeout=300, env=plain_env())

    quiet, loud = render(), render("--verbose")
    assert quiet.returncode == loud.returncode == code, quiet.stderr + loud.stderr
    assert noise in loud.stderr  # there is noise to hide
    if code == 0:
        assert quiet.stderr == "" and (tmp_path / "0.png").stat().st_size > 0
    else:
        [line] = quiet.stderr.splitlines()
        assert line.startswith("error: ") and "cannot be decoded" in line


def test_worker_processes_are_as_quiet_as_their_parent():
    """Series decoded in worker processes (the demo's cohort and views): neither the decoders'
    fd 2 messages nor pydicom's notes on what it repaired, unless the parent is verbose."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pydicom.data import get_testdata_file\n"
        "from domainvlm.medical.io import read_dataset, read_frames\n"
        "from domainvlm.parallel import map_in_order\n"
        "from domainvlm.quiet import quiet_libraries\n"
        "if sys.argv[1] == 'quiet':\n"
        "    quiet_libraries()\n"
        "names = ('JPEG-lossy.dcm', 'SC_rgb_jpeg.dcm')  # noisy to decode; to read\n"
        "read = map_in_order(read_dataset, [(Path(get_testdata_file(n)), n) for n in names], 2)\n"
        "calls = [(ds, name) for ds, name in zip(read, names)]\n"
        "print([frames.shape for frames in map_in_order(read_frames, calls, workers=2)])\n")

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                              text=True, timeout=300, env=plain_env())

    quiet, loud = run("quiet"), run("verbose")
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    assert quiet.stdout == loud.stdout == "[(1, 1024, 256), (1, 256, 256, 3)]\n"
    assert "Unsupported JPEG" in loud.stderr and "found implicit VR" in loud.stderr
    assert quiet.stderr == ""


def test_info_names_each_series_in_80_columns(tmp_path):
    """Each series by the end of its UID, its description and its folder; no line over 80
    columns; no name, id or date of the patient, also when a description holds one."""
    import shutil

    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series

    phi = {"PatientName": "Smith^Johanna", "PatientID": "MRN-48213", "PatientBirthDate":
           "19610214", "StudyDate": "20240315", "AccessionNumber": "ACC99812"}
    folder, study = tmp_path / "scans", generate_uid()
    expected = {}  # where -> (series UID, what stands for its description)
    for place, text, shown in [
            ("chest-ct", "CHEST CT 1.25 mm soft tissue", '"CHEST CT 1.25 mm soft tissue"'),
            ("follow-up", "Smith follow-up", "(description withheld: patient data)"),
            ("dated", "CT 2024-03-15", "(description withheld: patient data)")]:
        uid = generate_uid()
        write_ct_series(np.zeros((3, 16, 16)), folder / "patient" / place,
                        SeriesSpec(study, uid, description=text, attributes=phi))
        expected[f"patient/{place}/"] = (uid, shown)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "CT_small.dcm")
    small = pydicom.dcmread(folder / "CT_small.dcm", stop_before_pixels=True)
    expected["CT_small.dcm"] = (str(small.SeriesInstanceUID), "(no description)")

    result = subprocess.run([sys.executable, "-m", "domainvlm.cli", "dicom", "info", folder],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "10 DICOM objects in 4 series"
    assert max(map(len, lines)) <= 80, result.stdout
    for place, (uid, shown) in expected.items():
        [named] = [line for line in lines if line.endswith(f"  {place}")]
        assert f"…{uid[-8:]}  {shown}  " in named, named
    assert "CT, 3 images, 16 x 16 px of 1 x 1 mm" in result.stdout
    patient = [*phi.values(), "Johanna", "Smith", "1961", str(small.PatientName),
               str(small.PatientID)]
    assert not [value for value in patient if value in result.stdout + result.stderr]


def test_a_malformed_frame_count_is_one_clear_error_wherever_a_file_is_shown(tmp_path):
    """badVR.dcm's NumberOfFrames is "1A": `dicom render` and the reader behind `ask` end in
    one DicomError naming the file and the attribute, not a bare ValueError."""
    from pydicom.data import get_testdata_file

    from domainvlm.medical.errors import DicomDecodeError
    from domainvlm.medical.image_reader import read_dicom

    bad = get_testdata_file("badVR.dcm")
    result = cli("render", bad, tmp_path / "out.png")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: NumberOfFrames is not a whole")
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(DicomDecodeError, match="NumberOfFrames is not a whole number"):
        read_dicom(Path(bad), {})
