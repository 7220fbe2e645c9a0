"""The ViLD student's scoring against ViLD's formulas, and the `Detector` API around it: prompts
embedded once per set, single and batched images, thresholds, save and load, bad input."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from domainvlm.detection.detector import Detector, load_detector
from domainvlm.detection.student import (
    RegionOutputs,
    ScoringParams,
    StudentConfig,
    ViLDStudent,
    score_regions,
)
from domainvlm.detection.teacher import Teacher
from domainvlm.detection.tiny import build_tiny_detector
from domainvlm.detection.types import DetectionInputError, Detections
from domainvlm.errors import ModelLoadError

BASE = ("red mug", "blue box")


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_detector("clip", tmp_path_factory.mktemp("teacher") / "clip")


@pytest.fixture(scope="module")
def detector(teacher_folder: Path) -> Detector:
    teacher = Teacher.load(teacher_folder)
    torch.manual_seed(0)
    student = ViLDStudent(StudentConfig(embed_dim=teacher.dim, proposals_test=50))
    return Detector(student, teacher, base=BASE, scoring=ScoringParams(base_scale=0.8))


def scene(size=(160, 120), seed=0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=generator) * 255).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


def test_ensemble_follows_vild_geometric_mean() -> None:
    """p = p_text^l * p_image^(1-l) for base and p_text^(1-l) * p_image^l for novel, base scores
    then scaled; the oracle is written out from the paper's definitions with plain math."""
    torch.manual_seed(1)
    heads = ViLDStudent(StudentConfig(embed_dim=8)).heads
    unit = lambda *s: F.normalize(torch.randn(*s), dim=-1)  # noqa: E731
    out = RegionOutputs(boxes=torch.zeros(3, 4), proposals=torch.zeros(3, 4), text=unit(3, 8),
                        image=unit(3, 8), control=unit(3, 8))
    prompts, is_base = unit(2, 8), torch.tensor([True, False])
    params = ScoringParams(text_temperature=0.1, image_temperature=0.2, base_scale=0.5)
    got = score_regions(out, heads, prompts, is_base, params)
    background = F.normalize(heads.background.detach(), dim=0)
    for r in range(3):
        text_logits = [float(out.text[r] @ v) / 0.1 for v in [background, *prompts]]
        text = [math.exp(x) / sum(math.exp(y) for y in text_logits) for x in text_logits][1:]
        image_logits = [float(out.image[r] @ v) / 0.2 for v in prompts]
        image = [math.exp(x) / sum(math.exp(y) for y in image_logits) for x in image_logits]
        base = text[0] ** (2 / 3) * image[0] ** (1 / 3) * 0.5
        novel = text[1] ** (1 / 3) * image[1] ** (2 / 3)
        assert got[r].tolist() == pytest.approx([base, novel], rel=1e-4)
    only_text = score_regions(out, heads, prompts, is_base, replace(params, mode="text",
                                                                         base_scale=1.0))
    assert torch.allclose(only_text.sum(-1) + (out.text @ background / 0.1).exp() / (
        (out.text @ torch.cat([background[None], prompts]).T / 0.1).exp().sum(-1)),
        torch.ones(3), atol=1e-5)


def test_prompts_are_embedded_once_per_set(detector: Detector) -> None:
    detector.detect(scene(), ["red mug", "metal can"])
    passes = detector.text_passes
    detector.detect(scene(seed=1), ["red mug", "metal can"])
    detector.detect([scene(seed=2), scene(seed=3)], ["red mug", "metal can"])
    assert detector.text_passes == passes
    detector.detect(scene(), ["wooden ball"])
    assert detector.text_passes == passes + 1
    _, is_base = detector.prompt_embeddings(["Red Mug", "metal can"])
    assert is_base.tolist() == [True, False]


def test_detect_single_and_batch_thresholds_and_labels(detector: Detector) -> None:
    prompts = ["red mug", "metal can", "blue box"]
    one = detector.detect(scene(), prompts, score_threshold=0.0, nms_threshold=0.5)
    assert isinstance(one, Detections)
    batch = detector.detect([scene(), scene((320, 240), seed=5)], prompts, score_threshold=0.0)
    assert isinstance(batch, list) and len(batch) == 2
    assert torch.equal(batch[0].boxes, one.boxes) and batch[0].labels == one.labels
    for found, (width, height) in zip(batch, [(160, 120), (320, 240)], strict=True):
        assert len(found) > 0 and set(found.labels) <= set(prompts)
        assert found.boxes[:, 0].min() >= 0 and found.boxes[:, 2].max() <= width
        assert found.boxes[:, 1].min() >= 0 and found.boxes[:, 3].max() <= height
        assert torch.all(found.scores[:-1] >= found.scores[1:])  # best first
    # Greedy NMS never lets a lower score suppress a higher one: a higher threshold keeps
    # exactly the head of the list.
    cut = float(one.scores[10])
    strict = detector.detect(scene(), prompts, score_threshold=cut)
    head = int((one.scores >= cut).sum())
    assert 10 < len(strict) == head < len(one)
    assert strict.labels == one.labels[:head] and torch.equal(strict.boxes, one.boxes[:head])


def test_save_and_load_give_the_same_regions(detector: Detector, tmp_path: Path) -> None:
    detector.save(tmp_path / "det")
    again = load_detector(tmp_path / "det")
    assert isinstance(again, Detector) and again.base == BASE
    assert again.scoring == detector.scoring
    a = detector.regions([scene()], ["red mug", "metal can"])[0]
    b = again.regions([scene()], ["red mug", "metal can"])[0]
    assert torch.allclose(a.boxes, b.boxes) and torch.allclose(a.probs, b.probs)


def test_load_refuses_another_teacher(detector: Detector, tmp_path: Path) -> None:
    """A student meets prompts in its teacher's text space: a different teacher is refused."""
    import json

    detector.save(tmp_path / "det")
    other = build_tiny_detector("clip", tmp_path / "other", seed=1)
    meta = json.loads((tmp_path / "det" / "vild.json").read_text())
    meta["teacher"]["source"] = str(other)
    (tmp_path / "det" / "vild.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="text space differs"):
        Detector.load(tmp_path / "det")


@pytest.mark.parametrize(("images", "prompts", "message"), [
    (lambda: scene(), [], "no prompts"),
    (lambda: scene(), ["red mug", " "], "prompt 2 is blank"),
    (lambda: scene(), ["red mug", "red  mug"], "repeats prompt 1"),
    (lambda: scene(), ["mug " * 400], "over the text tower's limit"),
    (lambda: Image.new("RGB", (1, 1)), ["red mug"], "1x1 pixels"),
    (lambda: Image.new("CMYK", (64, 64)), ["red mug"], "pixel mode 'CMYK'"),
])
def test_bad_input_gets_one_clear_error(detector: Detector, images, prompts, message) -> None:
    with pytest.raises(DetectionInputError, match=message):
        detector.detect(images(), prompts)
