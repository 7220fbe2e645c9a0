"""De-identification: DICOM PS3.15 Annex E Basic Profile, keyed UIDs and dates, a final sweep.

Every data set leaves the loader through here before it can reach a cache, a log, training
data or a response. The attribute table is Kitware's `dicom-anonymizer` (the PS3.15 Table
E.1-1 actions of the newest DICOM edition it ships); where its actions do not fit a pipeline
that must be reproducible, ours replace them:

* UIDs: it draws random UIDs (different on every run and process). We map every UID that is
  not a well-known DICOM UID to `2.25.<HMAC-SHA256(project key, UID)>`: the same input UID gives
  the same output within a project key, a different one under another key, on any machine.
* Dates: it writes 0001-01-01. We either shift every date (DA, DT) of a patient by the same
  number of days, keeping intervals and times (Retain Longitudinal Temporal Information,
  Modified Dates option), or empty every date and time. Birth dates are always emptied.
* Sequences: it applies its table to top-level attributes only (items of kept sequences go
  untouched), and into sequences it replaces it writes "ANONYMIZED" over every nested value,
  codes and UIDs included. We clean every item of every kept sequence with the full table,
  deepest first, and empty the sequences the table says to replace (D) or empty (Z).
* Person names the table keeps as dummies are emptied, so any name left is a real miss.
* Patient: PatientID and PatientName become a keyed pseudonym, so studies of one patient stay
  grouped (the key holder can re-link them: keep the key secret). A guessable key undoes all
  of this, so `DeidConfig` refuses weak ones (`domainvlm.medical.keys`).

Then all private tags go (also inside sequences), and a final sweep removes whatever the table
missed: person names (PN) anywhere, other IDs and names, addresses, comments, original and
encrypted attribute sequences. Pixel data is never changed, so an image whose pixels may hold
text (BurnedInAnnotation YES, or a class of image that commonly does and does not say:
`domainvlm.medical.burned_in`) is refused unless the caller opts in.

What the output claims (PS3.15 E.1.1; PS3.3 C.7.1.1, Patient Identity Removed: "the true
identity of the patient has been removed from the Attributes and the Pixel Data"):

* Complete: PatientIdentityRemoved YES; codes (CID 7050) 113100 Basic Application
  Confidentiality Profile, plus 113107 Retain Longitudinal Temporal Information Modified Dates
  Option when dates were shifted (removed dates are the profile's own action).
* Not complete, when private tags were kept (`keep_private`: all of them as they are, which is
  not the Retain Safe Private Option 113111, that keeps only attributes known to be safe) or
  when pixels that may hold text were let through (`allow_burned_in`; we never clean pixels, so
  113101 Clean Pixel Data is never claimed): PatientIdentityRemoved NO, no method codes (a code
  would claim the profile), and DeidentificationMethod says what was done and what was not.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import hmac
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainvlm.atomic import new_folder
from domainvlm.errors import ConfigError
from domainvlm.medical.burned_in import burned_in_reason
from domainvlm.medical.errors import BurnedInAnnotationError, DicomError
from domainvlm.medical.io import iter_dicom
from domainvlm.medical.keys import check_project_key, is_synthetic

TABLES = ("dicomfields_2026c", "dicomfields_2024b", "dicomfields_2023")  # newest first
MAX_SHIFT_DAYS, MIN_SHIFT_DAYS = 3650, 365  # derived shifts move dates 1-10 years back
_FORBIDDEN = frozenset({
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientAddress",
    "PatientTelephoneNumbers", "PatientBirthName", "PatientMotherBirthName",
    "MedicalRecordLocator", "AdditionalPatientHistory", "OriginalAttributesSequence",
    "ModifiedAttributesSequence", "EncryptedAttributesSequence", "PatientBirthDate",
    "ReferencedPatientSequence", "ReferencedPatientPhotoSequence"})


@dataclass(frozen=True)
class DeidConfig:
    """How to de-identify. `date_shift_days` None derives a shift per patient from the key.

    `project_key` must pass `keys.check_project_key`, except with `synthetic_only`: the demo's
    exemption for its made-up patients, under which every data set without the synthetic
    cohort's mark is refused (`keys.is_synthetic`). Not offered by the CLI.

    Example::

        from domainvlm.medical import DeidConfig, read_key_file

        config = DeidConfig(project_key=read_key_file("project.key"), shift_dates=False)
    """

    project_key: str = field(repr=False)  # a secret: kept out of logs and tracebacks
    shift_dates: bool = True  # False: empty every date and time instead
    date_shift_days: int | None = None
    allow_burned_in: bool = False  # True only when the pixels were checked or cleaned
    keep_private: bool = False  # True keeps private tags as they are: they may hold PHI
    synthetic_only: bool = False  # a published key, for the synthetic cohort only

    def __post_init__(self) -> None:
        if not (self.synthetic_only and (self.project_key or "").strip()):
            check_project_key(self.project_key)  # synthetic_only: data sets checked instead
        if self.date_shift_days is not None and not self.shift_dates:
            raise ConfigError(f"date_shift_days={self.date_shift_days} with shift_dates=False; "
                             "set shift_dates=True or drop date_shift_days")
        if self.date_shift_days == 0:
            raise ConfigError("date_shift_days=0 would keep the real dates; give a non-zero "
                             "number of days, None (derived per patient) or shift_dates=False")


@dataclass
class DeidReport:
    """What deidentify_tree did, in counts only (nothing from a patient), and the files it
    could not read or de-identify (`skipped`: "name: why", names as the input has them)."""

    output: str
    files_written: int = 0
    duplicates_skipped: int = 0
    studies: int = 0
    series: int = 0
    patients: int = 0
    burned_in_allowed: int = 0  # BurnedInAnnotation YES, let through by allow_burned_in
    possibly_burned_in_allowed: int = 0  # undeclared, of a kind that often is (burned_in.py)
    identity_not_removed: int = 0  # written with PatientIdentityRemoved NO (see above)
    dates: str = "shifted"
    table: str = ""
    sweep: dict[str, int] = field(default_factory=dict)  # what the final sweep removed
    skipped: list[str] = field(default_factory=list)


def _digest(key: str, kind: str, value: str) -> bytes:
    return hmac.new(key.encode(), f"{kind}\0{value}".encode(), hashlib.sha256).digest()


def remap_uid(uid: str, project_key: str) -> str:
    """The de-identified form of `uid` under `project_key`; well-known DICOM UIDs are kept."""
    from pydicom.uid import UID_dictionary

    uid = str(uid).strip().rstrip("\0")
    if not uid or uid in UID_dictionary:
        return uid
    return "2.25." + str(int.from_bytes(_digest(project_key, "uid", uid)[:16], "big"))


def pseudonym(patient_key: str, project_key: str) -> str:
    """The PatientID (and PatientName) written for a patient under `project_key`."""
    return "ANON-" + _digest(project_key, "patient", patient_key).hex()[:16].upper()


def date_shift_days(patient_key: str, config: DeidConfig) -> int:
    """Days added to every date of this patient: the fixed shift, or one derived from the key."""
    if config.date_shift_days is not None:
        return config.date_shift_days
    span = MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1
    value = int.from_bytes(_digest(config.project_key, "date", patient_key)[:8], "big")
    return -(MIN_SHIFT_DAYS + value % span)


def patient_key(ds: Any) -> str:
    """What identifies the patient of `ds`: PatientID, else name and birth date, else study."""
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        return "id:" + pid
    name = str(ds.get("PatientName", "") or "").strip()
    if name:
        return f"name:{name}\0{ds.get('PatientBirthDate', '')}"
    return "study:" + str(ds.get("StudyInstanceUID", ""))


def deidentify(ds: Any, config: DeidConfig, name: str = "<dataset>") -> Any:
    """A de-identified copy of `ds` (the input is not changed). See the module docstring.

    Example::

        import pydicom
        from domainvlm.medical import DeidConfig, deidentify, read_key_file

        config = DeidConfig(project_key=read_key_file("project.key"))
        clean = deidentify(pydicom.dcmread("ct-001.dcm"), config, name="ct-001.dcm")
        clean.save_as("ct-001-deid.dcm")
    """
    return _deidentify(ds, config, name)[0]


def _deidentify(ds: Any, config: DeidConfig, name: str) -> tuple[Any, Counter]:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    burned_in = burned_in_reason(ds)
    if burned_in and not config.allow_burned_in:
        raise BurnedInAnnotationError(
            f"{name}: {burned_in}: its pixels may show the patient's name or ID, and "
            "de-identification does not change pixels; check or clean them (then set "
            "BurnedInAnnotation to NO), or opt in with allow_burned_in=True "
            "(--allow-burned-in) once they are checked")
    if config.synthetic_only and not is_synthetic(ds):
        raise DicomError(f"{name}: not from the synthetic cohort, and synthetic_only=True "
                         "(the demo's published key) is for synthetic patients only; use a "
                         "project key of your own (`domainvlm dicom keygen KEYFILE`)")
    key = patient_key(ds)
    out = copy.deepcopy(ds)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    _clean_tree(out, config)
    fixes = Counter()
    shift = date_shift_days(key, config) if config.shift_dates else None
    _walk(out, functools.partial(_fix_dates, shift=shift, fixes=fixes))
    _walk(out, functools.partial(_remap_uids, project_key=config.project_key))
    _walk(out, functools.partial(_sweep, keep_private=config.keep_private, fixes=fixes))
    alias = pseudonym(key, config.project_key)
    out.PatientID = alias
    out.PatientName = alias
    gaps = (["private tags kept as they are"] if config.keep_private else []) + (
        ["pixels may hold burned-in text"] if burned_in else [])
    _claim(out, shift is not None, gaps)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    if "SOPClassUID" in out:
        meta.MediaStorageSOPClassUID = out.SOPClassUID
    if "SOPInstanceUID" in out:
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.file_meta = meta
    return out, fixes


def _claim(out: Any, shifted: bool, gaps: list[str]) -> None:
    """Write what was done (module docstring): the profile and options, or what is missing."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    out.LongitudinalTemporalInformationModified = "MODIFIED" if shifted else "REMOVED"
    dates = "dates shifted" if shifted else "dates removed"
    if gaps:  # LO values hold 64 characters: one value per statement
        out.PatientIdentityRemoved = "NO"
        out.DeidentificationMethod = ["PS3.15 Basic Profile NOT complete", *gaps,
                                      "keyed UIDs", dates]
        if "DeidentificationMethodCodeSequence" in out:
            del out.DeidentificationMethodCodeSequence
        return
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = f"PS3.15 Basic Profile; keyed UIDs; {dates}"
    codes = [("113100", "Basic Application Confidentiality Profile")]
    if shifted:
        codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    out.DeidentificationMethodCodeSequence = Sequence(items)


