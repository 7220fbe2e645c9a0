"""The Python API: exactly the documented names, loaded lazily, and a notebook session on a tiny
model (fine-tune -> evaluate -> answer -> merge -> load) whose answers agree with `evaluate`'s
predictions, the independent path that scores them."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import domainvlm
import domainvlm.medical

API = {  # name -> (module, attribute): what the README documents
    "FinetuneConfig": ("domainvlm.train.config", "FinetuneConfig"),
    "finetune": ("domainvlm.train.loop", "finetune"),
    "evaluate": ("domainvlm.evaluation.run", "evaluate"),
    "load_model": ("domainvlm.loading", "load_model"),
    "load_with_adapter": ("domainvlm.adapter_io", "load_with_adapter"),
    "merge": ("domainvlm.adapter_io", "merge_adapter"),
    "answer": ("domainvlm.ask", "answer"),
}
MEDICAL_API = {
    "iter_dicom": "io", "read_frames": "io", "load_volume": "series", "Volume": "series",
    "render_frame": "render", "ViewSpec": "vqa", "render_views": "vqa", "View": "views",
    "DeidConfig": "deid", "deidentify": "deid", "deidentify_tree": "deid",
    "write_key_file": "keys", "read_key_file": "keys", "build_vqa": "vqa",
    "folder_fetcher": "sources", "write_public_vqa": "vqa",
    "DomainvlmDicomReader": "monai_reader", "DicomError": "errors",
}


@pytest.mark.parametrize(("package", "table"), [
    (domainvlm, {k: v for k, v in API.items()}),
    (domainvlm.medical, {k: (f"domainvlm.medical.{m}", k) for k, m in MEDICAL_API.items()}),
], ids=["domainvlm", "domainvlm.medical"])
def test_the_public_names_are_exactly_the_documented_ones(package, table):
    assert sorted(package.__all__) == sorted(table)
    assert len(set(package.__all__)) == len(package.__all__)
    for name, (module, attribute) in table.items():
        assert getattr(package, name) is getattr(importlib.import_module(module), attribute)
        assert name in dir(package)
    star: dict = {}
    exec(f"from {package.__name__} import *", star)
    assert set(star) - {"__builtins__"} == set(table)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


def test_every_public_function_and_config_documents_an_example():
    results = {"Volume", "View", "DicomError"}  # what the functions return or raise
    for package in (domainvlm, domainvlm.medical):
        for name in set(package.__all__) - results:
            assert "Example::" in (getattr(package, name).__doc__ or ""), \
                f"{package.__name__}.{name}"


def test_importing_the_packages_imports_no_heavy_library():
    """`import domainvlm` (and `domainvlm --help`) must stay fast: the names load on use."""
    code = ("import sys, domainvlm, domainvlm.medical, domainvlm.cli; "
            "dir(domainvlm); dir(domainvlm.medical); "
            "print([m for m in ('torch', 'transformers', 'peft', 'numpy', 'pydicom') "
            "if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.fixture(scope="module")
def session(tiny_models, shapes_data, tmp_path_factory) -> dict:
    """What a notebook user does first: configure with Paths, fine-tune, evaluate."""
    from domainvlm import FinetuneConfig, evaluate, finetune

    root = tmp_path_factory.mktemp("api-session")
    rows = [json.loads(line) for line in shapes_data["eval"].read_text().splitlines()][:3]
    folder = shapes_data["eval"].parent
    two = {"image": [rows[0]["image"], rows[2]["image"]], "question": rows[1]["question"],
           "answer": rows[1]["answer"]}  # two images, one question
    test = folder / "api-test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in [*rows, two]))
    cfg = FinetuneConfig(model=tiny_models("llava"), data=shapes_data["train"],
                         eval_data=shapes_data["eval"], output=root / "run", max_steps=2,
                         batch_size=4, learning_rate=1e-3, cache_dir=root / "cache")
    result = finetune(cfg)
    metrics = evaluate(result.adapter, test, output=str(root / "eval"), max_new_tokens=6)
    predictions = [json.loads(line)
                   for line in (root / "eval" / "predictions.jsonl").read_text().splitlines()]
    return {"root": root, "result": result, "metrics": metrics, "predictions": predictions,
            "records": [*rows, two], "folder": folder, "base": tiny_models("llava")}


def test_finetune_and_evaluate_from_python(session):
    result, metrics = session["result"], session["metrics"]
    assert result.adapter == session["root"] / "run" / "adapter"
    assert (result.adapter / "adapter_config.json").is_file()
    assert result.steps == 2 and result.final_loss is not None
    assert result.best_eval_loss is not None
    assert metrics["n"] == 4 and set(metrics["vqa"]) >= {"accuracy", "closed_accuracy"}


def test_answer_is_what_evaluate_predicts_for_the_same_record(session):
    from domainvlm import answer

    adapter, folder = session["result"].adapter, session["folder"]
    records, predictions = session["records"], session["predictions"]
    image = folder / records[0]["image"]
    assert answer(adapter, image, records[0]["question"], max_new_tokens=6) == \
        predictions[0]["prediction"]
    # A list of questions about the same image: a list of answers, in order.
    assert answer(str(adapter), str(image), [records[0]["question"], records[1]["question"]],
                  max_new_tokens=6) == [predictions[0]["prediction"],
                                        answer(adapter, image, records[1]["question"],
                                               max_new_tokens=6)]
    # Several images: all shown with the one question, in order, as a multi-image record.
    both = [folder / name for name in records[3]["image"]]
    assert answer(adapter, both, records[3]["question"], max_new_tokens=6) == \
        predictions[3]["prediction"]


def test_a_loaded_or_merged_model_answers_as_the_adapter_does(session):
    from domainvlm import answer, load_model, load_with_adapter, merge
    from domainvlm.loading import LoadedModel

    adapter, folder = session["result"].adapter, session["folder"]
    record, expected = session["records"][2], session["predictions"][2]["prediction"]
    loaded = load_with_adapter(adapter)
    assert isinstance(loaded, LoadedModel) and loaded.source == str(adapter)
    assert answer(loaded, folder / record["image"], record["question"],
                  max_new_tokens=6) == expected
    merged = merge(adapter, session["root"] / "merged")
    assert isinstance(merged, Path) and (merged / "config.json").is_file()
    assert not (merged / "adapter_config.json").exists()
    plain = load_model(merged)
    assert answer(plain, folder / record["image"], record["question"],
                  max_new_tokens=6) == expected
    # ... and the adapter matters: the base alone answers otherwise.
    assert answer(session["base"], folder / record["image"], record["question"],
                  max_new_tokens=6) != expected


def test_answer_refuses_bad_input_before_loading_a_model(session, tmp_path):
    from domainvlm import answer, load_with_adapter
    from domainvlm.errors import ConfigError, DataError

    adapter = session["result"].adapter
    with pytest.raises(DataError, match="does not exist"):
        answer(adapter, tmp_path / "missing.png", "Is there a circle?")
    with pytest.raises(DataError, match="no image given"):
        answer(adapter, [], "Is there a circle?")
    image = session["folder"] / session["records"][0]["image"]
    with pytest.raises(DataError, match="question 1 is empty"):
        answer(adapter, image, " ")
    with pytest.raises(ConfigError, match="`base` applies"):
        answer(load_with_adapter(adapter), image, "Is there a circle?", base="another")
