"""Read VQA / caption records from JSONL, LLaVA-style JSON or a `datasets.Dataset`.

Every record keeps `source` ("train.jsonl:12") so that any later error can name it. A row
may carry `repeat` (a whole number, default 1): training sees it that many times per epoch,
for a question too rare in the data for the model to learn from one pass.

Every field is checked by type and domain when the file is read, for training and evaluation
alike: a wrong value is a DataError naming the record, the field and the value, never coerced
(a string "false" is not a boolean, and a question type other than closed/open would only
surface after generation, as a crash or a metric of its own).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainvlm.errors import DataError

ImageRef = Any  # a file path (str / Path) or a PIL.Image.Image


@dataclass
class Record:
    """One question about one or more images, with its reference answer."""

    images: list[ImageRef]
    question: str
    answer: str
    source: str
    question_type: str | None = None  # "closed" / "open" when the data says so
    answerable: bool | None = None  # False for false-premise questions
    repeat: int = 1  # times training sees this record per epoch
    category: str | None = None  # kind of question (presence, side...): accuracy per kind
    extra: dict[str, Any] = field(default_factory=dict)


def load_records(data: str | Path | Any) -> list[Record]:
    """Records from a .jsonl file, a LLaVA-style .json file, a dataset folder or a Dataset."""
    if not isinstance(data, str | Path):
        return records_from_dataset(data, name="dataset")
    path = Path(data)
    if not path.exists():
        raise DataError(f"data {path} does not exist; pass a .jsonl, a LLaVA-style .json file "
                        "or a folder saved with datasets' save_to_disk")
    if path.is_dir():
        from datasets import load_from_disk

        return records_from_dataset(load_from_disk(str(path)), name=str(path))
    if path.suffix == ".jsonl":
        return list(_records_from_jsonl(path))
    if path.suffix == ".json":
        return list(_records_from_llava_json(path))
    raise DataError(f"data {path}: unknown format {path.suffix!r}; use .jsonl or .json")


def _image_list(value: Any, base: Path, source: str) -> list[ImageRef]:
    from PIL import Image

    if value is None:
        raise DataError(f"{source}: no image; every record needs `image` (a path or a list)")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise DataError(f"{source}: `image` is an empty list")
    for item in items:
        path = isinstance(item, str | Path) and str(item).strip()
        if not (path or isinstance(item, Image.Image)):
            raise DataError(f"{source}: `image` must be a file path (a non-empty string), an "
                            f"image or a list of them, got {_shown(item)}")
    return [base / item if isinstance(item, str | Path) else item for item in items]


def _shown(value: Any) -> str:
    """A bad value as the user wrote it, with its JSON type: `"no"` (a string)."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}
    try:
        text = json.dumps(value)
    except TypeError:
        text = repr(value)
    return f"{text} ({kinds.get(type(value), type(value).__name__)})"


def _text(value: Any, key: str, source: str) -> str:
    if value is None or isinstance(value, str) and not value.strip():
        raise DataError(f"{source}: `{key}` is empty or missing; every record needs a non-empty "
                        f"{key}")
    if not isinstance(value, str):
        raise DataError(f"{source}: `{key}` must be text (a JSON string), got {_shown(value)}")
    return value.strip()


QUESTION_TYPES = ("closed", "open")


def _question_type(row: dict[str, Any], source: str) -> str | None:
    """closed / open, from `question_type` or `answer_type` (VQA-RAD writes CLOSED)."""
    found = {}
    for key in ("question_type", "answer_type"):
        value = row.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or value.strip().lower() not in QUESTION_TYPES:
            raise DataError(f"{source}: `{key}` must be \"closed\" or \"open\" (any case), got "
                            f"{_shown(value)}; a kind of question (presence, size...) belongs "
                            "in `category`")
        found[key] = value.strip().lower()
    if len(set(found.values())) > 1:
        raise DataError(f"{source}: `question_type` {found['question_type']!r} and "
                        f"`answer_type` {found['answer_type']!r} disagree; keep one")
    return next(iter(found.values()), None)


def _answerable(value: Any, source: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise DataError(f"{source}: `answerable` must be true or false (JSON booleans), got "
                        f"{_shown(value)}")
    return value


def _category(value: Any, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{source}: `category` must be a non-empty name (a JSON string), got "
                        f"{_shown(value)}")
    return value.strip()


def _make_record(row: dict[str, Any], base: Path, source: str) -> Record:
    return Record(
        images=_image_list(row.get("image", row.get("images")), base, source),
        question=_text(row.get("question"), "question", source),
        answer=_text(row.get("answer"), "answer", source),
        source=source,
        question_type=_question_type(row, source),
        answerable=_answerable(row.get("answerable"), source),
        repeat=_repeat(row.get("repeat", 1), source),
        category=_category(row.get("category"), source),
        extra={k: v for k, v in row.items() if k not in _KNOWN_KEYS},
    )


_KNOWN_KEYS = {"image", "images", "question", "answer", "question_type", "answer_type",
               "answerable", "repeat", "category"}


def _repeat(value: Any, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{source}: `repeat` is how many times training sees the row per epoch, "
                        f"a whole number >= 1; got {value!r}")
    return value


def _records_from_jsonl(path: Path) -> Iterable[Record]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            source = f"{path.name}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{source}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{source}: each line must be a JSON object")
            yield _make_record(row, path.parent, source)


def _records_from_llava_json(path: Path) -> Iterable[Record]:
    """LLaVA's format: `conversations` alternate human/gpt turns; each pair becomes a record."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path.name}: a LLaVA-style file is a JSON list of objects")
    for index, row in enumerate(rows):
        source = f"{path.name}[{index}]"
        turns = row.get("conversations") if isinstance(row, dict) else None
        if (not isinstance(turns, list) or not turns or len(turns) % 2
                or not all(isinstance(turn, dict) for turn in turns)):
            raise DataError(f"{source}: `conversations` must hold human/gpt turn pairs")
        for pair in range(0, len(turns), 2):
            human, gpt = turns[pair], turns[pair + 1]
            roles = (human.get("from"), gpt.get("from"))
            if roles != ("human", "gpt"):
                raise DataError(f"{source}.conversations[{pair}]: turns must go human then gpt, "
                                f"found {roles[0]!r} then {roles[1]!r}")
            question = human.get("value")
            if isinstance(question, str):
                question = question.replace("<image>", "")
            yield _make_record(
                {"image": row.get("image"), "question": question, "answer": gpt.get("value")},
                path.parent,
                f"{source}.conversations[{pair}]",
            )


def records_from_dataset(dataset: Any, *, name: str) -> list[Record]:
    """Records from a `datasets.Dataset` with image(s)/question/answer columns."""
    missing = {"question", "answer"} - set(dataset.column_names)
    if missing or not {"image", "images"} & set(dataset.column_names):
        raise DataError(
            f"{name}: a dataset needs `image` (or `images`), `question` and `answer` columns; it "
            f"has {dataset.column_names}"
        )
    return [_make_record(dict(row), Path("."), f"{name}[{i}]") for i, row in enumerate(dataset)]
