"""VQA data built from a real PACS (Orthanc over DICOMweb) equals the build from files."""

from __future__ import annotations

import json

from domainvlm.medical.cohort import write_cohort
from domainvlm.medical.cohort_questions import cohort_questions
from domainvlm.medical.deid import DeidConfig
from domainvlm.medical.orthanc import LocalOrthanc
from domainvlm.medical.pacs import PacsClient
from domainvlm.medical.sources import folder_fetcher, pacs_fetcher
from domainvlm.medical.vqa import ViewSpec, build_vqa


def test_build_from_pacs_matches_build_from_folder(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", 3, seed=9, shape=(8, 32, 32))
    rows = cohort_questions(manifest.patients)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # One row keyed by study only: the fetcher must find the study's series by QIDO.
    study_only = {**rows[0], "series_uid": None}
    labels.write_text(labels.read_text() + json.dumps(study_only) + "\n")
    deid = DeidConfig(project_key="pacs-test-Gq7Wm3Zx9Lr2Nv8Tk4BdYh")
    views = ViewSpec(count=4)
    build_vqa(folder_fetcher(tmp_path / "cohort"), labels, tmp_path / "from-files",
              deid=deid, views=views)
    with LocalOrthanc(tmp_path / "orthanc") as pacs:
        client = PacsClient(pacs.dicomweb_url)
        assert len(client.store([tmp_path / "cohort"])) == 3 * 8
        build_vqa(pacs_fetcher(client), labels, tmp_path / "from-pacs", deid=deid, views=views)
    assert not pacs.is_running
    for split in ("train", "val", "test"):
        files = (tmp_path / "from-files" / f"{split}.jsonl").read_text()
        assert (tmp_path / "from-pacs" / f"{split}.jsonl").read_text() == files
    images = sorted(p.relative_to(tmp_path / "from-files")
                    for p in (tmp_path / "from-files").rglob("*.png"))
    for image in images:
        assert ((tmp_path / "from-pacs" / image).read_bytes()
                == (tmp_path / "from-files" / image).read_bytes())
