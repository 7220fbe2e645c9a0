"""`domainvlm eval`: answer a data set's questions and score the answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domainvlm.adapter_io import load_with_adapter
from domainvlm.atomic import write_json, write_text
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record, load_records
from domainvlm.evaluation.generate import generate_answers
from domainvlm.evaluation.metrics import (
    abstention_rate,
    question_type,
    text_generation_metrics,
    vqa_accuracy,
)
from domainvlm.outputs import new_output
from domainvlm.progress import Reporter


def score(records: list[Record], predictions: list[str]) -> dict[str, Any]:
    """VQA accuracy by question type; text metrics on open questions; abstention if marked."""
    references = [r.answer for r in records]
    types = [question_type(r.answer, r.question_type) for r in records]
    metrics: dict[str, Any] = {"vqa": vqa_accuracy(predictions, references, types)}
    open_ids = [i for i, t in enumerate(types) if t == "open"]
    if open_ids:
        metrics["open_text"] = text_generation_metrics([predictions[i] for i in open_ids],
                                                       [references[i] for i in open_ids])
    if any(r.answerable is not None for r in records):
        metrics["abstention"] = abstention_rate(
            predictions, [r.answerable is not False for r in records])
    categories = [r.category for r in records]
    if any(categories):  # e.g. presence / side / size: accuracy per kind of question
        metrics["by_category"] = {
            name: vqa_accuracy([p for p, c in zip(predictions, categories, strict=True)
                                if c == name],
                               [r.answer for r, c in zip(records, categories, strict=True)
                                if c == name])
            for name in sorted({c for c in categories if c})}
    return metrics


def evaluate(model: str | Path, data: str | Path, output: str | Path, *,
             base: str | Path | None = None, batch_size: int = 8, max_new_tokens: int = 32,
             overwrite: bool = False, reporter: Reporter | None = None,
             ignore_base_mismatch: bool = False) -> dict[str, Any]:
    """Answer every question of `data` with `model` (a model, or an adapter folder on its
    base), greedily; write OUTPUT/predictions.jsonl and OUTPUT/metrics.json; return the
    metrics: `vqa` (accuracy, closed and open), `open_text` (BLEU-4, ROUGE-L, METEOR, CIDEr),
    `abstention`, `by_category`, where the data has them.

    OUTPUT is new or empty, or (`overwrite`) holds an earlier evaluation, replaced once the new
    one is complete.

    Example::

        from domainvlm import evaluate

        metrics = evaluate("runs/chest/adapter", "test.jsonl", output="runs/chest-eval")
        print(metrics["vqa"]["accuracy"], metrics["vqa"]["closed_accuracy"])
    """
    model, output = str(model), Path(output)
    base = str(base) if base is not None else None
    data = str(data) if isinstance(data, Path) else data
    reporter = reporter or Reporter()
    with new_output(output, "eval", inputs=[model, data, base], overwrite=overwrite,
                    made_by_us=_earlier_evaluation) as partial:  # fails fast where unwritable
        records = load_records(data)
        loaded = load_with_adapter(model, base=base, ignore_base_mismatch=ignore_base_mismatch)
        fmt = PromptFormat.from_processor(loaded.processor, loaded.family)
        with reporter.task("answering", total=len(records)) as advance:
            predictions = generate_answers(loaded.model, fmt, records, batch_size=batch_size,
                                           max_new_tokens=max_new_tokens, progress=advance)
        metrics = {"model": model, "data": str(data), "n": len(records),
                   **score(records, predictions)}
        _write_predictions(partial / "predictions.jsonl", records, predictions)
        write_json(partial / "metrics.json", metrics)
    return metrics


def _earlier_evaluation(folder: Path) -> bool:
    """An evaluation written before outputs carried a marker: these two files alone."""
    return {p.name for p in folder.iterdir()} <= {"predictions.jsonl", "metrics.json"}


def _write_predictions(path: Path, records: list[Record], predictions: list[str]) -> None:
    rows = [{"source": record.source, "question": record.question, "answer": record.answer,
             "prediction": prediction, "question_type": record.question_type,
             "answerable": record.answerable, "category": record.category,
             "images": [str(image) for image in record.images if isinstance(image, str | Path)]}
            for record, prediction in zip(records, predictions, strict=True)]
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    vqa = metrics["vqa"]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    lines = [f"VQA accuracy {pct(vqa['accuracy'])} (n={vqa['n']})  closed "
             f"{pct(vqa['closed_accuracy'])} (n={vqa['closed_n']})  open "
             f"{pct(vqa['open_accuracy'])} (n={vqa['open_n']})"]
    if "open_text" in metrics:
        lines.append("open questions: " + "  ".join(
            f"{k} {v:.3f}" for k, v in metrics["open_text"].items()))
    if "abstention" in metrics:
        lines.append(f"abstention on unanswerable: "
                     f"{pct(metrics['abstention']['abstention_rate'])} "
                     f"(n={metrics['abstention']['unanswerable_n']})")
    return lines
