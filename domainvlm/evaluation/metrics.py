"""Scores for generated answers: VQA accuracy, caption metrics and abstention on false premises.

Everything here is a pure function on lists of strings (no torch), so the scores can be
recomputed from a ``predictions.jsonl`` long after the model is gone.

Text metrics are the reference implementations the literature reports, not re-implementations,
so numbers stay comparable with published ones: BLEU from sacrebleu, ROUGE-L from rouge-score,
METEOR and CIDEr from pycocoevalcap (the MS-COCO caption evaluation code). METEOR and the PTB
tokenizer used by the COCO metrics are Java programs, so those need a Java runtime.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "NONE_ANSWERS",
    "abstention_rate",
    "is_abstention",
    "is_closed_question",
    "normalize_answer",
    "question_type",
    "text_generation_metrics",
    "vqa_accuracy",
]

# ---------------------------------------------------------------------------------------------
# Answer normalisation (the official VQA evaluation's rules)
# ---------------------------------------------------------------------------------------------

# Punctuation the VQA eval removes (when it touches a space, or the answer holds a "1,000"-style
# number) or turns into a space (so "left-lung" and "left lung" agree). Periods are separate.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d),(\d)")
# A period not followed by a digit is dropped, so "lung." -> "lung" but "3.5" survives.
_PERIOD = re.compile(r"\.(?!\d)")
_ARTICLES = frozenset({"a", "an", "the"})
# Number words up to ten, as in the VQA eval. The VQA eval also maps "none" -> "0"; we do not:
# in medical VQA "none" is a finding ("no abnormality"), not a count, and abstention detection
# needs to see it.
_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
# Contractions written without their apostrophe, mapped to the apostrophe form (the common part
# of the VQA eval's table), so "isnt" and "isn't" agree.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't",
    "couldve": "could've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hes": "he's", "id": "i'd",
    "im": "i'm", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "ive": "i've",
    "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "oclock": "o'clock", "shant": "shan't", "shouldnt": "shouldn't",
    "shouldve": "should've", "thats": "that's", "theres": "there's", "theyd": "they'd",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't",
    "werent": "weren't", "weve": "we've", "whats": "what's", "wheres": "where's",
    "whos": "who's", "wont": "won't", "wouldnt": "wouldn't", "wouldve": "would've",
    "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_CLOSED_ANSWERS = frozenset({"yes", "no"})


def _strip_punctuation(text: str) -> str:
    """The VQA eval's punctuation pass (see `_PUNCTUATION`)."""
    out = text
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in _PUNCTUATION:
        if has_digit_comma or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def normalize_answer(text: str) -> str:
    """Canonical form of a short answer, so surface variants of one answer compare equal.

    Follows the official VQA evaluation: lowercase, strip, punctuation removal, number words to
    digits ("two" -> "2"), articles dropped, contractions restored. "The Left lung." and
    "left lung" both give "left lung". Unlike the VQA eval, "none" is kept as "none".
    """
    text = text.replace("\u2019", "'").replace("\n", " ").replace("\t", " ").strip().lower()
    words = []
    for word in _strip_punctuation(text).split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def is_closed_question(answer: str) -> bool:
    """Whether a reference answer marks a closed (yes/no) question.

    VQA-RAD and SLAKE report accuracy separately for closed and open questions; when a data set
    does not label question types, the usual convention is that yes/no answers are closed.
    """
    return normalize_answer(answer) in _CLOSED_ANSWERS


def question_type(answer: str, declared: str | None = None) -> str:
    """"closed" or "open": the type the data declares (any case; VQA-RAD writes CLOSED), else
    closed exactly when the normalised answer is yes or no (`is_closed_question`), so "Yes."
    and "NO" are closed and "Yes, on the left" is open.

    The one rule by which evaluation scores, the probe picks its questions and the medical
    VQA builder labels its records.
    """
    if declared and declared.strip():
        return declared.strip().lower()
    return "closed" if is_closed_question(answer) else "open"


def _check_lengths(predictions: Sequence[object], other: Sequence[object], name: str) -> None:
    if len(predictions) != len(other):
        raise ValueError(f"predictions and {name} differ in length: "
                         f"{len(predictions)} predictions, {len(other)} {name}")


def _ratio(hits: int, n: int) -> float | None:
    """hits / n, or None when there is nothing to score (0 would read as a real score)."""
    return hits / n if n else None