@functools.cache
def _table() -> tuple[str, dict]:
    """(table name, tag -> action): the Basic Profile with our actions where it falls short."""
    import dicomanonymizer.simpledicomanonymizer as anon
    from pydicom.datadict import dictionary_VR

    for name in TABLES:
        try:
            rules = anon.initialize_actions(name)
            break
        except ValueError:
            continue
    else:
        raise RuntimeError(f"dicom-anonymizer has none of the tables {TABLES}; upgrade it")
    for tag, action in list(rules.items()):
        if len(tag) != 2:
            continue  # repeating groups (curves, overlays): all deleted, kept as they are
        try:
            vr = dictionary_VR((tag[0] << 16) | tag[1])
        except KeyError:
            continue
        deleting = action is anon.delete
        if vr == "UI" or action in (anon.replace_UID, anon.delete_or_empty_or_replace_UID):
            rules[tag] = _delete if deleting else anon.keep  # our UID pass remaps what stays
        elif vr in ("DA", "DT", "TM"):
            rules[tag] = _delete if deleting else anon.keep  # our date pass shifts or empties
        elif vr == "SQ" and not deleting:
            rules[tag] = _empty_sequence
        elif vr == "PN" and not deleting:
            rules[tag] = anon.empty  # not "ANONYMIZED": a name left in PN is then a real miss
    rules[(0x0010, 0x0030)] = _delete  # PatientBirthDate, shifted or not, is identifying
    return name, rules


