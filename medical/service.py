"""The study routes of `domainvlm serve`: DICOM in, de-identified, asked about, SR out."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
