"""Transformers detectors (OWLv2, OWL-ViT, Grounding DINO) behind the project's detection API.

`load_backend` picks the wrapper from the checkpoint's `model_type`, so a hub id or a folder
is all a user names. The helpers below are the parts the wrappers share: one image or a list in,
the same shape out; boxes scaled by the model's own image processor (OWLv2 pads to a square,
OWL-ViT stretches, Grounding DINO keeps the aspect ratio) and clipped to the image.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Generic, TypeVar

import torch
from PIL import Image

from domainvlm.detection.types import (
    DetectionInputError,
    Detections,
    RegionScores,
    as_rgb,
    check_prompts,
    detect_with,
)

# model_type in config.json -> the module holding its wrapper, and that wrapper's class
BACKENDS = {"owlv2": ("owl", "OwlDetector"), "owlvit": ("owl", "OwlDetector"),
            "grounding-dino": ("grounding_dino", "GroundingDinoDetector")}
BATCH = 8  # images per forward pass
PROMPT_SETS_KEPT = 16  # the text work of this many recent prompt sets stays cached
T = TypeVar("T")


def read_model_type(source: str | Path, expected: Sequence[str] = tuple(BACKENDS)) -> str:
    """The `model_type` of a folder's or hub id's config; a `ModelLoadError` if it cannot be
    read, a `DetectionInputError` naming the `expected` types if it is none of them."""
    import os

    from transformers import AutoConfig

    from domainvlm.errors import ModelLoadError
    from domainvlm.loading import resolve_source

    resolved = resolve_source(str(source))  # a missing folder is its own clear error
    try:
        kind = AutoConfig.from_pretrained(resolved).model_type
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: only cached or local models load)" if offline else ""
        raise ModelLoadError(f"cannot load detector {str(source)!r}{hint}: {exc}") from exc
    _check_kind(source, kind, expected)
    return kind


def _check_kind(source: str | Path, kind: str, expected: Sequence[str]) -> None:
    if kind not in expected:
        raise DetectionInputError(
            f"{str(source)!r} is a {kind!r} model, not one this backend runs; known "
            f"backends: {', '.join(expected)}")


def load_backend(source: str | Path, backend: str | None = None, device: str = "cpu") -> Any:
    """An `OwlDetector` or `GroundingDinoDetector` for `source` (folder or hub id); `backend`
    (a `model_type`: owlv2, owlvit, grounding-dino) overrides the config's."""
    import importlib

    kind = backend or read_model_type(source)
    _check_kind(source, kind, tuple(BACKENDS))
    module, name = BACKENDS[kind]
    wrapper = getattr(importlib.import_module(f"domainvlm.detection.{module}"), name)
    return wrapper.load(source, device=device)


def checked_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    """Every image as RGB, or the one clear error for the first unusable one."""
    if isinstance(images, Image.Image):
        raise DetectionInputError("regions() takes a list of images: wrap a single one in [...]")
    return [as_rgb(image, name=f"image {index + 1}") for index, image in enumerate(images)]


def batches(images: list[Image.Image]) -> list[list[Image.Image]]:
    return [images[start:start + BATCH] for start in range(0, len(images), BATCH)]


def image_regions(image_processor: Any, logits: torch.Tensor, pred_boxes: torch.Tensor,
                  probs: torch.Tensor, images: Sequence[Image.Image],
                  prompts: Sequence[str]) -> list[RegionScores]:
    """Each image's `RegionScores` from a batch's outputs: `pred_boxes` (B, Q, 4) relative
    cxcywh go to the image's pixels by the image processor's own post-processing (every box
    kept) and are clipped to the image; boxes wholly outside it (OWLv2 also predicts on its
    square padding) are dropped. `probs` (B, Q, C) has one column per prompt."""
    from torchvision.ops import clip_boxes_to_image

    sizes = [(image.height, image.width) for image in images]
    outputs = SimpleNamespace(logits=logits, pred_boxes=pred_boxes)  # all it reads
    found = image_processor.post_process_object_detection(outputs, threshold=-1.0,
                                                          target_sizes=sizes)
    regions = []
    for result, size, image_probs in zip(found, sizes, probs, strict=True):
        boxes = clip_boxes_to_image(result["boxes"].float().cpu(), size)
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        regions.append(RegionScores(boxes=boxes[inside], probs=image_probs.float().cpu()[inside],
                                    vocabulary=list(prompts)))
    return regions


class PromptCache(Generic[T]):
    """The text work of a prompt set, done once: the checked prompts (`check_prompts` against
    the text tower's length) and what `build` makes of them (text embeddings, tokenised text),
    for the `PROMPT_SETS_KEPT` most recent sets. A set that fails its checks is not kept."""

    def __init__(self, build: Callable[[tuple[str, ...]], T], max_tokens: int,
                 count_tokens: Callable[[str], int]) -> None:
        self._build, self._max_tokens, self._count_tokens = build, max_tokens, count_tokens
        self._kept: OrderedDict[tuple[str, ...], tuple[tuple[str, ...], T]] = OrderedDict()

    def get(self, prompts: Sequence[str]) -> tuple[tuple[str, ...], T]:
        key = (prompts,) if isinstance(prompts, str) else tuple(str(p) for p in prompts)
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        checked = tuple(check_prompts(key, max_tokens=self._max_tokens,
                                      count_tokens=self._count_tokens))
        self._kept[key] = checked, self._build(checked)
        if len(self._kept) > PROMPT_SETS_KEPT:
            self._kept.popitem(last=False)
        return self._kept[key]


class TransformersDetector:
    """What the transformers detectors share: token counting with their own tokenizer (special
    tokens included) and `detect` as `regions` thresholded and suppressed by the one rule
    (`types.detect_with`). Subclasses set `processor` and define `regions`."""

    processor: Any

    def count_tokens(self, text: str) -> int:
        return len(self.processor.tokenizer(text)["input_ids"])

    def detect(self, images: Image.Image | Sequence[Image.Image], prompts: Sequence[str], *,
               score_threshold: float = 0.1,
               nms_threshold: float = 0.5) -> Detections | list[Detections]:
        """Boxes of the prompted categories: one `Detections` per image, highest score first."""
        return detect_with(self.regions, images, prompts, score_threshold=score_threshold,
                           nms_threshold=nms_threshold)

    def regions(self, images: Sequence[Image.Image],
                prompts: Sequence[str]) -> list[RegionScores]:
        raise NotImplementedError
