"""OWLv2, OWL-ViT and Grounding DINO behind the detection API, on tiny random instances.

Oracles: the transformers model's own forward and post-processing run directly here on the same
inputs (our cached-text path and box handling must give the same boxes and scores), and
threshold + NMS recomputed per prompt with torchvision's plain `nms`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.ops import nms

from domainvlm.detection.backends import load_backend
from domainvlm.detection.grounding_dino import GroundingDinoDetector
from domainvlm.detection.owl import OwlDetector
from domainvlm.detection.tiny import DINO_TEXT_TOKENS, TEXT_TOKENS, build_tiny_detector
from domainvlm.detection.types import DetectionInputError, Detections, RegionScores
from domainvlm.errors import ModelLoadError

KINDS = ("owlv2", "owlvit", "grounding-dino")
WRAPPERS = {"owlv2": OwlDetector, "owlvit": OwlDetector, "grounding-dino": GroundingDinoDetector}
PROMPTS = ["red mug", "blue box"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tiny-detectors")
    return {kind: build_tiny_detector(kind, root / kind) for kind in (*KINDS, "clip")}


@pytest.fixture(scope="module")
def detectors(folders) -> dict[str, object]:
    return {kind: load_backend(folders[kind]) for kind in KINDS}


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """A landscape and a portrait scene (OWLv2 pads one at the bottom, one at the right)."""
    rng = np.random.default_rng(0)
    scenes = []
    for width, height in ((96, 72), (60, 80)):
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        ImageDraw.Draw(image).rectangle((10, 12, 40, 50), fill=(200, 30, 30))
        scenes.append(image)
    return scenes


def _inside(boxes: torch.Tensor, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle's boxes limited to the image, and which of them keep an area there."""
    limit = torch.tensor([image.width, image.height] * 2, dtype=boxes.dtype)
    limited = torch.minimum(boxes.clamp(min=0), limit)
    return limited, (limited[:, 2] > limited[:, 0]) & (limited[:, 3] > limited[:, 1])


@pytest.mark.parametrize("kind", KINDS)
def test_load_backend_reads_the_model_type(kind, folders, detectors):
    detector = detectors[kind]
    assert type(detector) is WRAPPERS[kind]
    assert detector.name == str(folders[kind])
    assert detector.model.config.model_type == kind
    explicit = load_backend(str(folders[kind]), backend=kind)
    assert type(explicit) is WRAPPERS[kind]


def test_unknown_model_types_and_missing_folders_are_refused(folders, tmp_path):
    for source, backend in ((folders["clip"], None), (folders["owlv2"], "yolo")):
        with pytest.raises(DetectionInputError, match="owlv2, owlvit, grounding-dino"):
            load_backend(source, backend=backend)
    with pytest.raises(DetectionInputError, match="'owlv2' model.*grounding-dino"):
        GroundingDinoDetector.load(folders["owlv2"])
    with pytest.raises(DetectionInputError, match="'grounding-dino' model.*owlv2, owlvit"):
        OwlDetector.load(folders["grounding-dino"])
    with pytest.raises(ModelLoadError, match="^model folder .*missing does not exist"):
        load_backend(tmp_path / "missing")


@pytest.mark.parametrize("kind", ["owlv2", "owlvit"])
def test_owl_regions_equal_the_models_own_forward_and_post_processing(kind, detectors, images):
    detector = detectors[kind]
    regions = detector.regions(images, PROMPTS)
    inputs = detector.processor(text=[PROMPTS] * len(images), images=images, return_tensors="pt")
    with torch.inference_mode():
        outputs = detector.model(**inputs)
    sizes = [(image.height, image.width) for image in images]
    expected = detector.processor.post_process_grounded_object_detection(
        outputs, threshold=-1.0, target_sizes=sizes, text_labels=[PROMPTS] * len(images))
    for image, ours, theirs, logits in zip(images, regions, expected, outputs.logits,
                                           strict=True):
        boxes, inside = _inside(theirs["boxes"], image)
        assert 0 < int(inside.sum()) <= len(inside)
        torch.testing.assert_close(ours.boxes, boxes[inside], atol=1e-3, rtol=0)
        torch.testing.assert_close(ours.probs, logits.sigmoid()[inside], atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.probs.max(1).values, theirs["scores"][inside])
        argmax = [ours.vocabulary[int(i)] for i in ours.probs.argmax(1)]
        assert argmax == [t for t, keep in zip(theirs["text_labels"], inside, strict=True)
                          if keep]


