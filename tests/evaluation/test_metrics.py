"""Metrics: VQA normalisation and accuracy, text metrics against the reference implementations,
abstention on false-premise questions."""

from __future__ import annotations

import psutil
import pytest

from domainvlm.evaluation import metrics
from domainvlm.evaluation.metrics import (
    NONE_ANSWERS,
    abstention_rate,
    is_abstention,
    is_closed_question,
    normalize_answer,
    text_generation_metrics,
    vqa_accuracy,
)

# ---------------------------------------------------------------------------------------------
# Normalisation and VQA accuracy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("The Left lung.", "left lung"),
    ("left lung", "left lung"),
    ("  LEFT   LUNG  ", "left lung"),
    ("left-lung", "left lung"),
    ("Yes!", "yes"),
    ("yes.", "yes"),
    ("Two", "2"),
    ("two nodules", "2 nodules"),
    ("ten", "10"),
    ("an MRI", "mri"),
    ("a T2 weighted image", "t2 weighted image"),
    ("3.5 cm", "3.5 cm"),
    ("1,000", "1000"),
    ("isnt", "isn't"),
    ("dont know", "don't know"),
    ("it\u2019s", "it's"),
    ("heart, lungs", "heart lungs"),
    ("(right) kidney", "right kidney"),
    ("none", "none"),
    ("", ""),
])
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(("answer", "closed"), [
    ("yes", True), ("No.", True), ("YES", True), ("left lung", False), ("none", False),
    ("2", False), ("no fracture", False),
])
def test_is_closed_question(answer: str, closed: bool) -> None:
    assert is_closed_question(answer) is closed


@pytest.mark.parametrize(("predictions", "references", "types", "expected"), [
    # derived types: 2 closed (1 right), 2 open (2 right)
    (["Yes", "yes", "The Left lung.", "two"], ["no", "yes", "left lung", "2"], None,
     {"accuracy": 0.75, "n": 4, "closed_accuracy": 0.5, "closed_n": 2,
      "open_accuracy": 1.0, "open_n": 2}),
    # explicit types override the yes/no heuristic
    (["yes", "liver", "kidney"], ["yes", "liver", "spleen"], ["open", "closed", "open"],
     {"accuracy": 2 / 3, "n": 3, "closed_accuracy": 1.0, "closed_n": 1,
      "open_accuracy": 0.5, "open_n": 2}),
    # no open questions: that split is None, not 0
    (["yes", "yes"], ["yes", "no"], None,
     {"accuracy": 0.5, "n": 2, "closed_accuracy": 0.5, "closed_n": 2,
      "open_accuracy": None, "open_n": 0}),
    # no closed questions
    (["liver"], ["Liver"], ["Open"],
     {"accuracy": 1.0, "n": 1, "closed_accuracy": None, "closed_n": 0,
      "open_accuracy": 1.0, "open_n": 1}),
    # nothing at all
    ([], [], None,
     {"accuracy": None, "n": 0, "closed_accuracy": None, "closed_n": 0,
      "open_accuracy": None, "open_n": 0}),
])
def test_vqa_accuracy(predictions, references, types, expected) -> None:
    got = vqa_accuracy(predictions, references, types)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == (pytest.approx(value) if value is not None else None), key


@pytest.mark.parametrize(("predictions", "references", "types", "match"), [
    (["a", "b"], ["a"], None, "2 predictions, 1 references"),
    (["a"], ["a"], ["open", "closed"], "1 predictions, 2 question_types"),
    (["a"], ["a"], ["multiple-choice"], "closed' or 'open"),
])
def test_vqa_accuracy_rejects_bad_input(predictions, references, types, match) -> None:
    with pytest.raises(ValueError, match=match):
        vqa_accuracy(predictions, references, types)


# ---------------------------------------------------------------------------------------------
# Text-generation metrics
# ---------------------------------------------------------------------------------------------

# Paraphrases, partial answers and plain errors, one sample with two references.
PREDICTIONS = [
    "the left lung",
    "a small nodule in the right upper lobe",
    "The heart is enlarged.",
    "two lesions in the liver",
    "no fracture is seen",
    "pleural effusion on the right side",
]
REFERENCES = [
    ["left lung"],
    ["a nodule in the right upper lobe"],
    ["cardiomegaly with an enlarged heart", "the heart is enlarged"],
    ["three lesions in the liver"],
    ["there is no fracture"],
    ["a large pneumothorax on the left side"],
]
PERFECT = [refs[0] for refs in REFERENCES]
KEYS = ("bleu4", "rouge_l", "meteor", "cider")