def _delete(dataset: Any, tag: tuple[int, int]) -> None:
    if tag in dataset:
        del dataset[tag]


def _empty_sequence(dataset: Any, tag: tuple[int, int]) -> None:
    if tag in dataset:
        dataset[tag].value = []


def _clean_tree(ds: Any, config: DeidConfig) -> None:
    """Apply the table to every nested item (deepest first), then to `ds` itself."""
    from dicomanonymizer.simpledicomanonymizer import anonymize_dataset

    for element in list(ds):
        if element.VR == "SQ" and element.value:
            for item in element.value:
                _clean_tree(item, config)
    # Every action of the table is a no-op on a tag that is absent, so only the rules of tags
    # present (and the repeating-group ones, which walk the dataset) run: the same result,
    # without ~650 lookups per item (the bulk of de-identification time). keys() gives the
    # tags; iterating a Dataset would decode every element.
    present = {(tag.group, tag.element) for tag in ds.keys()}  # noqa: SIM118
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        present |= {(tag.group, tag.element) for tag in meta.keys()}  # noqa: SIM118
    rules = {tag: action for tag, action in _table()[1].items()
             if len(tag) > 2 or tag in present}
    anonymize_dataset(ds, None, delete_private_tags=not config.keep_private,
                      base_rules_gen=lambda: rules)


