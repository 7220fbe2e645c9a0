"""Image features computed once per run when the vision tower and projector are frozen.

With LoRA on the language model only, the features of an image never change during training,
yet peers recompute the vision tower for every sample at every step. We capture the features
the model itself would scatter into the language model's input, and hand them back through
transformers' `mm_encoder_outputs`, so the forward pass skips the vision tower.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from domainvlm.data.collate import collate
from domainvlm.families import Family

# Inputs only the vision tower reads; dropped once features are cached.
VISION_ONLY_KEYS = ("pixel_values", "pixel_attention_mask", "image_sizes")
FEATURE_KEY = "image_features"


class _Captured(Exception):
    """Raised from a hook to stop the forward pass once the LM input is captured."""


def language_model_of(model: Any) -> Any:
    """The decoder that receives merged text + image embeddings."""
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("language_model", "text_model"):
            return module
    raise ValueError(f"{type(model).__name__} has no language_model / text_model part")


def feature_bytes(samples: list[dict], image_token_id: int, model: Any) -> int:
    width = model.get_input_embeddings().embedding_dim
    itemsize = next(model.parameters()).element_size()
    n_tokens = sum(int((s["input_ids"] == image_token_id).sum()) for s in samples)
    return n_tokens * width * itemsize


def attach_image_features(model: Any, samples: list[dict], image_token_id: int,
                          pad_token_id: int, batch_size: int = 16,
                          progress: Callable[[int], None] | None = None) -> None:
    """Add FEATURE_KEY (n_image_tokens, D) to each sample and drop its pixel inputs."""
    import torch

    captured: dict[str, Any] = {}

    def hook(_module: Any, _args: Any, kwargs: dict) -> None:
        captured["embeds"] = kwargs["inputs_embeds"]
        raise _Captured

    handle = language_model_of(model).register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()
                     if k != "labels"}
            with torch.no_grad(), contextlib.suppress(_Captured):
                model(**batch)
            embeds = captured.pop("embeds")
            for row, sample in enumerate(chunk):
                mask = batch["input_ids"][row] == image_token_id
                sample[FEATURE_KEY] = embeds[row][mask].detach().cpu()
                for key in VISION_ONLY_KEYS:
                    sample.pop(key, None)
            if progress is not None:
                progress(len(chunk))
    finally:
        handle.remove()


def encoder_outputs(batch: dict[str, Any], family: Family) -> dict[str, Any]:
    """Replace FEATURE_KEY in a batch by the `mm_encoder_outputs` argument the model takes."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    features = batch.pop(FEATURE_KEY)
    pooled = [features] if family.image_features_as == "list" else features
    batch["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
    return batch
