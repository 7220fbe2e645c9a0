"""One rule for closed vs open questions, and the three places that use it agree: evaluation's
scores, the probe's choice of questions and the medical VQA builder's labels."""

from __future__ import annotations

import pytest

from domainvlm.data.records import Record
from domainvlm.evaluation.metrics import question_type
from domainvlm.evaluation.probe import _closed
from domainvlm.evaluation.run import score
from domainvlm.medical.labels import LabelRow
from domainvlm.medical.vqa import _record, _Scan

# (answer, the type the data declares, the type by hand): closed exactly when the answer is
# yes or no up to case, spaces and punctuation, unless the data says otherwise.
CASES = [
    ("yes", None, "closed"),
    ("Yes.", None, "closed"),
    ("no", None, "closed"),
    ("NO!", None, "closed"),
    (" No ", None, "closed"),
    ("Yes, on the left", None, "open"),
    ("no fracture", None, "open"),
    ("left", None, "open"),
    ("There is none.", None, "open"),
    ("Yes.", "", "closed"),  # an empty declaration declares nothing
    ("yes", "open", "open"),  # the data's own type wins
    ("left", "CLOSED", "closed"),  # VQA-RAD writes its types in capitals
]


def records() -> list[Record]:
    return [Record(["img.png"], "Q?", answer, f"t.jsonl:{k}", question_type=declared)
            for k, (answer, declared, _) in enumerate(CASES)]


def expected_closed() -> set[str]:
    return {f"t.jsonl:{k}" for k, (_, _, kind) in enumerate(CASES) if kind == "closed"}


@pytest.mark.parametrize(("answer", "declared", "expected"), CASES)
def test_the_rule(answer, declared, expected):
    assert question_type(answer, declared) == expected


def test_evaluation_scores_each_question_as_its_type():
    """Right answers on the closed questions only: closed accuracy 1 and open accuracy 0 hold
    exactly when every record is scored under its type."""
    rows = records()
    predictions = [r.answer if r.source in expected_closed() else "zzz" for r in rows]
    vqa = score(rows, predictions)["vqa"]
    assert (vqa["closed_n"], vqa["open_n"]) == (len(expected_closed()),
                                                len(rows) - len(expected_closed()))
    assert (vqa["closed_accuracy"], vqa["open_accuracy"]) == (1.0, 0.0)


def test_the_probe_picks_the_closed_questions():
    assert {r.source for r in _closed(records())} == expected_closed()


@pytest.mark.parametrize(("answer", "declared", "expected"), CASES)
def test_the_medical_vqa_builder_labels_each_record_with_its_type(answer, declared, expected):
    row = LabelRow("Q?", answer, "labels.jsonl:1", series_uid="1.2",
                   question_type=declared or None)
    scan = _Scan("1.2.3", "1.2", "patient", [{"path": "images/a.png"}])
    assert _record(row, scan, frozenset())["question_type"] == expected
