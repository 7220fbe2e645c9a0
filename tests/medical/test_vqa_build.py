"""DICOM + labels -> VQA data: de-identified, rendered, split by patient, pointing back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from domainvlm.errors import ConfigError, DataError, OutputExistsError
from domainvlm.medical.cohort import read_ground_truth, write_cohort
from domainvlm.medical.cohort_questions import ABSENT, cohort_questions, patient_questions
from domainvlm.medical.deid import DeidConfig, remap_uid
from domainvlm.medical.io import iter_dicom
from domainvlm.medical.labels import LabelRow, read_labels, read_public_vqa
from domainvlm.medical.sources import folder_fetcher
from domainvlm.medical.splits import split_patients
from domainvlm.medical.vqa import ViewSpec, build_vqa

KEY = "test-project-key-Vb7Nq2Lm9Xr4Tk8Wz3Pc"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cohort") / "cohort"
    manifest = write_cohort(folder, 10, seed=3, shape=(16, 48, 48))
    rows = cohort_questions(manifest.patients)
    (folder / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def built(cohort, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("vqa") / "vqa"
    build_vqa(folder_fetcher(cohort), cohort / "labels.jsonl", output,
              deid=DeidConfig(project_key=KEY), views=ViewSpec(count=4))
    return output


def records(folder: Path) -> dict[str, list[dict]]:
    return {split: [json.loads(line) for line in (folder / f"{split}.jsonl").read_text()
                    .splitlines()] for split in ("train", "val", "test")}


def test_every_question_lands_once_and_no_patient_is_in_two_splits(cohort, built):
    by_split = records(built)
    labels = read_labels(cohort / "labels.jsonl")
    assert sum(map(len, by_split.values())) == len(labels)
    patients = {split: {r["patient"] for r in rows} for split, rows in by_split.items()}
    assert all(patients.values())
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    build = json.loads((built / "build.json").read_text())
    assert build["records"] == {k: len(v) for k, v in by_split.items()}


def test_workers_build_the_same_data(cohort, built, tmp_path):
    """Series de-identified and rendered in two processes: the same files, records in order."""
    output = tmp_path / "parallel"
    calls = []
    build_vqa(folder_fetcher(cohort), cohort / "labels.jsonl", output,
              deid=DeidConfig(project_key=KEY), views=ViewSpec(count=4), workers=2,
              progress=calls.append)
    assert calls == [1] * 10

    def files(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "build.json"}

    def build(folder: Path) -> dict:
        return {k: v for k, v in json.loads((folder / "build.json").read_text()).items()
                if k != "output"}

    assert files(output) == files(built)
    assert build(output) == build(built)


def test_records_point_back_to_deidentified_slices_and_images_exist(cohort, built):
    manifest = read_ground_truth(cohort)
    truth_by_series = {remap_uid(p.series_uid, KEY): p for p in manifest.patients}
    deid_sops = set()
    for rows in records(built).values():
        for row in rows:
            assert row["series_uid"] in truth_by_series  # remapped, consistently
            (image,) = row["image"]
            assert (built / image).is_file()
            (view,) = row["views"]
            assert len(view["slices"]) == len(view["sop_instance_uids"]) == 4
            deid_sops.update(view["sop_instance_uids"])
    originals = {str(s.dataset.SOPInstanceUID) for s in iter_dicom(cohort)}
    assert deid_sops and not deid_sops & originals
    assert deid_sops <= {remap_uid(uid, KEY) for uid in originals}


def test_no_planted_phi_reaches_the_output(cohort, built):
    planted = set()
    for source in iter_dicom(cohort):
        ds = source.dataset
        for keyword in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName",
                        "ReferringPhysicianName", "OperatorsName", "PatientAddress",
                        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            planted.add(str(ds.get(keyword)).split("^")[0])
    planted.discard("")
    blobs = b"".join(p.read_bytes() for p in built.rglob("*") if p.is_file())
    blobs += "".join(str(p) for p in built.rglob("*")).encode()
    found = [value for value in planted if value.encode() in blobs]
    assert found == []


def test_answers_follow_the_ground_truth(cohort, built):
    truth = {remap_uid(p.series_uid, KEY): p.truth for p in read_ground_truth(cohort).patients}
    for rows in records(built).values():
        for row in rows:
            lesions = truth[row["series_uid"]].lesions
            if row["question"] == "How many lesions are there?":
                assert row["answer"] == ["zero", "one", "two", "three"][len(lesions)]
            if row["question"] == "Is there a liver lesion?":
                assert row["answer"] == ("yes" if any(x.organ == "liver" for x in lesions)
                                         else "no")


def test_the_image_is_an_rgb_composite_of_three_windows(built):
    from PIL import Image

    row = records(built)["train"][0]
    image = np.asarray(Image.open(built / row["image"][0]))
    assert image.ndim == 3 and image.shape[-1] == 3
    assert not np.array_equal(image[..., 0], image[..., 1])  # lung vs mediastinum window
    assert "lung, mediastinum, bone" in row["views"][0]["description"]


@pytest.mark.parametrize("spec, n_images", [
    (ViewSpec(strategy="slices", count=3, window="lung"), 3),
    (ViewSpec(strategy="mip", plane="coronal", window="bone"), 1),
    (ViewSpec(strategy="montage", count=4, window="40,400", image_size=64), 1),
    (ViewSpec(strategy="slabs", count=4, window="lung"), 1),
    (ViewSpec(strategy="slabs", count=4, window="lung", layout="sides", image_size=64), 1),
])
def test_view_strategies(cohort, tmp_path, spec, n_images):
    labels = [r for r in read_labels(cohort / "labels.jsonl")][:2]
    build_vqa(folder_fetcher(cohort), labels, tmp_path / "out",
              deid=DeidConfig(project_key=KEY), views=spec, fractions={"train": 1.0})
    (row, *_) = records_of(tmp_path / "out" / "train.jsonl")
    assert len(row["image"]) == n_images
    if spec.strategy == "slabs":  # every one of the 16 slices shows, in one of 4 slab MIPs
        assert row["views"][0]["slices"] == list(range(16))
        assert "4 axial slab maximum-intensity projections" in row["views"][0]["description"]
    if spec.layout == "sides":
        assert "cut at the body's midline" in row["views"][0]["description"]
    if spec.image_size:
        from PIL import Image

        assert max(Image.open(tmp_path / "out" / row["image"][0]).size) == spec.image_size


@pytest.mark.parametrize("fields, message", [
    ({"strategy": "volume"}, "strategy must be one of"),
    ({"count": 0}, "at least 1"),
    ({"layout": "mirror"}, "layout must be one of grid, sides"),
    ({"strategy": "mip", "layout": "sides"}, "strategy 'mip' has no tiles"),
    ({"window": "lung+bone"}, "three joined by"),
])
def test_view_spec_refuses_what_it_cannot_draw(fields, message):
    with pytest.raises(ConfigError, match=message):
        ViewSpec(**fields)


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_label_without_a_matching_series_names_its_line(cohort, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("series_uid,question,answer\n1.2.3.4,Is there a lesion?,no\n")
    with pytest.raises(DataError, match=r"labels.csv:2: no DICOM series matches"):
        build_vqa(folder_fetcher(cohort), labels, tmp_path / "out",
                  deid=DeidConfig(project_key=KEY))
    assert not (tmp_path / "out").exists()


def test_a_study_label_takes_the_study_and_output_is_never_overwritten(cohort, built, tmp_path):
    patient = read_ground_truth(cohort).patients[0]
    rows = [LabelRow("Is there a lung nodule?", "yes", "x:1", study_uid=patient.study_uid)]
    build_vqa(folder_fetcher(cohort), rows, tmp_path / "one",
              deid=DeidConfig(project_key=KEY), fractions={"test": 1.0})
    (row,) = records_of(tmp_path / "one" / "test.jsonl")
    assert row["series_uid"] == remap_uid(patient.series_uid, KEY)
    with pytest.raises(OutputExistsError):
        build_vqa(folder_fetcher(cohort), rows, built, deid=DeidConfig(project_key=KEY))


# --- label files ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, text, message", [
    ("a.csv", "question,answer\nq?,a\n", r"a.csv:2: needs `study_uid` or `series_uid`"),
    ("a.csv", "series_uid,question,answer\n1.2,q?, \n", r"a.csv:2: `answer` is missing"),
    ("a.jsonl", '{"series_uid": "1", "question": "q", "answer": "a", "answerable": "maybe"}',
     "answerable must be true or false"),
    ("a.jsonl", '{"series_uid": "1", "question": "q", "answer": "a", "question_type": "mcq"}',
     "question_type must be closed or open"),
    ("a.jsonl", "{not json", r"a.jsonl:1: not JSON"),
    ("a.jsonl", "", "holds no questions"),
    ("a.txt", "x", "use .csv or .jsonl"),
])
def test_bad_label_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_labels(path)


def test_label_csv_reads_flags(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("study_uid,question,answer,answerable,question_type\n"
                    "1.2,How big is the cyst?,There is none.,false,OPEN\n")
    (row,) = read_labels(path)
    assert (row.study_uid, row.series_uid, row.answerable, row.question_type) == (
        "1.2", None, False, "open")


def test_vqa_rad_and_slake_json(tmp_path):
    rad = tmp_path / "rad.json"
    rad.write_text(json.dumps([
        {"image_name": "synpic1.jpg", "question": "Is there a mass?", "answer": "yes",
         "answer_type": "CLOSED"},
        {"image_name": "synpic1.jpg", "question": "Where?", "answer": "left lung",
         "answer_type": "OPEN"}]))
    slake = tmp_path / "slake.json"
    slake.write_text(json.dumps([
        {"img_name": "xmlab1/source.jpg", "question": "Which organ?", "answer": "liver",
         "answer_type": "OPEN", "q_lang": "en"},
        {"img_name": "xmlab1/source.jpg", "question": "哪个器官?", "answer": "肝",
         "answer_type": "OPEN", "q_lang": "zh"}]))
    a, b = read_public_vqa(rad)
    assert (a["question_type"], b["question_type"], a["patient"]) == ("closed", "open",
                                                                       "synpic1.jpg")
    assert a["image"] == str(tmp_path / "synpic1.jpg")
    (c,) = read_public_vqa(slake, image_root=tmp_path / "imgs")
    assert c["patient"] == "xmlab1" and c["image"] == str(tmp_path / "imgs/xmlab1/source.jpg")


# --- splits and questions ---------------------------------------------------------------------
def test_split_is_deterministic_order_free_and_proportional():
    patients = [f"p{i}" for i in range(50)]
    first = split_patients(patients, seed=1)
    assert first == split_patients(list(reversed(patients)), seed=1)
    assert first != split_patients(patients, seed=2)
    counts = {s: list(first.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 40, "val": 5, "test": 5}
    with pytest.raises(ConfigError):
        split_patients(patients, {"train": -1.0})


def test_false_premise_questions_state_absence(cohort):
    for patient in read_ground_truth(cohort).patients:
        organs = {lesion.organ for lesion in patient.truth.lesions}
        for row in patient_questions(patient):
            if not row["answerable"]:
                assert row["answer"] == ABSENT
            if "liver lesion" in row["question"] and row["question"] != "Is there a liver lesion?":
                assert row["answerable"] == ("liver" in organs)


def test_public_vqa_is_written_split_by_scan(tmp_path):
    from domainvlm.medical.vqa import write_public_vqa

    items = [{"img_name": f"xmlab{i // 3}/source.jpg", "question": f"q{i}?", "answer": "yes",
              "answer_type": "CLOSED", "q_lang": "en"} for i in range(30)]
    source = tmp_path / "slake.json"
    source.write_text(json.dumps(items))
    counts = write_public_vqa(source, tmp_path / "out", seed=1)
    assert sum(counts.values()) == 30
    scans = {split: {Path(json.loads(x)["image"]).parent.name
                     for x in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()}
             for split in counts}
    assert scans["train"] and scans["test"] and not scans["train"] & scans["test"]
    rows = records_of(tmp_path / "out" / "train.jsonl")
    assert rows[0]["question_type"] == "closed"


def test_resized_views_keep_tiles_and_pixel_size_true(cohort):
    """A montage scaled to image_size still maps each tile box to its slices."""
    from domainvlm.medical.series import load_volume
    from domainvlm.medical.vqa import render_views

    volume = load_volume(cohort / "patient-0000")
    (full,) = render_views(volume, ViewSpec(strategy="slabs", count=4, window="lung"))
    (small,) = render_views(volume, ViewSpec(strategy="slabs", count=4, window="lung",
                                             image_size=max(full.image.shape) // 2))
    assert max(small.image.shape) == max(full.image.shape) // 2
    assert small.pixel_mm == pytest.approx(2 * full.pixel_mm, rel=0.02)
    for big, little in zip(full.tiles, small.tiles, strict=True):
        assert all(abs(2 * b - a) <= 2 for a, b in zip(big, little, strict=True))
        # the same point of the scan, looked up in each image, names the same slices
        centre = ((little[0] + little[2]) // 2, (little[1] + little[3]) // 2)
        assert small.slices_at(*centre) == full.slices_at(2 * centre[0], 2 * centre[1])


# --- label columns that must not travel -------------------------------------------------------
MRN, REPORT = "MRN-5566778899", "Report: Mr Quxworth, 42 Wallaby Way, seen by Dr Drummond."


def phi_labels(cohort: Path, folder: Path, suffix: str) -> Path:
    """Two rows per series of two patients, with an MRN, a report and the known columns."""
    patients = read_ground_truth(cohort).patients[:2]
    rows = [{"series_uid": p.series_uid, "question": q, "answer": "no", "mrn": f"{MRN}{k}",
             "report": REPORT, "category": "presence", "repeat": 2}
            for k, p in enumerate(patients) for q in ("Is there a lung nodule?", "Any mass?")]
    path = folder / f"labels{suffix}"
    if suffix == ".csv":
        import csv

        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def every_byte(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file()) + "".join(
        str(p) for p in folder.rglob("*")).encode()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("keep", [(), ("mrn",)])
def test_unknown_label_columns_never_reach_the_output(cohort, tmp_path, suffix, keep):
    labels = phi_labels(cohort, tmp_path, suffix)
    out = tmp_path / "out"
    report = build_vqa(folder_fetcher(cohort), labels, out, deid=DeidConfig(project_key=KEY),
                       views=ViewSpec(count=2), fractions={"train": 1.0}, keep_columns=keep)
    blob = every_byte(out)
    assert REPORT.encode() not in blob and b"Quxworth" not in blob
    assert (MRN.encode() in blob) == bool(keep)
    rows = records_of(out / "train.jsonl")
    assert len(rows) == 4 and all(r["category"] == "presence" and r["repeat"] == 2 for r in rows)
    assert {tuple(sorted(set(r) & {"mrn", "report"})) for r in rows} == {keep}
    build = json.loads((out / "build.json").read_text())
    expected = ["report"] if keep else ["mrn", "report"]
    assert build["dropped_columns"] == report.dropped_columns == expected
    assert build["kept_columns"] == list(keep)


def test_keeping_a_column_that_is_not_there_is_refused(cohort, tmp_path):
    labels = phi_labels(cohort, tmp_path, ".csv")
    with pytest.raises(ConfigError,
                       match=r"--keep-column MRN: no such column .*category, mrn, repeat, report"):
        build_vqa(folder_fetcher(cohort), labels, tmp_path / "out",
                  deid=DeidConfig(project_key=KEY), keep_columns=["MRN"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cell", ["0", "two", "1.5"])
def test_a_csv_repeat_must_be_a_whole_number(tmp_path, cell):
    path = tmp_path / "labels.csv"
    path.write_text(f"series_uid,question,answer,repeat\n1.2,q?,a,{cell}\n")
    with pytest.raises(DataError, match=r"labels.csv:2: repeat must be a whole number"):
        read_labels(path)
