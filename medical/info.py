"""What a DICOM file, folder or archive holds, series by series, for `domainvlm dicom info`.

Each series is named the way a person finds it again (the end of its UID, its description,
the folder it lies in) and described in a few short lines that fit a terminal. Nothing about
the patient is shown: a description that names the patient or holds a date is withheld.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SHORTEST_UID_TAIL = 8
_LONGEST_DESCRIPTION = 36
_DATE = re.compile(r"(?<!\d)(19|20)\d\d[-./]?(0[1-9]|1[0-2])[-./]?(0[1-9]|[12]\d|3[01])(?!\d)")


@dataclass
class Series:
    """The objects of one series found under the path the user named."""

    uid: str
    description: str
    names: list[str] = field(default_factory=list)  # where each object came from
    rows: list[tuple[str, ...]] = field(default_factory=list)  # image_row() of each


def image_row(ds: Any) -> tuple[str, ...]:
    """(modality, frames, rows x cols, spacing, thickness, syntax) of one object; ValueError and
    the like when an attribute is malformed."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    spacing = ds.get("PixelSpacing")
    return (str(ds.get("Modality", "?")), str(int(ds.get("NumberOfFrames", 1) or 1)),
            f"{ds.get('Rows', '?')} x {ds.get('Columns', '?')}",
            " x ".join(f"{float(v):.3g}" for v in spacing) if spacing else "",
            f"{float(ds.SliceThickness):.3g}" if ds.get("SliceThickness") else "",
            getattr(syntax, "name", "transfer syntax not stated") if syntax else
            "transfer syntax not stated")


def description(ds: Any) -> str:
    """The SeriesDescription quoted, or why there is none to show."""
    text = " ".join(str(ds.get("SeriesDescription") or "").split())
    if not text:
        return "(no description)"
    if _names_patient(text, ds):
        return "(description withheld: patient data)"
    return f'"{text}"'


def _names_patient(text: str, ds: Any) -> bool:
    """Whether free text holds a date or one of the patient's names or ids."""
    if _DATE.search(text):
        return True
    name = ds.get("PatientName")
    words = re.split(r"[\^=\s,]+", str(name)) if name else []
    ids = [str(v) for k in ("PatientID", "OtherPatientIDs", "AccessionNumber")
           for v in _values(ds.get(k))]
    return any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, re.IGNORECASE)
               for w in [*words, *ids] if len(w) >= 2)


def _values(value: Any) -> list[Any]:
    """The values of a tag that may hold one, several (MultiValue) or none."""
    from pydicom.multival import MultiValue

    return list(value) if isinstance(value, MultiValue) else [value] if value else []


def summary_lines(series: list[Series], root: Path, width: int) -> list[str]:
    """A title line, then per series: the name line, the images line, the encoding line."""
    objects = sum(len(s.names) for s in series)
    lines = [f"{objects} DICOM object{'s' * (objects != 1)} in {len(series)} series"]
    tails = uid_tails([s.uid for s in series])
    number_width = len(str(len(series)))
    indent = " " * (number_width + 3)
    for number, (one, tail) in enumerate(zip(series, tails, strict=True), 1):
        head = f"{number:>{number_width}}.  {tail}  {_fit(one.description, _LONGEST_DESCRIPTION)}"
        place = _place(one.names, root)
        room = max(width - len(head) - 2, 12)
        lines += ["", f"{head}  {_fit(place, room, keep_end=True)}",
                  _fit(indent + _images(one.rows), width),
                  _fit(indent + ", ".join(dict.fromkeys(r[5] for r in one.rows)), width)]
    return lines


def uid_tails(uids: list[str]) -> list[str]:
    """For each UID, its shortest end (at least 8 characters) that no other UID ends with."""
    tails: dict[str, str] = {}
    n, longest = _SHORTEST_UID_TAIL, max(map(len, uids), default=0)
    while len(tails) < len(set(uids)) and n <= longest:
        ends = Counter(u[-n:] for u in set(uids))
        for u in set(uids) - set(tails):
            if len(u) <= n:
                tails[u] = u
            elif ends[u[-n:]] == 1:
                tails[u] = "…" + u[-n:]
        n += 1
    return [tails[u] for u in uids]


def _images(rows: list[tuple[str, ...]]) -> str:
    modality, _, size, spacing, thickness, _ = rows[0]
    if "?" in size:  # no image: a report, plan or other object without pixels
        return f"{modality}, {len(rows)} object{'s' * (len(rows) > 1)} without an image"
    frames = sum(int(r[1]) for r in rows)
    count = (f"{len(rows)} image{'s' * (len(rows) > 1)}" if frames == len(rows)
             else f"{len(rows)} file{'s' * (len(rows) > 1)}, {frames} frames")
    text = f"{modality}, {count}, {size} px"
    if spacing:
        text += f" of {spacing} mm"
    if thickness:
        text += f", {thickness} mm thick"
    return text


def _place(names: list[str], root: Path) -> str:
    """Where the series lies, relative to the path named: its file when it is one, else the
    folder its files share ("./" for the top)."""
    relative = [_relative(name, str(root)) for name in names]
    if len(relative) == 1:
        return relative[0]
    folders = [os.path.dirname(r) for r in relative]
    shared = os.path.commonpath(folders) if all(folders) else ""
    return f"{shared or '.'}/"


def _relative(name: str, top: str) -> str:
    """`name` (a path, or `archive.zip:member`) as seen from `top`, the path named."""
    if name.startswith(top + ":"):  # a member of the archive named
        return name[len(top) + 1:]
    if name == top:  # the file named
        return Path(name).name
    relative = os.path.relpath(name, top)
    return name if relative.startswith("..") else relative


def _fit(text: str, room: int, keep_end: bool = False) -> str:
    """`text` cut to `room` characters with an ellipsis (at the start when `keep_end`)."""
    if len(text) <= room:
        return text
    return "…" + text[-(room - 1):] if keep_end else text[:room - 1] + "…"