def _walk(ds: Any, visit: Callable[[Any, Any], None]) -> None:
    """Call visit(dataset, element) on every element, nested ones included (not file_meta)."""
    for tag in list(ds.keys()):
        if tag not in ds:
            continue
        element = ds[tag]
        visit(ds, element)
        if tag in ds and element.VR == "SQ" and element.value:
            for item in element.value:
                _walk(item, visit)


def _fix_dates(ds: Any, element: Any, shift: int | None, fixes: Counter) -> None:
    if element.VR not in ("DA", "DT", "TM") or element.value in (None, ""):
        return
    if shift is None:
        element.value = ""
        return
    if element.VR == "TM":
        return  # kept: with dates shifted, times of day do not identify and keep intervals
    values = element.value if element.VM > 1 else [element.value]
    shifted = [_shift(str(v), element.VR, shift) for v in values]
    if any(v is None for v in shifted):
        fixes["unreadable_dates_emptied"] += 1
        element.value = ""
        return
    element.value = shifted if element.VM > 1 else shifted[0]


def _shift(value: str, vr: str, days: int) -> str | None:
    """`value` (DA, or DT keeping its time and offset) moved by `days`; None if unreadable."""
    text = value.strip().replace(".", "") if vr == "DA" else value.strip()
    digits = len(text) if vr == "DA" else min(len(text.split("+")[0].split("-")[0]), 8)
    date_part = text[:digits]
    if digits not in (4, 6, 8) or not date_part.isdigit():
        return None
    padded = date_part + "0101"[digits - 4:] if digits < 8 else date_part
    try:
        moved = dt.datetime.strptime(padded, "%Y%m%d").date() + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    if moved.year < 1:
        return None
    return moved.strftime("%Y%m%d")[:digits] + text[digits:]


def _remap_uids(ds: Any, element: Any, project_key: str) -> None:
    if element.VR != "UI" or not element.value:
        return
    if element.VM > 1:
        element.value = [remap_uid(v, project_key) for v in element.value]
    else:
        element.value = remap_uid(element.value, project_key)


