"""A question and a model's answer as a DICOM Comprehensive SR that a PACS stores and shows.

The report references the source study, series and every source instance twice, as DICOM
expects: in the Current Requested Procedure Evidence Sequence (what a PACS indexes) and as
IMAGE content items the answer was inferred from. The model and adapter are named in the
content (Algorithm Name, a private Adapter item), in the device observer context and in the
equipment attributes. Patient and study identity are copied from the first source, which must
already be de-identified: this module adds no identity of its own and takes none elsewhere.

Content tree (TID-free, Comprehensive SR):

    CONTAINER (LN 18748-4) Diagnostic Imaging Report
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID / Name / Model Name
      CONTAINS  TEXT (99DVLM QUESTION) Question
      CONTAINS  TEXT (99DVLM ANSWER) Answer
        HAS CONCEPT MOD  TEXT (DCM 111001) Algorithm Name = model
        HAS CONCEPT MOD  TEXT (DCM 111003) Algorithm Version = domainvlm version
        HAS CONCEPT MOD  TEXT (99DVLM ADAPTER) Adapter = adapter      (when there is one)
        INFERRED FROM    IMAGE (DCM 121324) Source image, one per source instance
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainvlm.medical.errors import DicomError

CODING_SCHEME = "99DVLM"  # private scheme ("99" prefix, PS3.3 8.1), declared in each SR
MANUFACTURER = "domainvlm"
_TYPE2_IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                   "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                   "ReferringPhysicianName")
_LO_MAX = 64


@dataclass(frozen=True)
class SourceReference:
    """One instance the answer was drawn from."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class SrAnswer:
    """What `read_sr_answer` finds in a report written by `answer_to_sr`."""

    question: str
    answer: str
    model: str
    adapter: str | None
    references: tuple[SourceReference, ...]
    sr_study_uid: str
    sr_series_uid: str
    sr_sop_uid: str

    @property
    def study_uids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(ref.study_uid for ref in self.references))

    @property
    def series_uids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(ref.series_uid for ref in self.references))

    @property
    def instance_uids(self) -> tuple[str, ...]:
        return tuple(ref.sop_uid for ref in self.references)


def _code(value: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=CODING_SCHEME, meaning=meaning)


def _dcm(value: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator="DCM", meaning=meaning)


QUESTION = ("QUESTION", "Question")
ANSWER = ("ANSWER", "Answer")
ADAPTER = ("ADAPTER", "Adapter")
ALGORITHM_NAME = ("111001", "Algorithm Name")
ALGORITHM_VERSION = ("111003", "Algorithm Version")
SOURCE_IMAGE = ("121324", "Source image")


def _version() -> str:
    from domainvlm import __version__

    return str(__version__)


def _evidence_header(ds: Any) -> Any:
    """A copy of the source without pixel data, with empty type-2 identity where absent.

    highdicom reads PatientID & co. from the first evidence item unconditionally, so a
    de-identified source that dropped them could not be cited; and it puts that item's very
    element objects into the SR, so without a copy editing the SR would edit the source.
    """
    import copy

    from pydicom.dataset import Dataset

    header = Dataset()
    for element in ds:
        if element.tag.group != 0x7FE0:
            header.add(copy.deepcopy(element))
    for keyword in _TYPE2_IDENTITY:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _check_sources(sources: Sequence[Any]) -> list[Any]:
    if not sources:
        raise ValueError("answer_to_sr needs at least one source dataset to reference")
    for index, ds in enumerate(sources):
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                               "SOPClassUID") if not ds.get(k)]
        if missing:
            raise DicomError(f"source {index}: lacks {', '.join(missing)}; an SR can only "
                             f"reference complete DICOM instances")
    # One report, one patient: never let an answer cite another patient's images.
    patients = {str(ds.get("PatientID", "")) for ds in sources}
    if len(patients) > 1:
        raise DicomError(f"the {len(sources)} sources belong to {len(patients)} different "
                         f"patients (PatientID differs); make one report per patient")
    unique = {str(ds.SOPInstanceUID): ds for ds in reversed(sources)}  # first one wins
    return list(reversed(unique.values()))


