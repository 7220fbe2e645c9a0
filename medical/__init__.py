"""domainvlm.medical: DICOM in, de-identified VQA data out, a PACS over DICOMweb, answers as SR.

The public API, in the order a scan travels::

    from domainvlm.medical import (DeidConfig, ViewSpec, build_vqa, folder_fetcher,
                                   load_volume, read_key_file, render_views)

    volume = load_volume("dicom/series-3")                 # slices ordered by position, HU
    views = render_views(volume, ViewSpec(strategy="slabs", count=4, window="lung"))
    views[0].to_pil().save("series-3.png")                 # views[0].description says what
    deid = DeidConfig(project_key=read_key_file("project.key"))
    build_vqa(folder_fetcher("dicom/"), "labels.csv", "vqa/", deid=deid,
              views=ViewSpec(count=9))                     # vqa/{train,val,test}.jsonl

Modules, in the same order: `io` (read files, folders, zips; decode frames) with `archives`
(zip members streamed within size and ratio limits), `render` (windows, VOI, colour),
`series` (stack a series by position), `views` (slices, MIP, montage with provenance),
`lungs` (the lungs from HU, for a lung-only window), `deid` (PS3.15 de-identification) with
`keys` (the project key: policy, keygen, key files) and `burned_in` (which images may show
text in their pixels), `labels` + `sources` + `vqa` + `splits` (labelled studies to VQA JSONL
split by patient), `pacs` + `orthanc` (DICOMweb), `sr` (answers as DICOM SR), `phantom` +
`cohort` + `ct_writer` + `cohort_questions` (the synthetic CT cohort), `image_reader` (scans
for `domainvlm ask`), `monai_reader` (a MONAI `ImageReader` over `series`), `cli`
(`domainvlm dicom ...`), `service` with `study_intake`, `study_views` and `study_schemas` (the
study routes of `domainvlm serve`).

The names are loaded on first use, so importing the package costs nothing.
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING
from typing import Any as _Any

if TYPE_CHECKING:  # what editors and type checkers see; at run time, __getattr__ below
    from domainvlm.medical.deid import DeidConfig, deidentify, deidentify_tree
    from domainvlm.medical.errors import DicomError
    from domainvlm.medical.io import iter_dicom, read_frames
    from domainvlm.medical.keys import read_key_file, write_key_file
    from domainvlm.medical.monai_reader import DomainvlmDicomReader
    from domainvlm.medical.render import render_frame
    from domainvlm.medical.series import Volume, load_volume
    from domainvlm.medical.sources import folder_fetcher
    from domainvlm.medical.views import View
    from domainvlm.medical.vqa import ViewSpec, build_vqa, render_views, write_public_vqa

# public name -> module that defines it
_EXPORTS = {
    # read
    "iter_dicom": "io", "read_frames": "io", "load_volume": "series", "Volume": "series",
    # render
    "render_frame": "render", "ViewSpec": "vqa", "render_views": "vqa", "View": "views",
    # de-identify
    "DeidConfig": "deid", "deidentify": "deid", "deidentify_tree": "deid",
    "write_key_file": "keys", "read_key_file": "keys",
    # build VQA data
    "build_vqa": "vqa", "folder_fetcher": "sources", "write_public_vqa": "vqa",
    # inside MONAI pipelines (needs the `monai` extra)
    "DomainvlmDicomReader": "monai_reader",
    # what they raise
    "DicomError": "errors",
}

__all__ = [
    "iter_dicom", "read_frames", "load_volume", "Volume",
    "render_frame", "ViewSpec", "render_views", "View",
    "DeidConfig", "deidentify", "deidentify_tree", "write_key_file", "read_key_file",
    "build_vqa", "folder_fetcher", "write_public_vqa",
    "DomainvlmDicomReader",
    "DicomError",
]


def __getattr__(name: str) -> _Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'domainvlm.medical' has no attribute {name!r}")
    value = getattr(_import_module(f"domainvlm.medical.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    """The public names and the submodules loaded so far, as a notebook completes them."""
    return sorted({*__all__, *(n for n in globals() if not n.startswith("_")
                               and n != "TYPE_CHECKING")})
