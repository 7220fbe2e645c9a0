"""Can the answer be read off what the language model is shown? A linear probe.

When a fine-tuned model stays near chance on a kind of question, the first thing to know is
whether the image features the language model receives (vision tower and projector output)
tell the answers apart at all. For every closed question asked on the training images, a
logistic regression on those features, pooled per record (mean and max over all its image
tokens), is fitted on the training split and scored on the test split, beside the baseline of
always giving that question's most common training answer. A probe near its baseline says the
answer is not linearly readable from the pooled features: a strong hint that the vision side
must learn (or that a base model that sees it is needed), though a few tokens or their layout
may still carry what pooling hides.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from domainvlm.data.records import Record, load_records
from domainvlm.errors import DataError
from domainvlm.evaluation.metrics import normalize_answer, question_type
from domainvlm.progress import Reporter

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # chosen per question by cross-validation on train only
FOLDS = 4


def probe_closed_questions(model: str, train: str, test: str, *,
                           reporter: Reporter | None = None,
                           base_too: bool = False) -> dict[str, Any]:
    """Probe and baseline accuracy on `test` per category (record `category`, else "closed").

    `model` is a model or adapter folder. Only answerable closed questions with at least two
    different answers among the training images are probed; TRAIN and TEST must not share an
    image (a probe scored on images it was fitted on overstates). With `base_too` (`model` an
    adapter) the result's "base" holds the same probe of the base model, whose features come
    from the same tower outputs: a frozen tower then runs once per image for both.
    """
    train_records, test_records = _closed(load_records(train)), _closed(load_records(test))
    questions = _probed_questions(train_records)
    if not questions:
        raise DataError(f"{train}: no closed, answerable question is asked there with two or "
                        "more different answers, so there is nothing to probe")
    train_records = [r for r in train_records if r.question in questions]
    test_records = [r for r in test_records if r.question in questions]
    if not test_records:
        raise DataError(f"{test}: asks none of the closed questions probed on {train}; give "
                        "held-out records of the same questions")
    keys = {id(r): _key(r) for r in train_records + test_records}
    shared = {keys[id(r)] for r in train_records} & {keys[id(r)] for r in test_records}
    if shared:
        raise DataError(f"{len(shared)} image(s) of {test} also appear in {train}; split by "
                        "image (or patient) so that the probe is scored on unseen images")
    features = image_features(model, train_records + test_records, keys, reporter=reporter,
                              base_too=base_too)
    result = {"model": model, **_scores(features["model"], keys, train_records, test_records)}
    if base_too:
        result["base"] = _scores(features["base"], keys, train_records, test_records)
    return result


def _scores(features: dict[str, Any], keys: dict[int, str], train_records: list[Record],
            test_records: list[Record]) -> dict[str, Any]:
    """Per category and overall: the probe's and the commonest answer's test accuracy."""
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # probe, baseline, n
    for question in sorted({r.question for r in train_records}):
        fit = [r for r in train_records if r.question == question]
        scored = [r for r in test_records if r.question == question]
        if not scored:
            continue
        predicted = _fit_predict([features[keys[id(r)]] for r in fit],
                                 [_answer(r) for r in fit],
                                 [features[keys[id(r)]] for r in scored])
        common = Counter(_answer(r) for r in fit).most_common(1)[0][0]
        for record, guess in zip(scored, predicted, strict=True):
            tally = hits[record.category or "uncategorised"]
            tally[0] += guess == _answer(record)
            tally[1] += common == _answer(record)
            tally[2] += 1
    by_category = {name: {"probe_accuracy": p / n, "baseline_accuracy": b / n, "n": n}
                   for name, (p, b, n) in sorted(hits.items())}
    probe, baseline, n = (sum(t[i] for t in hits.values()) for i in range(3))
    return {"by_category": by_category,
            "overall": {"probe_accuracy": probe / n, "baseline_accuracy": baseline / n, "n": n}}


def image_features(model: str, records: list[Record], keys: dict[int, str], *,
                   reporter: Reporter | None = None,
                   base_too: bool = False) -> dict[str, dict[str, Any]]:
    """["model"][keys[id(record)]] -> the features the language model receives for that
    record's images, mean- and max-pooled over all their tokens; with `base_too` (`model` an
    adapter) also ["base"][...], the adapter switched off, on the same tower outputs."""
    import contextlib

    import torch

    from domainvlm.adapter_io import is_adapter_folder, load_with_adapter
    from domainvlm.data.encode import encode_records, image_token_id, pad_token_id
    from domainvlm.data.prompting import PromptFormat
    from domainvlm.errors import ConfigError
    from domainvlm.models.parts import part_of
    from domainvlm.models.vision_cache import FEATURE_KEY, TowerMemo, attach_image_features

    if base_too and not is_adapter_folder(model):
        raise ConfigError(f"{model} is not an adapter folder, so it has no base model to probe "
                          "beside it")
    loaded = load_with_adapter(model)
    processor = loaded.processor
    token = image_token_id(processor)
    try:
        part_of(loaded.model, "language")
    except ValueError as exc:
        raise ConfigError(f"{model}: {exc}; the probe reads the language model's input") from None
    if token is None:
        raise ConfigError(f"{model}: its processor names no image token, so the image "
                          "features cannot be told apart from the text; it cannot be probed")
    unique = {keys[id(r)]: r for r in records}
    fmt = PromptFormat.from_processor(processor, loaded.family)
    loaded.model.eval()
    variants = {"base": loaded.model.disable_adapter} if base_too else {}
    variants["model"] = contextlib.nullcontext
    memo = (TowerMemo(part_of(loaded.model, "vision"), 2 * 2**30)
            if loaded.family.tower_rows_per_image else contextlib.nullcontext())
    features: dict[str, dict[str, Any]] = {}
    with memo, (reporter or Reporter()).task(
            "image features to probe", total=len(unique) * len(variants)) as advance:
        encoded = encode_records(list(unique.values()), fmt, max_length=1_000_000)
        for name, switch in variants.items():
            samples = [dict(sample) for sample in encoded]  # attaching features edits them
            with switch():
                attach_image_features(loaded.model, samples, token, pad_token_id(processor),
                                      progress=advance)
            features[name] = {
                key: torch.cat([s[FEATURE_KEY].float().mean(0), s[FEATURE_KEY].float().amax(0)])
                for key, s in zip(unique, samples, strict=True)}
    return features


def _closed(records: list[Record]) -> list[Record]:
    return [r for r in records if r.answerable is not False
            and question_type(r.answer, r.question_type) == "closed"]


def _probed_questions(records: list[Record]) -> set[str]:
    answers: dict[str, set[str]] = defaultdict(set)
    for record in records:
        answers[record.question].add(_answer(record))
    return {question for question, seen in answers.items() if len(seen) > 1}


def _key(record: Record) -> str:
    from domainvlm.data.images import image_digest

    return "|".join(image_digest(image) for image in record.images)


def _answer(record: Record) -> str:
    return normalize_answer(record.answer)


def _fit_predict(train_x: list[Any], train_y: list[str], test_x: list[Any]) -> list[str]:
    """Multinomial logistic regression on standardised features, L2 picked by k-fold CV."""
    import torch

    x, z = torch.stack(train_x), torch.stack(test_x)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x, z = (x - mean) / std, (z - mean) / std
    labels = sorted(set(train_y))
    y = torch.tensor([labels.index(a) for a in train_y])
    folds = torch.arange(len(y)) % FOLDS

    def cv_accuracy(l2: float) -> float:
        right = 0
        for fold in range(FOLDS):
            held = folds == fold
            if not held.any():  # fewer records than folds
                continue
            weights = _logistic(x[~held], y[~held], len(labels), l2)
            right += int(((_logits(x[held], weights)).argmax(1) == y[held]).sum())
        return right

    l2 = max(L2_GRID, key=cv_accuracy)  # ties keep the smallest penalty that wins
    weights = _logistic(x, y, len(labels), l2)
    return [labels[i] for i in _logits(z, weights).argmax(1).tolist()]


def _logistic(x: Any, y: Any, classes: int, l2: float) -> tuple[Any, Any]:
    import torch

    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimizer.zero_grad()
        loss = (torch.nn.functional.cross_entropy(x @ weight + bias, y)
                + l2 * weight.pow(2).sum() / 2)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _logits(x: Any, weights: tuple[Any, Any]) -> Any:
    return x @ weights[0] + weights[1]