def _sweep(ds: Any, element: Any, keep_private: bool, fixes: Counter) -> None:
    """Remove what must never leave, whatever the table did: the last line of defence."""
    keyword = element.keyword or ""
    if element.tag.is_private:
        if not keep_private:
            del ds[element.tag]
            fixes["private_tags"] += 1
    elif keyword in _FORBIDDEN or "Comment" in keyword:
        del ds[element.tag]
        fixes["identifying_attributes"] += 1
    elif element.VR == "PN" and str(element.value or "").strip():
        element.value = ""
        fixes["person_names"] += 1


def deidentify_tree(src: Path, dst: Path, config: DeidConfig,
                    progress: Callable[[int], None] | None = None) -> DeidReport:
    """De-identify every DICOM file under `src` (file, folder or zip) into a new folder `dst`.

    Output: `dst/<study UID>/<series UID>/<SOP instance UID>.dcm` (de-identified UIDs, so no
    input name survives). Written to a hidden sibling folder renamed to `dst` at the end: an
    error (e.g. BurnedInAnnotationError) leaves nothing behind. `progress(1)` per file.

    Example::

        from domainvlm.medical import DeidConfig, deidentify_tree, read_key_file

        config = DeidConfig(project_key=read_key_file("project.key"))
        report = deidentify_tree("dicom/", "dicom-deid/", config)
        print(report.files_written, report.skipped)
    """
    src, dst = Path(src), Path(dst)
    if src.is_dir() and dst.resolve().is_relative_to(src.resolve()):
        raise ConfigError(f"{dst}: the output folder is inside the input {src}; "
                         "write it somewhere else")
    report = DeidReport(output=str(dst), dates="shifted" if config.shift_dates else "removed",
                        table=_table()[0])
    studies, series, patients, fixes = set(), set(), set(), Counter()
    with new_folder(dst) as partial:
        for source in iter_dicom(src, unreadable=report.skipped):
            try:
                out, found = _deidentify(source.dataset, config, source.name)
            except (BurnedInAnnotationError, ConfigError):
                raise  # a decision for the user, not a broken file
            except (DicomError, *_MALFORMED) as err:
                report.skipped.append(_why(source.name, err))
                continue
            fixes.update(found)
            folder = partial / _safe(out.get("StudyInstanceUID"), "no-study") / _safe(
                out.get("SeriesInstanceUID"), "no-series")
            stem = _safe(out.get("SOPInstanceUID"), f"{report.files_written:06d}")
            path = folder / f"{stem}.dcm"
            if path.exists():
                report.duplicates_skipped += 1
                continue
            folder.mkdir(parents=True, exist_ok=True)
            try:
                out.save_as(path, enforce_file_format=True)
            except _MALFORMED as err:
                path.unlink(missing_ok=True)
                report.skipped.append(_why(source.name, err))
                continue
            report.files_written += 1
            burned_in = burned_in_reason(source.dataset)  # only reached when allowed
            report.burned_in_allowed += burned_in == "BurnedInAnnotation is YES"
            report.possibly_burned_in_allowed += bool(burned_in) and (
                burned_in != "BurnedInAnnotation is YES")
            report.identity_not_removed += out.PatientIdentityRemoved == "NO"
            studies.add(folder.parent.name)
            series.add(folder.name)
            patients.add(str(out.PatientID))
            if progress is not None:
                progress(1)
        if report.files_written == 0:
            raise DicomError(f"{src}: no DICOM files found to de-identify")
    report.studies, report.series, report.patients = len(studies), len(series), len(patients)
    report.sweep = dict(sorted(fixes.items()))
    return report


# What pydicom raises for values it cannot parse or write (a broken file, not a bug of ours).
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
              NotImplementedError, EOFError)


def _why(name: str, err: Exception) -> str:
    """"name: why" for a skipped file. Our own messages name no patient attribute; a library's
    may quote a value (a date, a name), so only its type is given."""
    if isinstance(err, DicomError):
        return str(err)
    return f"{name}: cannot be de-identified ({type(err).__name__} in its attributes)"


def _safe(uid: Any, fallback: str) -> str:
    text = str(uid or "").strip()
    return text if text and all(c.isdigit() or c == "." for c in text) else fallback