def answer_to_sr(question: str, answer: str, sources: Sequence[Any], model_name: str,
                 adapter_name: str | None, *, series_uid: str | None = None,
                 sop_uid: str | None = None, series_number: int = 900,
                 created: dt.datetime | None = None) -> Any:
    """A `highdicom.sr.ComprehensiveSR` holding `question` and `answer` about `sources`.

    `sources` are the (de-identified) pydicom Datasets the model saw, pixel data optional
    (metadata from a PACS is enough). The SR joins the first source's study in a new series;
    its UIDs default to ones derived from the content, so storing the same answer twice
    replaces rather than duplicates it. `created` (default now) sets Content Date/Time.
    """
    import highdicom as hd
    from highdicom.sr import (
        ComprehensiveSR,
        ContainerContentItem,
        DeviceObserverIdentifyingAttributes,
        ImageContentItem,
        ObservationContext,
        ObserverContext,
        RelationshipTypeValues,
        TextContentItem,
    )
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if not question.strip() or not answer.strip():
        raise ValueError("answer_to_sr: question and answer must both be non-empty text")
    if not model_name.strip():
        raise ValueError("answer_to_sr: model_name is empty; name the model that answered")
    sources = _check_sources(sources)
    headers = [_evidence_header(ds) for ds in sources]
    modifier = RelationshipTypeValues.HAS_CONCEPT_MOD

    answer_item = TextContentItem(_code(*ANSWER), answer, RelationshipTypeValues.CONTAINS)
    answer_item.ContentSequence = [
        TextContentItem(_dcm(*ALGORITHM_NAME), model_name, modifier),
        TextContentItem(_dcm(*ALGORITHM_VERSION), f"domainvlm {_version()}", modifier),
    ]
    if adapter_name:
        answer_item.ContentSequence.append(
            TextContentItem(_code(*ADAPTER), adapter_name, modifier))
    for ds in sources:
        answer_item.ContentSequence.append(ImageContentItem(
            _dcm(*SOURCE_IMAGE), ds.SOPClassUID, ds.SOPInstanceUID,
            relationship_type=RelationshipTypeValues.INFERRED_FROM))

    device_uid = generate_uid(entropy_srcs=["domainvlm device", model_name, adapter_name or ""])
    observer = ObservationContext(observer_device_context=ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=MANUFACTURER, manufacturer_name=MANUFACTURER,
            model_name=model_name)))
    root = ContainerContentItem(codes.LN.DiagnosticImagingReport,
                                is_content_continuous=False)
    root.ContentSequence = [*observer,
                            TextContentItem(_code(*QUESTION), question,
                                            RelationshipTypeValues.CONTAINS),
                            answer_item]

    identity = [question, answer, model_name, adapter_name or "",
                *(str(ds.SOPInstanceUID) for ds in sources)]
    series_uid = series_uid or generate_uid(entropy_srcs=["domainvlm sr series", *identity])
    sop_uid = sop_uid or generate_uid(entropy_srcs=["domainvlm sr instance", *identity])
    created = created or dt.datetime.now()
    scheme = hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=CODING_SCHEME, name="domainvlm question answering",
        responsible_organization="domainvlm")
    return ComprehensiveSR(
        evidence=headers, content=root, series_instance_uid=series_uid,
        series_number=series_number, sop_instance_uid=sop_uid, instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=model_name[:_LO_MAX],
        software_versions=f"domainvlm {_version()}"[:_LO_MAX],
        series_description="domainvlm answer", is_complete=True, is_final=False,
        is_verified=False, content_date=created.date(), content_time=created.time(),
        coding_schemes=[scheme], specific_character_set="ISO_IR 192")


def save_sr(sr: Any, path: Path) -> Path:
    """Write the SR as a Part-10 file, via a temp file and a rename."""
    from domainvlm.atomic import atomic_file

    path = Path(path)
    with atomic_file(path) as handle:
        sr.save_as(handle, enforce_file_format=True)
    return path


def _concept(item: Any) -> tuple[str, str]:
    names = item.get("ConceptNameCodeSequence") or []
    if not names:
        return ("", "")
    return (str(names[0].get("CodingSchemeDesignator", "")), str(names[0].get("CodeValue", "")))


def _texts(items: Any, scheme: str, value: str) -> list[str]:
    return [str(item.get("TextValue", "")) for item in items or []
            if item.get("ValueType") == "TEXT" and _concept(item) == (scheme, value)]


def _one(found: list[str], what: str, name: str) -> str:
    if len(found) != 1:
        raise DicomError(f"{name}: has {len(found)} {what} items, expected 1; it is not a "
                         f"report written by answer_to_sr")
    return found[0]


def _evidence(ds: Any) -> list[SourceReference]:
    references = []
    for keyword in ("CurrentRequestedProcedureEvidenceSequence",
                    "PertinentOtherEvidenceSequence"):
        for study in ds.get(keyword) or []:
            for series in study.get("ReferencedSeriesSequence") or []:
                for instance in series.get("ReferencedSOPSequence") or []:
                    references.append(SourceReference(
                        str(study.StudyInstanceUID), str(series.SeriesInstanceUID),
                        str(instance.ReferencedSOPInstanceUID),
                        str(instance.ReferencedSOPClassUID)))
    return references


def read_sr_answer(ds: Any, name: str = "<dataset>") -> SrAnswer:
    """Parse a report written by `answer_to_sr` (from a file or a PACS) back into its parts.

    DicomError naming `name` if `ds` is not such a report, or if its image items cite an
    instance its evidence does not list.
    """
    if ds.get("Modality") != "SR" or "ContentSequence" not in ds:
        raise DicomError(f"{name}: not a structured report (Modality "
                         f"{ds.get('Modality')!r}, no ContentSequence)")
    root = ds.ContentSequence
    question = _one(_texts(root, CODING_SCHEME, QUESTION[0]), "Question", name)
    answers = [item for item in root
               if item.get("ValueType") == "TEXT" and _concept(item) == (CODING_SCHEME,
                                                                        ANSWER[0])]
    if len(answers) != 1:
        raise DicomError(f"{name}: has {len(answers)} Answer items, expected 1; it is not a "
                         f"report written by answer_to_sr")
    answer = answers[0]
    children = answer.get("ContentSequence") or []
    model = _one(_texts(children, "DCM", ALGORITHM_NAME[0]), "Algorithm Name", name)
    adapters = _texts(children, CODING_SCHEME, ADAPTER[0])
    references = _evidence(ds)
    listed = {ref.sop_uid for ref in references}
    cited = [str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for item in children
             if item.get("ValueType") == "IMAGE" and item.get("ReferencedSOPSequence")]
    unlisted = [uid for uid in cited if uid not in listed]
    if unlisted:
        raise DicomError(f"{name}: {len(unlisted)} source image items cite instances missing "
                         f"from the evidence sequences; the report is inconsistent")
    return SrAnswer(question=question, answer=str(answer.TextValue), model=model,
                    adapter=adapters[0] if adapters else None, references=tuple(references),
                    sr_study_uid=str(ds.StudyInstanceUID),
                    sr_series_uid=str(ds.SeriesInstanceUID),
                    sr_sop_uid=str(ds.SOPInstanceUID))
