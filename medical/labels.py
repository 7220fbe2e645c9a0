"""Label files that turn DICOM studies into VQA data, and public medical VQA sets.

A label file is CSV or JSONL, one question per row, keyed by the original StudyInstanceUID
and/or SeriesInstanceUID of the scan it asks about (the UIDs the hospital has; de-identification
remaps them later). Columns: `study_uid`, `series_uid` (at least one), `question`, `answer`,
optional `answerable` (false for false-premise questions, default true) and `question_type`
(closed/open). Of the other columns only those the core engine's records use travel into the
records (`RECORD_COLUMNS`: `category`, read by evaluation per category, and `repeat`, how many
times training sees the row), plus any the user keeps by name: a label file exported from a
hospital system often carries an MRN, a name or the report text, which must not land in
training data beside de-identified pixels. `travelling_columns` decides; the build names the
columns it dropped, never their values. VQA-RAD and SLAKE ship JSON with images already
rendered; `read_public_vqa` turns them into the core engine's records.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainvlm.errors import ConfigError, DataError

_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n"}


@dataclass(frozen=True)
class LabelRow:
    """One question about a study or series; `source` names the file and line."""

    question: str
    answer: str
    source: str
    study_uid: str | None = None
    series_uid: str | None = None
    answerable: bool = True
    question_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other columns, as read


_COLUMNS = {"study_uid", "series_uid", "question", "answer", "answerable", "question_type"}
# Extra columns the core engine's records read (domainvlm.data.records, domainvlm.evaluation).
RECORD_COLUMNS = ("category", "repeat")


def travelling_columns(rows: Sequence[LabelRow], keep_columns: Sequence[str] = ()
                       ) -> tuple[frozenset[str], list[str]]:
    """(extra columns copied into the records, sorted names of the others, which are dropped).

    `keep_columns` names more columns to copy: the user's call (they may hold PHI).
    ConfigError when one of them is in no row (a typo would otherwise keep nothing, silently).
    """
    present = {name for row in rows for name in row.extra}
    missing = sorted(set(keep_columns) - present - _COLUMNS)
    if missing:
        raise ConfigError(f"--keep-column {', '.join(missing)}: no such column in the labels "
                          f"(other columns there: {', '.join(sorted(present)) or 'none'})")
    travel = frozenset(RECORD_COLUMNS) | frozenset(keep_columns)
    return travel, sorted(present - travel)


def read_labels(path: Path) -> list[LabelRow]:
    """Rows of a .csv or .jsonl label file, each validated; DataError names the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file {path} does not exist")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [(f"{path}:{n}", row) for n, row in enumerate(csv.DictReader(handle), 2)]
    elif path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{n}: not JSON ({err.msg})") from None
    else:
        raise DataError(f"label file {path}: use .csv or .jsonl, not {path.suffix!r}")
    labels = [_label(row, source) for source, row in rows]
    if not labels:
        raise DataError(f"label file {path} holds no questions")
    return labels


def _label(row: dict[str, Any], source: str) -> LabelRow:
    if not isinstance(row, dict):
        raise DataError(f"{source}: expected an object with question and answer")
    study, series = _optional(row.get("study_uid")), _optional(row.get("series_uid"))
    if not study and not series:
        raise DataError(f"{source}: needs `study_uid` or `series_uid` to find its scan")
    question_type = _optional(row.get("question_type"))
    if question_type and question_type.lower() not in ("closed", "open"):
        raise DataError(f"{source}: question_type must be closed or open, got {question_type!r}")
    return LabelRow(question=_required(row, "question", source),
                    answer=_required(row, "answer", source), source=source,
                    study_uid=study, series_uid=series,
                    answerable=_boolean(row.get("answerable", True), source),
                    question_type=question_type.lower() if question_type else None,
                    extra=_extra(row, source))


def _extra(row: dict[str, Any], source: str) -> dict[str, Any]:
    extra = {k: v for k, v in row.items() if k not in _COLUMNS and v not in (None, "")}
    if isinstance(extra.get("repeat"), str):  # CSV cells are text; records want a number
        text = extra["repeat"].strip()
        if not text.isdigit() or int(text) < 1:
            raise DataError(f"{source}: repeat must be a whole number >= 1, got "
                            f"{extra['repeat']!r}")
        extra["repeat"] = int(text)
    return extra


def _optional(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _required(row: dict[str, Any], key: str, source: str) -> str:
    text = _optional(row.get(key))
    if text is None:
        raise DataError(f"{source}: `{key}` is missing or empty")
    return text


def _boolean(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text == "":
        return True
    if text in _FALSE:
        return False
    raise DataError(f"{source}: answerable must be true or false, got {value!r}")


def read_public_vqa(path: Path, image_root: Path | None = None) -> list[dict[str, Any]]:
    """Records (`image`, `question`, `answer`, `question_type`, `patient`) from VQA-RAD / SLAKE.

    VQA-RAD items name `image_name` and `answer_type` CLOSED/OPEN; SLAKE items `img_name`,
    `answer_type` and `q_lang` (non-English questions are skipped). Neither ships patient ids,
    so the image (SLAKE: its folder, one per scan) stands in for the patient when splitting.
    Image paths are absolute, resolved against `image_root` (default: the JSON's folder).
    """
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read VQA-RAD/SLAKE JSON ({err})") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of questions")
    root = Path(image_root) if image_root else path.parent
    records = []
    for n, item in enumerate(items):
        source = f"{path}[{n}]"
        if not isinstance(item, dict):
            raise DataError(f"{source}: expected an object")
        if str(item.get("q_lang", "en")).lower() != "en":
            continue
        image = item.get("image_name") or item.get("img_name")
        if not image:
            raise DataError(f"{source}: no image_name / img_name")
        kind = str(item.get("answer_type", "")).strip().lower()
        records.append({
            "image": str((root / image).resolve()),
            "question": _required(item, "question", source),
            "answer": _required(item, "answer", source),
            "question_type": kind if kind in ("closed", "open") else None,
            "patient": str(Path(image).parent) if "img_name" in item else str(image),
        })
    if not records:
        raise DataError(f"{path}: no English questions")
    return records
