"""`evaluate` end to end on tiny real models, `score` on hand-made answers, batched generation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel
from testkit import ALL_FAMILIES

from domainvlm.adapter_io import load_with_adapter
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record, load_records
from domainvlm.errors import DataError, ModelLoadError
from domainvlm.evaluation.generate import generate_answers
from domainvlm.evaluation.metrics import abstention_rate, vqa_accuracy
from domainvlm.evaluation.run import evaluate, score
from domainvlm.models.parts import part_of
from domainvlm.train.config import build_config
from domainvlm.train.loop import finetune

TEXT_KEYS = {"bleu4", "rouge_l", "meteor", "cider"}
VQA_KEYS = {"accuracy", "n", "closed_accuracy", "closed_n", "open_accuracy", "open_n"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads and lose much when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_data(shapes_data, path, *, closed_only=False, false_premises=False):
    """The shapes eval questions as a .jsonl with absolute image paths, optionally reshaped."""
    folder = shapes_data["eval"].parent
    rows = [json.loads(line) for line in shapes_data["eval"].read_text().splitlines()]
    # Only the shapes' answerable questions, without the flag unless false premises are asked.
    rows = [{**{k: v for k, v in row.items() if k != "answerable"},
             "image": str(folder / row["image"])} for row in rows
            if row["answerable"] and (not closed_only or row["question_type"] == "closed")]
    if false_premises:
        rows = [{**row, "answerable": True} for row in rows]
        rows += [{"image": rows[i]["image"], "question": "How large is the purple star?",
                  "answer": "none", "question_type": "open", "answerable": False}
                 for i in (0, 5)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_predictions(folder):
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# evaluate() end to end
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "false_premises"),
                         [("llava", False), ("qwen2-vl", True), ("mllama", False)])
def test_evaluate_writes_one_prediction_per_record_and_all_metrics(
        tiny_models, shapes_data, tmp_path, family, false_premises):
    model = str(tiny_models(family))
    data = write_data(shapes_data, tmp_path / "eval.jsonl", false_premises=false_premises)
    records = load_records(data)
    metrics = evaluate(model, str(data), tmp_path / "out", batch_size=4, max_new_tokens=8)

    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    rows = read_predictions(tmp_path / "out")
    assert len(rows) == len(records) == metrics["n"]
    for row, record in zip(rows, records, strict=True):
        assert (row["source"], row["question"], row["answer"]) == \
            (record.source, record.question, record.answer)
        assert isinstance(row["prediction"], str)
    assert metrics["model"] == model and metrics["data"] == str(data)

    predictions = [row["prediction"] for row in rows]
    types = [r.question_type for r in records]
    assert set(metrics["vqa"]) == VQA_KEYS
    assert metrics["vqa"] == vqa_accuracy(predictions, [r.answer for r in records], types)
    assert metrics["vqa"]["closed_n"] == types.count("closed") > 0
    assert metrics["vqa"]["open_n"] == types.count("open") > 0
    assert set(metrics["open_text"]) == TEXT_KEYS
    assert all(isinstance(v, float) for v in metrics["open_text"].values())
    if false_premises:
        assert metrics["abstention"] == abstention_rate(
            predictions, [r.answerable is not False for r in records])
        assert metrics["abstention"]["unanswerable_n"] == 2
    else:
        assert "abstention" not in metrics


@pytest.mark.parametrize(("field", "value"), [("question_type", "yes/no"),
                                              ("answerable", "false"), ("category", 3)])
def test_a_bad_field_stops_evaluation_when_the_data_is_read(tiny_models, shapes_data, tmp_path,
                                                       field, value):
    data = write_data(shapes_data, tmp_path / "eval.jsonl", closed_only=True)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[-1][field] = value
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=rf"^eval\.jsonl:{len(rows)}: `{field}` must be"):
        evaluate(str(tiny_models("llava")), str(data), tmp_path / "out", max_new_tokens=2)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# score() on hand-made answers
# ---------------------------------------------------------------------------------------------


def rec(answer, question_type=None, answerable=None):
    return Record(["unused.png"], "q?", answer, "hand:1", question_type, answerable)


SCORE_CASES = {
    "2 of 3 closed right": (
        [rec("yes", "closed"), rec("no", "closed"), rec("no", "closed")],
        ["Yes.", "no", "yes"],
        {"accuracy": 2 / 3, "n": 3, "closed_accuracy": 2 / 3, "closed_n": 3,
         "open_accuracy": None, "open_n": 0},
        None,
    ),
    "types derived from yes/no answers": (
        [rec("yes"), rec("no"), rec("No")],
        ["yes", "yes", "no."],
        {"accuracy": 2 / 3, "n": 3, "closed_accuracy": 2 / 3, "closed_n": 3,
         "open_accuracy": None, "open_n": 0},
        None,
    ),
    "abstention on closed false premises": (
        [rec("no", "closed", False), rec("yes", "closed", True), rec("no", "closed")],
        ["no", "no", "yes"],
        {"accuracy": 1 / 3, "n": 3, "closed_accuracy": 1 / 3, "closed_n": 3,
         "open_accuracy": None, "open_n": 0},
        {"abstention_rate": 1.0, "unanswerable_n": 1, "false_abstention_rate": 0.5,
         "answerable_n": 2},
    ),
    # VQA-RAD / SLAKE spell types in capitals, label choice questions ("left or right?")
    # closed, and a data set may type only some questions.
    "mixed, capitalised and missing types": (
        [rec("yes", "CLOSED"), rec("left lung", "OPEN"), rec("no"), rec("right"),
         rec("none", "open", False), rec("2", "open"), rec("left", "CLOSED")],
        ["Yes", "the left lung.", "yes", "left", "None", "two", "left"],
        {"accuracy": 5 / 7, "n": 7, "closed_accuracy": 2 / 3, "closed_n": 3,
         "open_accuracy": 3 / 4, "open_n": 4},
        {"abstention_rate": 1.0, "unanswerable_n": 1, "false_abstention_rate": 0.0,
         "answerable_n": 6},
    ),
}


@pytest.mark.parametrize(("records", "predictions", "vqa", "abstention"),
                         list(SCORE_CASES.values()), ids=list(SCORE_CASES))
def test_score(records, predictions, vqa, abstention):
    metrics = score(records, predictions)
    assert metrics["vqa"] == pytest.approx(vqa)
    assert metrics.get("abstention") == abstention
    if vqa["open_n"]:
        assert set(metrics["open_text"]) == TEXT_KEYS
        # ROUGE-L F over the 4 open answers only: 0.8 ("the left lung." / "left lung"),
        # 0 ("left" / "right"), 1 ("None" / "none"), 0 ("two" / "2").
        assert metrics["open_text"]["rouge_l"] == pytest.approx(1.8 / 4)
    else:
        assert "open_text" not in metrics


# ---------------------------------------------------------------------------------------------
# Batched generation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_batched_generation_matches_one_at_a_time(tiny_models, shapes_data, family):
    loaded = load_with_adapter(str(tiny_models(family)))
    processor = loaded.processor
    fmt = PromptFormat.from_processor(processor, loaded.family)
    records = load_records(shapes_data["eval"])[:8]
    # Prompts of different lengths, so a batch of 4 needs padding.
    lengths = {len(processor.tokenizer(fmt.prompt(r.question, 1)).input_ids)
               for r in records[:4]}
    assert len(lengths) > 1
    processor.tokenizer.padding_side = "right"
    one = generate_answers(loaded.model, fmt, records, batch_size=1, max_new_tokens=8)
    four = generate_answers(loaded.model, fmt, records, batch_size=4, max_new_tokens=8)
    assert len(one) == len(records)
    assert four == one
    assert processor.tokenizer.padding_side == "right"  # the caller's setting is restored


@pytest.mark.parametrize("family", ["llava", "fast-vlm"])
def test_the_tower_runs_once_per_image_with_the_same_answers(tiny_models, shapes_data, family):
    loaded = load_with_adapter(str(tiny_models(family)))
    fmt = PromptFormat.from_processor(loaded.processor, loaded.family)
    records = load_records(shapes_data["eval"])[:12]
    images = {str(r.images[0]) for r in records}
    assert len(images) < len(records)  # several questions per image
    tower = part_of(loaded.model, "vision")
    first = next(m for m in tower.modules() if not list(m.children()) and
                 any(True for _ in m.parameters()))
    rows = []  # image rows the tower's first layer really computed
    first.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    live = generate_answers(loaded.model, fmt, records, batch_size=4, max_new_tokens=8,
                            memo_bytes=None)
    assert sum(rows) == len(records)
    rows.clear()
    memo = generate_answers(loaded.model, fmt, records, batch_size=4, max_new_tokens=8)
    assert memo == live
    assert sum(rows) == len(images)


# ---------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------


def test_evaluating_an_adapter_uses_its_base_model(tiny_models, shapes_data, tmp_path):
    base = tiny_models("llava")
    cfg = build_config(dict(model=str(base), data=str(shapes_data["train"]),
                            output=tmp_path / "run", max_steps=10, batch_size=8,
                            learning_rate=3e-2, warmup_ratio=0.0, lora_dropout=0.0,
                            cache_dir=tmp_path / "cache"))
    adapter = finetune(cfg).adapter
    # Closed questions only: no text metrics, so no Java start-up for three evaluations.
    data = str(write_data(shapes_data, tmp_path / "closed.jsonl", closed_only=True))

    loaded = load_with_adapter(str(adapter))
    assert isinstance(loaded.model, PeftModel)
    assert loaded.model.get_base_model().name_or_path == str(base.resolve())

    tuned = evaluate(str(adapter), data, tmp_path / "tuned", max_new_tokens=4)
    evaluate(str(base), data, tmp_path / "plain", max_new_tokens=4)
    assert tuned["model"] == str(adapter)
    tuned_answers = [r["prediction"] for r in read_predictions(tmp_path / "tuned")]
    plain_answers = [r["prediction"] for r in read_predictions(tmp_path / "plain")]
    assert tuned_answers != plain_answers

    # The base comes from adapter_config.json: point it nowhere and loading fails; pass
    # `base` explicitly and the same answers come back.
    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "no-such-model")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no-such-model"):
        evaluate(str(moved), data, tmp_path / "broken")
    evaluate(str(moved), data, tmp_path / "override", base=str(base), max_new_tokens=4)
    assert [r["prediction"] for r in read_predictions(tmp_path / "override")] == tuned_answers
