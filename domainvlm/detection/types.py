"""What every open-vocabulary detector takes and returns, and the checks on it.

One home for the input rules (prompts, images) and the output types, so the ViLD student, OWL
and Grounding DINO refuse the same bad input with the same words and their results compare.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from domainvlm.errors import DomainVLMError

MIN_IMAGE_SIDE = 8  # pixels: below this no detector here can place a box
IMAGE_MODES = ("RGB", "RGBA", "L", "LA", "P", "I;16", "I", "F")  # converted to RGB


class DetectionInputError(DomainVLMError, ValueError):
    """A prompt list, an image or a detection dataset cannot be used; the message says which
    and what to do."""


def check_prompts(prompts: Sequence[str], *, max_tokens: int | None = None,
                  count_tokens=None) -> list[str]:
    """The prompts as a clean list: non-empty, no blank or duplicate entry, each within the
    text tower's length (`count_tokens(text) -> int` against `max_tokens`)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    cleaned = [" ".join(str(p).split()) for p in prompts]
    if not cleaned:
        raise DetectionInputError("no prompts: name at least one category to detect "
                                  "(e.g. --prompt 'red mug')")
    for index, text in enumerate(cleaned):
        if not text:
            raise DetectionInputError(f"prompt {index + 1} is blank: give each prompt a "
                                      "category name")
    seen = {}
    for index, text in enumerate(cleaned):
        if text.lower() in seen:
            raise DetectionInputError(
                f"prompt {index + 1} ({text!r}) repeats prompt {seen[text.lower()] + 1}: "
                "give each category once")
        seen[text.lower()] = index
    if max_tokens is not None and count_tokens is not None:
        for index, text in enumerate(cleaned):
            length = count_tokens(text)
            if length > max_tokens:
                raise DetectionInputError(
                    f"prompt {index + 1} is {length} tokens long, over the text tower's limit "
                    f"of {max_tokens}: shorten it to a category name")
    return cleaned


def as_rgb(image: Image.Image, *, name: str = "image") -> Image.Image:
    """`image` as 8-bit RGB, or one clear error for a size or mode no detector can use."""
    if not isinstance(image, Image.Image):
        raise DetectionInputError(f"{name} is a {type(image).__name__}, not a PIL image: "
                                  "open it with PIL.Image.open first")
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise DetectionInputError(
            f"{name} is {width}x{height} pixels: too small to detect anything in "
            f"(at least {MIN_IMAGE_SIDE} pixels a side)")
    if image.mode not in IMAGE_MODES:
        raise DetectionInputError(
            f"{name} has pixel mode {image.mode!r}, which detection does not read: convert it "
            f"to RGB first (modes read: {', '.join(IMAGE_MODES)})")
    if image.mode in ("I;16", "I", "F"):
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255 if high > low else values * 0
        image = Image.fromarray(scaled.astype("uint8"))
    return image.convert("RGB")


@dataclass(frozen=True)
class Detections:
    """The boxes found in one image: `boxes` (N, 4) float xyxy in that image's pixels,
    `scores` (N,) in [0, 1], `labels` the prompt text of each box; highest score first."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class RegionScores:
    """Every scored region of one image before thresholds: `boxes` (K, 4) xyxy pixels and
    `probs` (K, C), one column per entry of `vocabulary`. Evaluation reads these (top-1
    accuracy needs every class's score); `detections` turns them into the API's answer."""

    boxes: torch.Tensor
    probs: torch.Tensor
    vocabulary: list[str]

    def detections(self, *, score_threshold: float, nms_threshold: float,
                   max_detections: int = 100) -> Detections:
        """Per-class thresholding and non-maximum suppression (torchvision's batched NMS)."""
        from torchvision.ops import batched_nms

        regions, classes = torch.nonzero(self.probs >= score_threshold, as_tuple=True)
        boxes = self.boxes[regions]
        scores = self.probs[regions, classes]
        keep = batched_nms(boxes.float(), scores.float(), classes, nms_threshold)
        keep = keep[:max_detections]
        return Detections(boxes=boxes[keep].float(), scores=scores[keep].float(),
                          labels=[self.vocabulary[int(c)] for c in classes[keep]])


def detect_with(regions: Callable[[list[Image.Image], Sequence[str]], list[RegionScores]],
                images: Image.Image | Sequence[Image.Image], prompts: Sequence[str], *,
                score_threshold: float, nms_threshold: float) -> Detections | list[Detections]:
    """`regions` thresholded and suppressed by `RegionScores.detections`: one image in gives one
    `Detections`, a list gives a list."""
    for flag, value in (("score_threshold", score_threshold), ("nms_threshold", nms_threshold)):
        if not 0.0 <= value <= 1.0:
            raise DetectionInputError(f"{flag} must be between 0 and 1, not {value}")
    single = isinstance(images, Image.Image)
    found = [r.detections(score_threshold=score_threshold, nms_threshold=nms_threshold)
             for r in regions([images] if single else list(images), prompts)]
    return found[0] if single else found
