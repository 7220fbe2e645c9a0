"""Grounding DINO (Liu et al.) as an open-vocabulary detector behind the project's API.

Grounding DINO reads all prompts as one text ("red mug. blue box.") and scores each box against
every token of it; a prompt's probability is the highest of its tokens' (the model's own
post-processing takes the same maximum over the whole text). Its text features are fused with
the image's inside the encoder, so no text embedding can be reused across images: what is cached
per prompt set is the tokenised text and each prompt's token span. Images of one batch are
padded to a common size (the processor's pixel mask), as transformers does, so an image's boxes
can shift slightly with its batch mates; OWL resizes every image alone and does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from domainvlm.detection.backends import (
    PromptCache,
    TransformersDetector,
    batches,
    checked_images,
    image_regions,
    read_model_type,
)
from domainvlm.detection.types import (
    DetectionInputError,
    RegionScores,
)

SEPARATORS = (".", "?")  # the model's code ends a phrase at these tokens


@dataclass(frozen=True)
class _Text:
    tokens: dict[str, torch.Tensor]  # input_ids, attention_mask, token_type_ids: (1, L)
    spans: list[list[int]]  # each prompt's token positions


class GroundingDinoDetector(TransformersDetector):
    """A `GroundingDinoForObjectDetection` with its processor."""

    def __init__(self, model: Any, processor: Any, name: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.max_tokens = min(processor.tokenizer.model_max_length, model.config.max_text_len)
        self._texts = PromptCache(self._tokenised, self.max_tokens, self.count_tokens)

    @classmethod
    def load(cls, source: str | Path, device: str = "cpu") -> GroundingDinoDetector:
        """Load a Grounding DINO checkpoint (folder or hub id)."""
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        from domainvlm.loading import resolve_source

        read_model_type(source, ("grounding-dino",))
        resolved = resolve_source(str(source))
        model = GroundingDinoForObjectDetection.from_pretrained(resolved).to(device)
        return cls(model, AutoProcessor.from_pretrained(resolved), name=str(source))

    @torch.inference_mode()
    def regions(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[RegionScores]:
        """Every query's box in each image with a probability per prompt: `probs`
        (queries, prompts), the highest sigmoid over the prompt's tokens."""
        prompts, text = self._texts.get(prompts)
        images = checked_images(images)
        device = next(self.model.parameters()).device
        found = []
        for chunk in batches(images):
            pixels = self.processor.image_processor(chunk, return_tensors="pt")
            inputs = {k: v.expand(len(chunk), -1).to(device) for k, v in text.tokens.items()}
            outputs = self.model(pixel_values=pixels["pixel_values"].to(device),
                                 pixel_mask=pixels["pixel_mask"].to(device), **inputs)
            token_probs = outputs.logits.sigmoid()  # (B, Q, max_text_len)
            probs = torch.stack([token_probs[..., span].amax(-1) for span in text.spans], -1)
            found += image_regions(self.processor.image_processor, outputs.logits,
                                   outputs.pred_boxes, probs, chunk, prompts)
        return found

    def _tokenised(self, prompts: tuple[str, ...]) -> _Text:
        """The prompts as the one text the model reads, tokenised, with each one's tokens."""
        for index, prompt in enumerate(prompts):
            if any(mark in prompt for mark in SEPARATORS):
                raise DetectionInputError(
                    f"prompt {index + 1} ({prompt!r}) holds '.' or '?', which Grounding DINO "
                    "reads as the end of a prompt: remove them")
        # The processor's own joining of candidate labels: lower case, ". " between, "." last.
        lowered = [p.lower() for p in prompts]
        text = ". ".join(lowered) + "."
        encoded = self.processor.tokenizer(text, return_offsets_mapping=True,
                                           return_token_type_ids=True, return_tensors="pt")
        length = encoded["input_ids"].shape[1]
        if length > self.max_tokens:
            raise DetectionInputError(
                f"the {len(prompts)} prompts together are {length} tokens, over Grounding "
                f"DINO's limit of {self.max_tokens} (it reads them as one text): use fewer or "
                "shorter prompts")
        offsets = encoded.pop("offset_mapping")[0].tolist()
        spans, start = [], 0
        for prompt in lowered:
            end = start + len(prompt)
            spans.append([i for i, (a, b) in enumerate(offsets) if b > a and a >= start
                          and b <= end])
            start = end + 2  # past ". "
        empty = [prompts[i] for i, span in enumerate(spans) if not span]
        if empty:
            raise DetectionInputError(f"prompt {empty[0]!r} has no token Grounding DINO reads: "
                                      "use words")
        return _Text(tokens=dict(encoded), spans=spans)
