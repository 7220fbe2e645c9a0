"""domainvlm.medical: DICOM in, de-identified VQA data out, a PACS over DICOMweb, answers as SR.

Modules, in the order a scan travels: `io` (read files, folders, zips; decode frames) with
`archives` (zip members streamed within size and ratio limits), `render` (windows, VOI,
colour), `series` (stack a series by position), `views` (slices, MIP, montage with
provenance), `lungs` (the lungs from HU, for a lung-only window), `deid` (PS3.15
de-identification) with `keys` (the project key: policy, keygen, key files) and `burned_in`
(which images may show text in their pixels), `labels` + `sources` + `vqa` + `splits`
(labelled studies to VQA JSONL split by patient), `pacs` + `orthanc` (DICOMweb), `sr`
(answers as DICOM SR), `phantom` + `cohort` + `ct_writer` + `cohort_questions` (the
synthetic CT cohort), `cli` (`domainvlm dicom ...`).
"""
