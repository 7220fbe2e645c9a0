"""OWLv2 and OWL-ViT (Minderer et al.) as open-vocabulary detectors behind the project's API.

OWL scores every patch of the image against each prompt's text embedding, so the text tower
runs once per prompt set: the embeddings are cached by prompt tuple and the image path
(`image_embedder` -> `class_predictor`, `box_predictor`) runs alone for every image, which is
what the model's own forward does with both halves.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from domainvlm.detection.types import RegionScores


class OwlDetector(TransformersDetector):
    """An `Owlv2ForObjectDetection` or `OwlViTForObjectDetection` with its processor."""

    def __init__(self, model: Any, processor: Any, name: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.max_tokens = min(processor.tokenizer.model_max_length,
                              model.config.text_config.max_position_embeddings)
        self._queries = PromptCache(self._query_embeds, self.max_tokens, self.count_tokens)

    @classmethod
    def load(cls, source: str | Path, device: str = "cpu") -> OwlDetector:
        """Load an OWLv2 or OWL-ViT detection checkpoint (folder or hub id)."""
        from transformers import AutoProcessor, Owlv2ForObjectDetection, OwlViTForObjectDetection

        from domainvlm.loading import resolve_source

        classes = {"owlv2": Owlv2ForObjectDetection, "owlvit": OwlViTForObjectDetection}
        kind = read_model_type(source, tuple(classes))
        resolved = resolve_source(str(source))
        model = classes[kind].from_pretrained(resolved).to(device)
        return cls(model, AutoProcessor.from_pretrained(resolved), name=str(source))

    @torch.inference_mode()
    def regions(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[RegionScores]:
        """Every predicted box (one per patch) of each image with its sigmoid probability per
        prompt: `probs` (patches, prompts)."""
        prompts, queries = self._queries.get(prompts)  # queries: (C, D)
        images = checked_images(images)
        device = queries.device
        found = []
        for chunk in batches(images):
            pixels = self.processor.image_processor(chunk, return_tensors="pt").pixel_values
            feature_map, _ = self.model.image_embedder(pixel_values=pixels.to(device))
            size, rows, cols, width = feature_map.shape
            features = feature_map.reshape(size, rows * cols, width)  # (B, P, D)
            logits, _ = self.model.class_predictor(features, queries.expand(size, -1, -1), None)
            pred_boxes = self.model.box_predictor(features, feature_map)  # (B, P, 4) cxcywh
            found += image_regions(self.processor.image_processor, logits, pred_boxes,
                                   logits.sigmoid(), chunk, prompts)
        return found

    @torch.inference_mode()
    def _query_embeds(self, prompts: tuple[str, ...]) -> torch.Tensor:
        """The prompts' projected text embeddings (C, D)."""
        tokens = self.processor(text=list(prompts), return_tensors="pt")
        device = next(self.model.parameters()).device
        text = self.model.base_model.get_text_features(
            input_ids=tokens["input_ids"].to(device),
            attention_mask=tokens["attention_mask"].to(device))
        return text.pooler_output
