"""Outputs get ordinary permissions, like any other tool's: what plain `open()` and `mkdir` give
under the user's umask (a shared group can read a run when the umask lets it), on every file
and folder that fine-tuning, evaluation, the DICOM synthesiser and the VQA builder write;
only the project key stays 0600."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from domainvlm.evaluation.run import evaluate
from domainvlm.medical.cohort import write_cohort
from domainvlm.medical.cohort_questions import cohort_questions
from domainvlm.medical.deid import DeidConfig
from domainvlm.medical.keys import read_key_file, write_key_file
from domainvlm.medical.sources import folder_fetcher
from domainvlm.medical.vqa import ViewSpec, build_vqa
from domainvlm.train.config import build_config
from domainvlm.train.loop import finetune

KEY = "test-project-key-Vb7Nq2Lm9Xr4Tk8Wz3Pc"


@pytest.fixture(params=[0o022, 0o027], ids=lambda m: f"umask-{m:03o}")
def plain(request, tmp_path):
    """Under `umask`: the (file, folder) modes plain `open()` and `mkdir` give."""
    old = os.umask(request.param)
    try:
        (tmp_path / "plain-file").touch()
        (tmp_path / "plain-dir").mkdir()
        yield mode_of(tmp_path / "plain-file"), mode_of(tmp_path / "plain-dir")
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def odd_modes(folder: Path, plain: tuple[int, int]) -> dict[str, str]:
    """Every file and folder under `folder` (itself included) whose mode is not the plain one."""
    file_mode, dir_mode = plain
    found = {}
    for path in [folder, *folder.rglob("*")]:
        expected = dir_mode if path.is_dir() else file_mode
        if mode_of(path) != expected:
            found[str(path.relative_to(folder.parent))] = f"{mode_of(path):o}"
    return found


def test_finetune_and_eval_outputs_get_the_umask(plain, tiny_models, shapes_data, tmp_path):
    run = finetune(build_config(dict(
        model=str(tiny_models("llava")), data=str(shapes_data["train"]),
        output=str(tmp_path / "run"), max_steps=2, batch_size=8, save_every=1,
        cache_dir=str(tmp_path / "cache"))))
    assert (run.output / "run.json").is_file() and (run.output / "history.json").is_file()
    assert odd_modes(run.output, plain) == {}
    assert odd_modes(tmp_path / "cache", plain) == {}
    evaluate(str(run.adapter), str(shapes_data["eval"]), tmp_path / "eval", max_new_tokens=2)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] > 0
    assert odd_modes(tmp_path / "eval", plain) == {}


def test_dicom_synth_and_build_vqa_outputs_get_the_umask(plain, tmp_path):
    manifest = write_cohort(tmp_path / "cohort", 3, seed=1, shape=(8, 32, 32))
    rows = cohort_questions(manifest.patients)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_vqa(folder_fetcher(tmp_path / "cohort"), labels, tmp_path / "vqa",
              deid=DeidConfig(project_key=KEY), views=ViewSpec(count=2),
              fractions={"train": 0.5, "test": 0.5})
    assert (tmp_path / "vqa" / "build.json").is_file()
    assert odd_modes(tmp_path / "cohort", plain) == {}
    assert odd_modes(tmp_path / "vqa", plain) == {}


def test_the_project_key_stays_private_whatever_the_umask(plain, tmp_path):
    path = write_key_file(tmp_path / "keys" / "project.key")
    assert mode_of(path) == 0o600
    assert read_key_file(path)
