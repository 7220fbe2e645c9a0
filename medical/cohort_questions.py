"""Questions and answers about a synthetic CT patient, read off its ground truth.

They cover presence, count, side, organ and size class, and questions whose premise is false
("How large is the lesion in the liver?" when there is none): their answer states the absence
and they are marked `answerable: false`, so evaluation can measure abstention. The rows form a
label file (keyed by the series UID as written) that `domainvlm.medical.vqa` turns into VQA data,
the same path a hospital's label file takes.

Each row names its question by a stable `question_id` (`QUESTION_IDS`): the same for every
patient whatever the answer, so a recipe can single one out ("lung-side": trained four times
per epoch) without matching its wording. `category` is how the answer is scored, and a
false-premise row is a category of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from domainvlm.medical.cohort import CohortPatient
from domainvlm.medical.phantom import Lesion

ORGAN_WORDS = {"lung": "lungs", "liver": "liver"}
FINDING_WORDS = {"lung": "lung nodule", "liver": "liver lesion"}
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five")
ABSENT = "There is none."
QUESTION_IDS = ("lung-presence", "lung-side", "lung-size", "liver-presence", "liver-side",
                "liver-size", "lesion-count", "lesion-organ")


def patient_questions(patient: CohortPatient) -> list[dict]:
    """Label rows for one patient: question_id, question, answer, question_type, answerable,
    category (presence, side, size, count, organ, false premise), and the UIDs of its series."""
    lesions = patient.truth.lesions
    rows: list[tuple[str, str, str, str, bool, str]] = []
    for organ in ("lung", "liver"):
        found = [lesion for lesion in lesions if lesion.organ == organ]
        finding = FINDING_WORDS[organ]
        rows.append((f"{organ}-presence", f"Is there a {finding}?", "yes" if found else "no",
                     "closed", True, "presence"))
        if found:
            rows.append((f"{organ}-side", f"Which side is the {finding} on?", _sides(found),
                         "closed", True, "side"))
            rows.append((f"{organ}-size", f"How large is the {finding}?", _size(found), "open",
                         True, "size"))
        else:
            rows.append((f"{organ}-side", f"Which side is the {finding} on?", ABSENT, "open",
                         False, "false premise"))
            rows.append((f"{organ}-size", f"How large is the {finding}?", ABSENT, "open", False,
                         "false premise"))
    rows.append(("lesion-count", "How many lesions are there?", COUNT_WORDS[len(lesions)],
                 "open", True, "count"))
    organs = sorted({lesion.organ for lesion in lesions})
    rows.append(("lesion-organ", "Which organ has a lesion?",
                 " and ".join(ORGAN_WORDS[o] for o in organs) if organs else ABSENT,
                 "open", bool(organs), "organ" if organs else "false premise"))
    return [{"series_uid": patient.series_uid, "study_uid": patient.study_uid,
             "question_id": i, "question": q, "answer": a, "question_type": t,
             "answerable": ok, "category": c}
            for i, q, a, t, ok, c in rows]


def cohort_questions(patients: Iterable[CohortPatient]) -> list[dict]:
    return [row for patient in patients for row in patient_questions(patient)]


def _sides(found: list[Lesion]) -> str:
    sides = {lesion.side for lesion in found}
    return "both" if len(sides) == 2 else sides.pop()


def _size(found: list[Lesion]) -> str:
    """The size class of the largest one: what a report would lead with."""
    return max(found, key=lambda lesion: lesion.diameter_mm).size_class