def _reference_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """The four metrics straight from sacrebleu, rouge-score and pycocoevalcap."""
    import sacrebleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from rouge_score import rouge_scorer

    n_refs = max(len(r) for r in references)
    streams = [[r[k] if k < len(r) else None for r in references] for k in range(n_refs)]
    bleu = sacrebleu.corpus_bleu(predictions, streams).score / 100
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [max(scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs)
             for pred, refs in zip(predictions, references, strict=True)]
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs]
                              for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
    cider, _ = Cider().compute_score(gts, res)
    meteor = Meteor()
    try:
        meteor_score, _ = meteor.compute_score(gts, res)
    finally:
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    return {"bleu4": bleu, "rouge_l": sum(rouge) / len(rouge), "meteor": meteor_score,
            "cider": cider}


@pytest.fixture(scope="module")
def scores() -> dict[str, dict[str, float]]:
    """Scored once per module: each METEOR jar takes seconds to load its paraphrase tables."""
    return {"ours": text_generation_metrics(PREDICTIONS, REFERENCES),
            "perfect": text_generation_metrics(PERFECT, REFERENCES),
            "reference": _reference_scores(PREDICTIONS, REFERENCES)}


@pytest.mark.parametrize("key", KEYS)
def test_metrics_equal_reference_implementations(scores, key: str) -> None:
    assert set(scores["ours"]) == set(KEYS)
    assert isinstance(scores["ours"][key], float)
    assert scores["ours"][key] == pytest.approx(scores["reference"][key], abs=1e-6)


def test_perfect_predictions_score_top(scores) -> None:
    perfect = scores["perfect"]
    assert perfect["bleu4"] == pytest.approx(1.0)
    assert perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["meteor"] > 0.95
    assert perfect["cider"] > 1.0


@pytest.mark.parametrize("key", KEYS)
def test_wrong_predictions_score_lower_than_right_ones(scores, key: str) -> None:
    assert 0.0 <= scores["ours"][key] < scores["perfect"][key]


def test_no_java_process_left_running(scores) -> None:
    children = psutil.Process().children(recursive=True)
    assert not [p for p in children if "java" in p.name().lower()]


def test_single_reference_strings_are_accepted() -> None:
    """list[str] references are the one-reference case (checked without the slow jar)."""
    assert metrics._as_reference_lists(["a", ["b", "c"]]) == [["a"], ["b", "c"]]
    with pytest.raises(ValueError, match=r"references\[0\]"):
        metrics._as_reference_lists([[]])


@pytest.mark.parametrize(("predictions", "references", "match"), [
    ([], [], "at least one"),
    (["a", "b"], ["a"], "2 predictions, 1 references"),
    (["a"], ["a", "b", "c"], "1 predictions, 3 references"),
    (["a"], [[]], r"references\[0\]"),
])
def test_text_metrics_reject_bad_input(predictions, references, match) -> None:
    with pytest.raises(ValueError, match=match):
        text_generation_metrics(predictions, references)


def test_text_metrics_without_java_say_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="(?i)install a java runtime.*openjdk"):
        text_generation_metrics(["a"], ["a"])


def test_ptb_tokenizer_keeps_one_line_per_text() -> None:
    """Empty texts (also trailing ones) and embedded line breaks do not shift the alignment."""
    texts = ["The Left lung, isn't clear!", "", "two\nlines", "...", ""]
    assert metrics._ptb_tokenize(texts) == ["the left lung is n't clear", "", "two lines", "", ""]


# ---------------------------------------------------------------------------------------------
# Abstention
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("prediction", "abstains"), [
    ("There is none.", True),
    ("none", True),
    ("No", True),
    ("Absent", True),
    ("not present", True),
    ("No lesion.", True),
    ("There is no lesion in the liver.", True),
    ("The nodule is absent", True),
    ("lesion not seen", True),
    ("3 cm", False),
    ("left lung", False),
    ("normal", False),
    ("nodule in the right lobe", False),
    ("present", False),
    ("", False),
])
def test_is_abstention(prediction: str, abstains: bool) -> None:
    assert is_abstention(prediction) is abstains


def test_none_answers_are_normalised() -> None:
    assert all(normalize_answer(a) == a for a in NONE_ANSWERS)
    assert {"none", "no", "absent", "there is none", "not present", "no lesion"} <= NONE_ANSWERS


@pytest.mark.parametrize(("predictions", "answerable", "expected"), [
    (["There is none.", "3 cm", "absent", "left lung", "no lesion"],
     [False, False, False, True, True],
     {"abstention_rate": 2 / 3, "unanswerable_n": 3, "false_abstention_rate": 0.5,
      "answerable_n": 2}),
    (["3 cm", "2 cm"], [True, True],
     {"abstention_rate": None, "unanswerable_n": 0, "false_abstention_rate": 0.0,
      "answerable_n": 2}),
    (["none"], [False],
     {"abstention_rate": 1.0, "unanswerable_n": 1, "false_abstention_rate": None,
      "answerable_n": 0}),
])
def test_abstention_rate(predictions, answerable, expected) -> None:
    got = abstention_rate(predictions, answerable)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == (pytest.approx(value) if value is not None else None), key


def test_abstention_rate_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 predictions, 1 answerable"):
        abstention_rate(["none", "3 cm"], [False])