def vqa_accuracy(predictions: list[str], references: list[str],
                 question_types: list[str] | None = None) -> dict[str, float | int | None]:
    """Normalised exact-match accuracy, overall and for closed and open questions.

    ``question_types`` holds "closed" or "open" per question; when None each type is derived
    from its reference with `is_closed_question`. A split with no questions has accuracy None
    (not 0) and n 0, so an absent split is never mistaken for a failed one.
    """
    _check_lengths(predictions, references, "references")
    if question_types is None:
        types = [question_type(r) for r in references]
    else:
        _check_lengths(predictions, question_types, "question_types")
        types = [str(t).strip().lower() for t in question_types]
        bad = sorted({t for t in types if t not in ("closed", "open")})
        if bad:
            raise ValueError(f"question_types must be 'closed' or 'open', got {bad}")
    correct = [normalize_answer(p) == normalize_answer(r)
               for p, r in zip(predictions, references, strict=True)]
    result: dict[str, float | int | None] = {
        "accuracy": _ratio(sum(correct), len(correct)), "n": len(correct)}
    for split in ("closed", "open"):
        hits = [c for c, t in zip(correct, types, strict=True) if t == split]
        result[f"{split}_accuracy"] = _ratio(sum(hits), len(hits))
        result[f"{split}_n"] = len(hits)
    return result


# ---------------------------------------------------------------------------------------------
# Text-generation metrics
# ---------------------------------------------------------------------------------------------

_JAVA_MISSING = ("METEOR and the PTB tokenizer of pycocoevalcap run on Java, and no `java` was "
                 "found on PATH; install a Java runtime (e.g. `apt-get install "
                 "openjdk-17-jre-headless`)")
# Line breaks the Java tokenizer would honour; they would shift its one-line-per-text output.
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")


def _as_reference_lists(references: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """One list of reference strings per sample (a bare string is one reference)."""
    out = []
    for i, refs in enumerate(references):
        group = [refs] if isinstance(refs, str) else list(refs)
        if not group or not all(isinstance(r, str) for r in group):
            raise ValueError(f"references[{i}] must be a string or a non-empty list of strings")
        out.append(group)
    return out


def _ptb_tokenize(texts: list[str]) -> list[str]:
    """Tokenise as pycocoevalcap's PTBTokenizer does: same jar, flags and punctuation filter.

    pycocoevalcap's own wrapper writes a temporary file inside its installed package (which fails
    on a read-only install) and loses a trailing empty text; this feeds the jar on stdin instead.
    Output: lowercased PTB tokens joined by spaces, punctuation tokens removed.
    """
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
           "-preserveLines", "-lowerCase"]
    lines_in = "\n".join(_LINE_BREAKS.sub(" ", t) for t in texts)
    proc = subprocess.run(cmd, input=lines_in.encode("utf-8"), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed ({proc.returncode}): "
                           f"{proc.stderr.decode('utf-8', 'replace')[-2000:]}")
    lines = proc.stdout.decode("utf-8", "replace").split("\n")
    # Trailing empty texts give no output line; a trailing newline gives an extra empty one.
    while len(lines) > len(texts) and not lines[-1].strip():
        lines.pop()
    lines += [""] * (len(texts) - len(lines))
    if len(lines) != len(texts):
        raise RuntimeError(f"PTB tokenizer returned {len(lines)} lines for {len(texts)} texts")
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punctuation)
            for line in lines]


def _close_meteor(meteor: Any) -> None:
    """Stop the METEOR jar now rather than whenever the garbage collector gets to it."""
    proc: subprocess.Popen[bytes] = meteor.meteor_p
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    proc.kill()
    proc.wait()
    # Meteor.compute_score leaves its lock held if the jar dies mid-way, and Meteor.__del__
    # acquires that lock: a fresh lock keeps the finaliser from blocking forever.
    meteor.lock = threading.Lock()


def _meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]], meteor: Any) -> float:
    try:
        score, _ = meteor.compute_score(gts, res)
    except (ValueError, OSError) as err:  # the jar died: empty output line or broken pipe
        raise RuntimeError(f"METEOR jar failed: {err}") from err
    return float(score)


