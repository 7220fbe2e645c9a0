"""Which images may carry text burned into their pixels, which de-identification never changes.

`BurnedInAnnotation` (0028,0301) says whether an image holds enough burned-in text to identify
the patient. Most IODs make it optional (Type 3), so its absence says nothing: what matters is
how the pixels were made. A CT or MR detector does not draw text; a camera or a screen grab
does. So an image without the attribute is treated as possibly burned in when its SOP class or
modality is one whose pixels are commonly a picture of a screen, a label or a document:

* Secondary Capture (every SC SOP class, modality OT/SC): screenshots of consoles, reports,
  worklists; the classic source of names in pixels.
* Ultrasound (US, IVUS; US, US multi-frame and Enhanced US Volume): the scanner's screen, with
  its header bar of patient name, ID and date, is what gets stored.
* Visible light (XC, ES, GM, SM, OP; the VL, video, dermoscopic and ophthalmic photography
  classes): endoscopy processors and fundus cameras overlay name and date; photographs and
  slide scans show wristbands, faces and specimen labels.
* Documents (DOC; Encapsulated PDF and CDA): the document is text about the patient, and
  nothing here de-identifies it.

Where the standard itself makes `BurnedInAnnotation` required (Type 1: the SC multi-frame,
Enhanced US, whole-slide microscopy and encapsulated document IODs), it does so for this
reason. A declared NO is trusted: the producer (or whoever cleaned the pixels) vouches for it.
"""

from __future__ import annotations

from typing import Any

_SOP = "1.2.840.10008.5.1.4.1.1."
PIXEL_TEXT_SOP_CLASSES = {
    _SOP + "7": "Secondary Capture Image",
    _SOP + "7.1": "Multi-frame Single Bit Secondary Capture Image",
    _SOP + "7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    _SOP + "7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    _SOP + "7.4": "Multi-frame True Color Secondary Capture Image",
    _SOP + "3": "Ultrasound Multi-frame Image (retired)",
    _SOP + "3.1": "Ultrasound Multi-frame Image",
    _SOP + "6": "Ultrasound Image (retired)",
    _SOP + "6.1": "Ultrasound Image",
    _SOP + "6.2": "Enhanced US Volume",
    _SOP + "77.1.1": "VL Endoscopic Image",
    _SOP + "77.1.1.1": "Video Endoscopic Image",
    _SOP + "77.1.2": "VL Microscopic Image",
    _SOP + "77.1.2.1": "Video Microscopic Image",
    _SOP + "77.1.3": "VL Slide-Coordinates Microscopic Image",
    _SOP + "77.1.4": "VL Photographic Image",
    _SOP + "77.1.4.1": "Video Photographic Image",
    _SOP + "77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    _SOP + "77.1.5.2": "Ophthalmic Photography 16 Bit Image",
    _SOP + "77.1.5.5": "Wide Field Ophthalmic Photography Stereographic Projection Image",
    _SOP + "77.1.5.6": "Wide Field Ophthalmic Photography 3D Coordinates Image",
    _SOP + "77.1.6": "VL Whole Slide Microscopy Image",
    _SOP + "77.1.7": "Dermoscopic Photography Image",
    _SOP + "104.1": "Encapsulated PDF",
    _SOP + "104.2": "Encapsulated CDA",
}
PIXEL_TEXT_MODALITIES = {
    "US": "ultrasound", "IVUS": "intravascular ultrasound", "OT": "other (screen captures)",
    "SC": "secondary capture", "XC": "external-camera photography", "ES": "endoscopy",
    "GM": "general microscopy", "SM": "slide microscopy", "OP": "ophthalmic photography",
    "DOC": "document",
}


def burned_in_reason(ds: Any) -> str | None:
    """Why the pixels of `ds` may hold identifying text, or None when nothing suggests it."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    if flag == "NO":
        return None
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if sop_class in PIXEL_TEXT_SOP_CLASSES:
        return f"{PIXEL_TEXT_SOP_CLASSES[sop_class]} without BurnedInAnnotation"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in PIXEL_TEXT_MODALITIES:
        return (f"modality {modality} ({PIXEL_TEXT_MODALITIES[modality]}) without "
                "BurnedInAnnotation")
    return None
