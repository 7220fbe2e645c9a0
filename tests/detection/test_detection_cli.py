"""`domainvlm detect` on real files: the JSON it prints and the picture it draws, and its
errors; each error is one line with exit code 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import run_cli

from domainvlm.detection.detector import Detector
from domainvlm.detection.student import ScoringParams, StudentConfig, ViLDStudent
from domainvlm.detection.teacher import Teacher
from domainvlm.detection.tiny import build_tiny_detector
from domainvlm.nano.tabletop_world import render_scene


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("detect-cli")
    teacher = Teacher.load(build_tiny_detector("clip", root / "teacher"))
    torch.manual_seed(0)
    student = ViLDStudent(StudentConfig(embed_dim=teacher.dim, proposals_test=40))
    # A low base scale keeps every score low: the drawn output must still match the JSON.
    Detector(student, teacher, base=("red mug",), scoring=ScoringParams()).save(root / "det")
    image = root / "scene.png"
    render_scene(7)[0].save(image)
    return root / "det", image


def test_detect_prints_json_and_draws_the_same_boxes(saved, tmp_path: Path, capsys,
                                                     monkeypatch) -> None:
    folder, image = saved
    code, out, _ = run_cli(capsys, monkeypatch, "detect", image, "--model", folder,
                           "--prompt", "red mug", "--prompt", "metal can",
                           "--score-threshold", "0", "--json", "-o", tmp_path / "out.png")
    assert code == 0
    [found] = json.loads(out)
    assert found["image"] == str(image) and found["labels"]
    assert set(found["labels"]) <= {"red mug", "metal can"}
    assert found["scores"] == sorted(found["scores"], reverse=True)
    drawn = np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).astype(int)
    original = np.asarray(Image.open(image).convert("RGB")).astype(int)
    changed = np.argwhere((drawn != original).any(-1))
    x1, y1, x2, y2 = found["boxes"][0]
    # The best box's outline is drawn where the JSON puts it.
    assert any(abs(x - x1) <= 2 or abs(x - x2) <= 2 for _, x in changed[:2000])
    assert changed[:, 1].min() <= x1 + 2 and changed[:, 1].max() >= min(x2, 319) - 2
    assert drawn.shape == original.shape and y2 > y1


@pytest.mark.parametrize(("args", "message"), [
    (["--prompt", ""], "prompt 1 is blank"),
    (["--prompt", "red mug", "--model", "/nonexistent/detector"], "nonexistent"),
    (["--prompt", "red mug", "--score-threshold", "2"], "score-threshold"),
])
def test_detect_errors_are_one_line(saved, tmp_path: Path, capsys, monkeypatch, args,
                                    message) -> None:
    folder, image = saved
    model = [] if "--model" in args else ["--model", folder]
    code, out, err = run_cli(capsys, monkeypatch, "detect", image, *model, *args,
                             "-o", tmp_path / "out.png")
    assert code == 2 and message in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


def test_detect_without_a_model_uses_the_shipped_detector(tmp_path: Path, capsys,
                                                         monkeypatch) -> None:
    """It finds the scene's objects (ground truth), a novel category included."""
    from torchvision.ops import box_iou

    from domainvlm.nano.tabletop_world import SPLITS, render_scene, scene_seed

    image, objects = render_scene(scene_seed(5150, 2))
    image.save(tmp_path / "scene.png")
    names = sorted({o.category for o in objects})
    code, out, err = run_cli(capsys, monkeypatch, "detect", tmp_path / "scene.png", "--json",
                             *[a for name in names for a in ("--prompt", name)])
    assert code == 0, err
    found = json.loads(out)[0]
    hits = sum(any(label == o.category and box_iou(torch.tensor([o.box]),
                                                    torch.tensor([box])).item() >= 0.5
                   for box, label in zip(found["boxes"], found["labels"], strict=True))
               for o in objects)
    assert hits >= 0.75 * len(objects), (objects, found)
    assert set(names) & set(SPLITS["easy"].novel), "pick a scene with a novel category"
