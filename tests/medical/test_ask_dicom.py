"""`domainvlm ask` on DICOM: a series folder or one file, rendered with the view the adapter's
training data was built with (recorded by fine-tuning from build.json), so it sees a scan as
it saw the training scans. Oracles: the PNGs `build_vqa` wrote for the same series, `eval`'s
prediction on them, `render_views` under the spec, and `domainvlm dicom render`."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testkit import run_cli as run

from domainvlm.ask import ask
from domainvlm.medical.cohort import write_cohort
from domainvlm.medical.cohort_questions import cohort_questions
from domainvlm.medical.deid import DeidConfig, remap_uid
from domainvlm.medical.series import load_volume
from domainvlm.medical.sources import folder_fetcher
from domainvlm.medical.vqa import ViewSpec, build_vqa, render_views

KEY = "test-project-key-Vb7Nq2Lm9Xr4Tk8Wz3Pc"
SPEC = ViewSpec(strategy="slabs", count=4, window="lung", image_size=64)  # not the default
TOKENS = "4"


@pytest.fixture(scope="module")
def world(tiny_models, tmp_path_factory) -> dict:
    """A 3-patient CT cohort, its VQA build under SPEC, and an adapter fine-tuned on it."""
    from domainvlm.train.config import FinetuneConfig
    from domainvlm.train.loop import finetune

    root = tmp_path_factory.mktemp("ask-dicom")
    manifest = write_cohort(root / "cohort", 3, seed=2, shape=(8, 32, 32))
    labels = root / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in cohort_questions(manifest.patients)))
    build_vqa(folder_fetcher(root / "cohort"), labels, root / "vqa",
              deid=DeidConfig(project_key=KEY), views=SPEC,
              fractions={"train": 1.0, "val": 0.0, "test": 0.0})
    model = tiny_models("llava")
    adapter = finetune(FinetuneConfig(model=model, data=root / "vqa" / "train.jsonl",
                                      output=root / "run", max_steps=1, batch_size=4,
                                      cache_dir=root / "cache")).adapter
    patient = manifest.patients[0]
    return {"root": root, "model": model, "adapter": adapter,
            "series": root / "cohort" / patient.series_folder,
            "built_uid": remap_uid(patient.series_uid, KEY),
            "records": [json.loads(line) for line in
                        (root / "vqa" / "train.jsonl").read_text().splitlines()]}


def pixels(images) -> list[tuple[tuple[int, ...], bytes]]:
    """Each image as the model receives it (RGB), comparable with ==."""
    arrays = [np.asarray(image.convert("RGB")) for image in images]
    return [(array.shape, array.tobytes()) for array in arrays]


def rendered(source: Path, spec: ViewSpec) -> list[tuple[tuple[int, ...], bytes]]:
    return pixels(view.to_pil() for view in render_views(load_volume(source), spec))


def test_finetune_records_the_data_view_and_merge_carries_it(world):
    build = json.loads((world["root"] / "vqa" / "build.json").read_text())
    recorded = json.loads((world["adapter"] / "data_views.json").read_text())
    assert recorded == {"views": build["views"]} == {"views": dataclasses.asdict(SPEC)}
    from domainvlm import merge

    merged = merge(world["adapter"], world["root"] / "merged")
    assert json.loads((merged / "data_views.json").read_text()) == recorded


def test_a_series_is_shown_as_its_training_images_were(world):
    asked = ask(world["adapter"], world["series"], ["Is there a lung nodule?"],
                max_new_tokens=1)
    shown = asked.inputs[0]
    assert (shown.kind, shown.view, shown.view_from) == ("dicom", dataclasses.asdict(SPEC),
                                                         "recorded")
    built = sorted((world["root"] / "vqa" / "images" / world["built_uid"]).glob("view-*.png"))
    assert len(built) == 1  # one slab montage
    assert pixels(shown.images) == pixels(Image.open(p) for p in built)
    assert pixels(shown.images) == rendered(world["series"], SPEC)


def test_ask_on_a_series_answers_as_eval_does_on_its_training_images(world, tmp_path, capsys,
                                                                     monkeypatch):
    from domainvlm.evaluation.run import evaluate

    record = next(r for r in world["records"] if r["series_uid"] == world["built_uid"])
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({**record, "image": [str(world["root"] / "vqa" / i)
                                                    for i in record["image"]]}) + "\n")
    evaluate(world["adapter"], data, tmp_path / "eval", max_new_tokens=int(TOKENS))
    expected = json.loads((tmp_path / "eval" / "predictions.jsonl").read_text())["prediction"]
    code, out, err = run(capsys, monkeypatch, "ask", "--model", world["adapter"], "--image",
                         world["series"], "--max-new-tokens", TOKENS, "--json",
                         record["question"])
    assert code == 0, err
    result = json.loads(out)
    assert result["answer"] == expected
    assert result["base"] == str(Path(world["model"]).resolve())
    [shown] = result["images"]
    assert (shown["kind"], shown["images"], shown["view"], shown["view_from"]) == \
        ("dicom", 1, dataclasses.asdict(SPEC), "recorded")
    assert shown["description"].startswith("DICOM CT series of 8 slices: montage of 4 axial "
                                           "slab maximum-intensity projections")
    # Without --json: the answer alone on stdout, what was shown and whose view on stderr.
    code, out, err = run(capsys, monkeypatch, "ask", "--model", world["adapter"], "--image",
                         world["series"], "--max-new-tokens", TOKENS, record["question"])
    assert (code, out) == (0, expected + "\n")
    assert "view: the view recorded with the model's training data: strategy=slabs,count=4," \
        in err


def test_one_file_of_a_series_is_rendered_with_the_same_view(world, capsys, monkeypatch):
    one = sorted(world["series"].glob("*.dcm"))[3]
    asked = ask(world["adapter"], [one], ["Which side?"], max_new_tokens=1)
    assert pixels(asked.inputs[0].images) == rendered(one, SPEC)
    code, out, err = run(capsys, monkeypatch, "ask", "--model", world["adapter"], "--image",
                         one, "--image", world["series"], "--json", "Which side?")
    assert code == 0, err
    assert [i["description"].split(":")[0] for i in json.loads(out)["images"]] == \
        ["DICOM CT series of 1 slice", "DICOM CT series of 8 slices"]


def test_the_recorded_view_decides_the_images(world, tmp_path):
    """Record another view in a copy of the adapter: the same series gives other images,
    those of the new view."""
    other = ViewSpec(strategy="montage", count=2, window="composite", image_size=48)
    copy = tmp_path / "adapter"
    shutil.copytree(world["adapter"], copy)
    (copy / "data_views.json").write_text(json.dumps({"views": dataclasses.asdict(other)}))
    before = ask(world["adapter"], world["series"], ["Q?"], max_new_tokens=1).inputs[0]
    after = ask(copy, world["series"], ["Q?"], max_new_tokens=1).inputs[0]
    assert after.view == dataclasses.asdict(other)
    assert pixels(after.images) == rendered(world["series"], other)
    assert pixels(after.images) != pixels(before.images)


def test_view_fields_given_override_the_recorded_ones(world, capsys, monkeypatch):
    changed = dataclasses.replace(SPEC, count=2, window="40,400")
    asked = ask(world["adapter"], world["series"], ["Q?"], view="count=2,window=40,400",
                max_new_tokens=1)
    assert (asked.inputs[0].view, asked.inputs[0].view_from) == \
        (dataclasses.asdict(changed), "recorded+given")
    assert pixels(asked.inputs[0].images) == rendered(world["series"], changed)
    code, out, _ = run(capsys, monkeypatch, "ask", "--model", world["adapter"], "--image",
                       world["series"], "--view", '{"strategy": "mip", "plane": "coronal"}',
                       "--max-new-tokens", "1", "--json", "Q?")
    assert code == 0
    assert json.loads(out)["images"][0]["view"] == {**dataclasses.asdict(SPEC),
                                                    "strategy": "mip", "plane": "coronal"}


def test_a_model_without_a_recorded_view_uses_the_default_one(world):
    asked = ask(world["model"], world["series"], ["Q?"], max_new_tokens=1)
    assert (asked.inputs[0].view, asked.inputs[0].view_from) == \
        (dataclasses.asdict(ViewSpec()), "default")
    assert pixels(asked.inputs[0].images) == rendered(world["series"], ViewSpec())


def test_an_image_without_slice_geometry_is_shown_as_dicom_render_shows_it(
        world, tmp_path, capsys, monkeypatch):
    from pydicom.data import get_testdata_file

    ultrasound = Path(get_testdata_file("examples_rgb_color.dcm"))
    code, _, err = run(capsys, monkeypatch, "dicom", "render", ultrasound, tmp_path / "us.png")
    assert code == 0, err
    asked = ask(world["model"], ultrasound, ["Q?"], max_new_tokens=1)
    assert asked.inputs[0].view is None and asked.inputs[0].view_from is None
    assert pixels(asked.inputs[0].images) == pixels([Image.open(tmp_path / "us.png")])


@pytest.mark.parametrize(("image", "view", "message"), [
    ("cohort", None, r"cohort: holds 3 series; ask about one series"),
    ("series", "count=two", r"view count must be a whole number, got 'two'"),
    ("series", "slices=4", r"view: unknown field 'slices'; the fields are strategy, count"),
    ("series", "strategy=spiral", r"view strategy must be one of montage, slabs"),
], ids=["several series", "count not a number", "unknown field", "unknown strategy"])
def test_unusable_dicom_or_view_is_one_line_and_exit_2(image, view, message, world, capsys,
                                                       monkeypatch):
    path = world["root"] / "cohort" if image == "cohort" else world["series"]
    code, out, err = run(capsys, monkeypatch, "ask", "--model", world["adapter"], "--image",
                         path, *(["--view", view] if view else []), "Q?")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), err