def _positions(sequence: list[int], part: list[int]) -> list[int]:
    starts = [i for i in range(len(sequence)) if sequence[i:i + len(part)] == part]
    assert len(starts) == 1
    return list(range(starts[0], starts[0] + len(part)))


def test_grounding_dino_regions_equal_the_models_own_outputs(detectors, images):
    detector = detectors["grounding-dino"]
    prompts = ["Red mug", "wooden bottle"]
    regions = detector.regions(images, prompts)
    inputs = detector.processor(images=images, text=[prompts] * len(images), return_tensors="pt")
    with torch.inference_mode():
        outputs = detector.model(**inputs)
    sizes = [(image.height, image.width) for image in images]
    expected = detector.processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=-1.0, text_threshold=0.5, target_sizes=sizes)
    tokenizer = detector.processor.tokenizer
    ids = inputs["input_ids"][0].tolist()
    spans = [_positions(ids, tokenizer(p.lower(), add_special_tokens=False)["input_ids"])
             for p in prompts]
    for image, ours, theirs, logits in zip(images, regions, expected, outputs.logits,
                                           strict=True):
        boxes, inside = _inside(theirs["boxes"], image)
        assert int(inside.sum()) > 0
        torch.testing.assert_close(ours.boxes, boxes[inside], atol=1e-3, rtol=0)
        per_prompt = torch.stack([logits.sigmoid()[:, s].max(-1).values for s in spans], -1)
        torch.testing.assert_close(ours.probs, per_prompt[inside], atol=1e-5, rtol=0)
        assert ours.vocabulary == prompts


@pytest.mark.parametrize("kind", KINDS)
def test_detect_returns_one_detections_per_image_in_pixels(kind, detectors, images):
    detector = detectors[kind]
    found = detector.detect(images, PROMPTS, score_threshold=0.0)
    assert isinstance(found, list) and len(found) == len(images)
    for image, detections in zip(images, found, strict=True):
        assert isinstance(detections, Detections) and len(detections) > 0
        boxes, scores = detections.boxes, detections.scores
        assert boxes.dtype == torch.float32 and boxes.shape == (len(detections), 4)
        assert scores.shape == (len(detections),)
        assert bool(((scores >= 0) & (scores <= 1)).all())
        assert bool((scores[:-1] >= scores[1:]).all())
        assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
        assert bool((boxes >= 0).all() and (boxes[:, [0, 2]] <= image.width).all()
                    and (boxes[:, [1, 3]] <= image.height).all())
        assert set(detections.labels) <= set(PROMPTS)
    single = detector.detect(images[1], PROMPTS, score_threshold=0.0)
    alone = detector.detect(images[1:], PROMPTS, score_threshold=0.0)
    assert isinstance(single, Detections) and len(alone) == 1
    # Grounding DINO pads a batch's images to one size, which moves a random model's boxes.
    for other in (alone[0], found[1]) if kind != "grounding-dino" else alone:
        assert torch.equal(single.boxes, other.boxes) and single.labels == other.labels


@pytest.mark.parametrize("kind", KINDS)
def test_threshold_and_nms_match_torchvision_per_prompt(kind, detectors, images):
    detector = detectors[kind]
    regions: RegionScores = detector.regions(images[:1], PROMPTS)[0]
    threshold = float(regions.probs.flatten().median())  # half the candidates pass
    found = detector.detect(images[0], PROMPTS, score_threshold=threshold, nms_threshold=0.3)
    expected = []
    for column, prompt in enumerate(PROMPTS):
        passing = regions.probs[:, column] >= threshold
        boxes, scores = regions.boxes[passing], regions.probs[passing, column]
        expected += [(prompt, round(float(scores[i]), 5), tuple(boxes[i].tolist()))
                     for i in nms(boxes, scores, 0.3)]
    suppressed = int((regions.probs >= threshold).sum()) - len(expected)
    # The tiny Grounding DINO's boxes are too small to overlap; the OWL ones overlap.
    assert len(expected) > 0 and (suppressed > 0 or kind == "grounding-dino")
    boxes_kept = [box for _, _, box in expected]  # NMS keeps one box for both prompts
    assert len(set(boxes_kept)) < len(boxes_kept)
    got = [(label, round(float(score), 5), tuple(box.tolist()))
           for label, score, box in zip(found.labels, found.scores, found.boxes, strict=True)]
    assert sorted(got) == sorted(expected)