def text_generation_metrics(predictions: list[str],
                            references: list[str] | list[list[str]]) -> dict[str, float]:
    """BLEU-4, ROUGE-L, METEOR and CIDEr of free-text answers, corpus-level.

    Open answers and reports are rarely an exact match, so these give partial credit. Each sample
    may have one reference string or a list of them. Scores are fractions: bleu4 is sacrebleu's
    corpus BLEU (default 13a tokenisation) / 100; rouge_l is the ROUGE-L F-measure (stemmed,
    best reference per sample) averaged over samples; meteor and cider come from pycocoevalcap
    on PTB-tokenised, lowercased text, as in the COCO caption evaluation. CIDEr (the CIDEr-D
    variant, x10 scaled as published) is not bounded by 1, and its IDF comes from the
    references, so on a single sample, or one where every reference is the same, it is 0.

    Raises ValueError on empty input or mismatched lengths, RuntimeError without Java.
    """
    if len(predictions) == 0:
        raise ValueError("text_generation_metrics needs at least one prediction")
    _check_lengths(predictions, references, "references")
    if not all(isinstance(p, str) for p in predictions):
        raise ValueError("predictions must be strings")
    ref_lists = _as_reference_lists(references)
    if shutil.which("java") is None:
        raise RuntimeError(_JAVA_MISSING)

    import sacrebleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from rouge_score import rouge_scorer

    # Start METEOR first: its jar spends seconds loading paraphrase tables meanwhile.
    try:
        meteor = Meteor()
    except FileNotFoundError as err:
        raise RuntimeError(_JAVA_MISSING) from err
    try:
        n_refs = max(len(r) for r in ref_lists)
        # sacrebleu takes one stream per reference position; None pads shorter groups.
        streams = [[r[k] if k < len(r) else None for r in ref_lists] for k in range(n_refs)]
        bleu = sacrebleu.corpus_bleu(predictions, streams).score / 100.0

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        rouge_l = sum(scorer.score_multi(refs, pred)["rougeL"].fmeasure
                      for pred, refs in zip(predictions, ref_lists, strict=True))
        rouge_l /= len(predictions)

        tokens = _ptb_tokenize(list(predictions) + [r for refs in ref_lists for r in refs])
        res = {i: [tokens[i]] for i in range(len(predictions))}
        gts, pos = {}, len(predictions)
        for i, refs in enumerate(ref_lists):
            gts[i] = tokens[pos:pos + len(refs)]
            pos += len(refs)
        cider, _ = Cider().compute_score(gts, res)
        meteor_score = _meteor_score(gts, res, meteor)
    finally:
        _close_meteor(meteor)
    return {"bleu4": float(bleu), "rouge_l": float(rouge_l), "meteor": meteor_score,
            "cider": float(cider)}


# ---------------------------------------------------------------------------------------------
# Abstention on false-premise questions
# ---------------------------------------------------------------------------------------------

NONE_ANSWERS: frozenset[str] = frozenset({
    "none", "no", "nothing", "absent", "not present", "not seen", "not visible", "not found",
    "not identified", "not detected", "not applicable", "there is none",
    "there are none", "there is no", "there are no", "none seen", "none present", "none visible",
    "no lesion", "no lesions", "no abnormality", "no abnormalities", "no finding", "no findings",
    "no mass", "no nodule", "no tumor", "no tumour", "no fracture", "no object", "no objects",
    "nothing seen", "nothing visible",
})
"""Normalised (`normalize_answer`) answers that say the asked-about thing is absent."""

# Longer phrasings of the same: a leading negation ("there is no lesion in the liver", "no
# evidence of ...") or a trailing absence ("the nodule is absent", "lesion not seen"). "no\b"
# does not match "normal", "nodule" or "north".
_ABSTENTION_PATTERN = re.compile(
    r"^(?:no|none|nothing|there (?:is|are) (?:no|none|nothing))\b"
    r"|\b(?:absent|not (?:present|seen|visible|found|identified|detected|applicable))$")


def is_abstention(prediction: str) -> bool:
    """Whether an answer declines the premise (says none / absent) instead of giving a value.

    On a false-premise question ("How large is the lesion?" with no lesion) this is the right
    behaviour; a fine-tuned model that always produces a size is hallucinating.
    """
    answer = normalize_answer(prediction)
    return answer in NONE_ANSWERS or _ABSTENTION_PATTERN.search(answer) is not None


def abstention_rate(predictions: list[str],
                    answerable: list[bool]) -> dict[str, float | int | None]:
    """How often the model abstains where it should, and where it should not.

    abstention_rate: share of the unanswerable (false-premise) questions whose prediction is an
    abstention, over unanswerable_n of them. false_abstention_rate: share of the answerable
    questions whose prediction abstains, over answerable_n. Rates are None when their set is
    empty. "no" counts as an abstention, so on answerable yes/no questions a correct "no" also
    counts as a false abstention: read false_abstention_rate on open questions.
    """
    _check_lengths(predictions, answerable, "answerable")
    abstains = [is_abstention(p) for p in predictions]
    on_false = [a for a, ok in zip(abstains, answerable, strict=True) if not ok]
    on_true = [a for a, ok in zip(abstains, answerable, strict=True) if ok]
    return {
        "abstention_rate": _ratio(sum(on_false), len(on_false)),
        "unanswerable_n": len(on_false),
        "false_abstention_rate": _ratio(sum(on_true), len(on_true)),
        "answerable_n": len(on_true),
    }
