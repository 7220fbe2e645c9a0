"""Request and response shapes of the study routes (`medical/service.py`), with examples for
the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

UID = r"^[0-9]+(\.[0-9]+)*$"
SERIES = r"^([0-9]+(\.[0-9]+)*)?$"  # empty: the first series with a volume
ADAPTER = r"^[A-Za-z0-9._@-]{1,100}$"


class SeriesOut(BaseModel):
    uid: str
    description: str
    modality: str
    instances: int


class StudyOut(BaseModel):
    id: str
    study_uid: str = Field(description="De-identified StudyInstanceUID")
    modality: str
    series: list[SeriesOut]
    instances: int
    created: datetime
    source: str = Field(description="upload or pacs")

    model_config = {"json_schema_extra": {"examples": [{
        "id": "3f2a9c0e5b1d4e7f8a6b2c9d0e1f2a3b", "study_uid": "2.25.1234567890",
        "modality": "CT", "series": [{"uid": "2.25.987654321", "description": "",
                                      "modality": "CT", "instances": 120}],
        "instances": 120, "created": "2026-01-05T10:00:00Z", "source": "upload"}]}}


class PacsList(BaseModel):
    pacs: list[str] = Field(description="Names of the configured PACS; the first is default",
                            examples=[["main", "research"]])


class PacsImport(BaseModel):
    pacs: str | None = Field(None, max_length=100,
                             description="A configured PACS by name; default the first")
    study_instance_uid: str = Field(max_length=64, pattern=UID,
                                    examples=["1.2.826.0.1.3680043.8.498.1"])


class ViewImage(BaseModel):
    index: int
    url: str
    description: str


class Views(BaseModel):
    series_uid: str
    view: dict[str, Any] | None
    view_from: str = Field(description="adapter, given, adapter+given or default")
    description: str
    images: list[ViewImage]


class AskStudy(BaseModel):
    questions: list[Annotated[str, Field(min_length=1, max_length=2000)]] = Field(
        min_length=1, max_length=16, examples=[["Is there a lung nodule?"]])
    adapter: str = Field("base", pattern=ADAPTER, examples=["base", "chest-ct@1"])
    series_uid: str | None = Field(None, max_length=64, pattern=UID)
    view: dict[str, Any] | None = Field(None, examples=[{"strategy": "slabs", "count": 4}])
    write_sr: bool = False
    max_new_tokens: int = 32


class StudyAnswer(BaseModel):
    id: str
    question: str
    answer: str
    sr_uid: str | None = Field(None, description="The SR's SOPInstanceUID in the PACS")


class StudyAnswers(BaseModel):
    answers: list[StudyAnswer]
    adapter: str
    base: dict[str, Any]
    series_uid: str
    description: str
    view: dict[str, Any] | None
    view_from: str
    timings: dict[str, float]

    model_config = {"json_schema_extra": {"examples": [{
        "answers": [{"id": "9b1c...", "question": "Is there a lung nodule?", "answer": "yes",
                     "sr_uid": None}],
        "adapter": "chest-ct@1", "base": {"source": "nano", "model_type": "llava",
                                          "weights": "5e3a..."},
        "series_uid": "2.25.987654321",
        "description": "DICOM CT series of 120 slices: montage of 9 axial slices ...",
        "view": {"strategy": "montage", "count": 9}, "view_from": "adapter",
        "timings": {"render_ms": 80.0, "queue_ms": 2.0, "model_ms": 410.0, "total_ms": 495.0}}]}}


UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["files"], "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"},
        "description": "DICOM files of one study, or one .zip of them"}}}}}}}