@pytest.mark.parametrize("kind", KINDS)
def test_new_prompts_between_calls_give_new_labels(kind, detectors, images):
    detector = detectors[kind]
    before = detector.detect(images, PROMPTS, score_threshold=0.0)
    after = detector.detect(images, ["green can", "metal ball"], score_threshold=0.0)
    assert {label for d in before for label in d.labels} == set(PROMPTS)
    assert {label for d in after for label in d.labels} == {"green can", "metal ball"}


@pytest.mark.parametrize("kind", ["owlv2", "owlvit"])
def test_owl_text_tower_runs_once_per_prompt_set(kind, folders, images, monkeypatch):
    detector = load_backend(folders[kind])  # its own cache, not the shared detector's
    text_model = detector.model.base_model.text_model  # the transformers module
    calls = []
    forward = text_model.forward
    monkeypatch.setattr(text_model, "forward",
                        lambda *a, **k: calls.append(1) or forward(*a, **k))
    first = detector.regions(images, PROMPTS)
    again = detector.regions(images[::-1], PROMPTS) + detector.regions(images[:1], PROMPTS)
    assert len(calls) == 1
    torch.testing.assert_close(again[1].probs, first[0].probs)
    detector.regions(images, ["green can"])
    detector.regions(images, PROMPTS)
    assert len(calls) == 2


class _CountingTokenizer:
    """The transformers tokenizer, counting its calls."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_grounding_dino_tokenises_once_per_prompt_set(folders, images, monkeypatch):
    detector = load_backend(folders["grounding-dino"])
    counting = _CountingTokenizer(detector.processor.tokenizer)
    monkeypatch.setattr(detector.processor, "tokenizer", counting)
    first = detector.regions(images, PROMPTS)
    calls = counting.calls
    assert calls > 0
    again = detector.regions(images, PROMPTS)
    assert counting.calls == calls
    torch.testing.assert_close(again[0].probs, first[0].probs)
    detector.regions(images, ["green can"])
    assert counting.calls > calls


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_refused_with_one_clear_error(kind, detectors, images):
    detector = detectors[kind]
    limit = TEXT_TOKENS if kind != "grounding-dino" else DINO_TEXT_TOKENS
    cases = [
        (images, [], "no prompts"),
        (images, ["red mug", " "], "prompt 2 is blank"),
        (images, ["red " * limit], f"over the text tower's limit of {limit}"),
        ([images[0], Image.new("RGB", (1, 1))], PROMPTS, "image 2 is 1x1 pixels"),
        ([Image.new("CMYK", (32, 32))], PROMPTS, "pixel mode 'CMYK'"),
    ]
    for batch, prompts, message in cases:
        with pytest.raises(DetectionInputError, match=message):
            detector.detect(batch, prompts)
    with pytest.raises(DetectionInputError, match="score_threshold must be between 0 and 1"):
        detector.detect(images, PROMPTS, score_threshold=1.5)


def test_grounding_dino_refuses_what_it_cannot_separate(detectors, images):
    detector = detectors["grounding-dino"]
    with pytest.raises(DetectionInputError, match=r"prompt 1 \('red mug. blue box'\) holds"):
        detector.detect(images, ["red mug. blue box"])
    many = [f"red mug number {word}" for word in ("one", "two", "three", "four", "five")]
    with pytest.raises(DetectionInputError, match="prompts together are .* tokens, over"):
        detector.detect(images, many)
