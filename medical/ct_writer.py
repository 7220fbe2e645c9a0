"""Write a Hounsfield-unit volume as a real DICOM CT series, one file per slice.

The synthetic cohort and the tests use it; the files carry everything a scanner's would that
our readers depend on (UIDs, patient geometry, rescale and window tags), plus whatever patient
attributes the caller passes, so de-identification has something real to remove.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RESCALE_INTERCEPT = -1024.0


@dataclass
class SeriesSpec:
    """Geometry and identity of one series. Positions follow DICOM patient coordinates (mm)."""

    study_uid: str
    series_uid: str
    spacing: tuple[float, float, float] = (2.5, 1.0, 1.0)  # (slice, row, column) in mm
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # first voxel centre (x, y, z)
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # row dir, column dir
    series_number: int = 1
    description: str = "SYNTHETIC CT"
    window: tuple[float, float] = (40.0, 400.0)  # (center, width): soft tissue
    instance_numbers: Sequence[int] | None = None  # default 1..n in slice order
    attributes: Mapping[str, Any] = field(default_factory=dict)  # extra tags, e.g. patient PHI
    # private blocks as a vendor writes them: (group, creator) -> [(offset, VR, value)]
    private: Mapping[tuple[int, str], Sequence[tuple[int, str, Any]]] = field(
        default_factory=dict)


def slice_normal(orientation: Sequence[float]):
    import numpy as np

    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.cross(row, col)


def write_ct_series(hu, folder: Path, spec: SeriesSpec) -> list[Path]:
    """Write `hu` (z, y, x) as slices `folder/<index>.dcm`; returns the paths in slice order.

    Values are stored as unsigned 16-bit with RescaleIntercept -1024 (the common CT layout),
    so a reader that forgets the Modality LUT is off by 1024 HU.
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pydicom.valuerep import DSfloat

    def ds_value(value: float) -> DSfloat:  # DS holds 16 characters: 0.8660254037844387 does not
        return DSfloat(float(value), auto_format=True)

    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {hu.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    normal = slice_normal(spec.orientation)
    numbers = list(spec.instance_numbers or range(1, len(hu) + 1))
    if len(numbers) != len(hu):
        raise ValueError(f"{len(numbers)} instance numbers for {len(hu)} slices")
    stored = np.clip(np.rint(hu - RESCALE_INTERCEPT), 0, 65535).astype(np.uint16)
    today = dt.date(2024, 1, 1).strftime("%Y%m%d")
    paths = []
    for index, pixels in enumerate(stored):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        sop_uid = generate_uid(entropy_srcs=[spec.series_uid, str(index)])
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = spec.study_uid, spec.series_uid
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[spec.study_uid, "frame"])
        ds.Modality, ds.SeriesNumber = "CT", spec.series_number
        ds.SeriesDescription = spec.description
        ds.InstanceNumber = numbers[index]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        position = np.asarray(spec.origin, float) + index * spec.spacing[0] * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [ds_value(v) for v in spec.orientation]
        ds.PixelSpacing = [ds_value(spec.spacing[1]), ds_value(spec.spacing[2])]
        ds.SliceThickness = ds_value(spec.spacing[0])
        ds.SliceLocation = round(float(position @ normal), 4)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = RESCALE_INTERCEPT, 1.0, "HU"
        ds.WindowCenter, ds.WindowWidth = spec.window
        ds.BurnedInAnnotation = "NO"
        for keyword, value in spec.attributes.items():
            setattr(ds, keyword, value)
        for (group, creator), elements in spec.private.items():
            block = ds.private_block(group, creator, create=True)
            for offset, vr, value in elements:
                block.add_new(offset, vr, value)
        ds.PixelData = pixels.tobytes()
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
