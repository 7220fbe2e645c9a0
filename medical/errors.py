"""Errors of the medical module that callers catch; the CLI prints each as one line.

Messages name the file (its path or archive member) and never a patient attribute: they are
raised before de-identification and may reach logs.
"""

from domainvlm.errors import DomainVLMError


class DicomError(DomainVLMError, ValueError):
    """A DICOM input is unusable; the message says which file and what to do."""


class NotDicomError(DicomError):
    """A file is not DICOM (no preamble / meta header and no parsable data set)."""


class DicomDecodeError(DicomError):
    """Pixel data cannot be decoded: no installed decoder for its transfer syntax, or corrupt."""


class SeriesGeometryError(DicomError):
    """A series cannot be stacked into a volume: mixed orientations, duplicates, gaps."""


class BurnedInAnnotationError(DicomError):
    """The image carries burned-in text (BurnedInAnnotation=YES) and the user did not opt in."""


class ArchiveLimitError(DicomError):
    """A zip member or archive expands past a limit (a zip bomb, or a limit set too low)."""


class PacsError(DomainVLMError, RuntimeError):
    """A PACS (DICOMweb) request failed; the message has the URL path and HTTP status."""
