"""Batch samples of different lengths and image counts.

Per-token keys (first dimension the token) are right-padded (input_ids with the pad id, labels
with -100, masks with 0; a cross-attention mask's image and tile dimensions with 0 too).
Every other tensor is zero-padded on all but its first dimension and concatenated on it: this
one rule fits pixel_values of LLaVA (n_img, C, H, W), Qwen's flat patches (n_patch, D),
LLaVA-NeXT's (1, n_tiles, C, H, W) and Idefics3's (1, n_img, C, H, W), whose all-zero padded
images the model itself drops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from domainvlm.data.encode import IGNORE_INDEX, Sample


def is_token_key(samples: Sequence[Sample], key: str) -> bool:
    """Keys stored per token: integer tensors whose first dimension is input_ids' length in
    every sample ((L,) ids and masks, (L, images, tiles) cross-attention masks)."""
    return all(not s[key].is_floating_point() and s[key].ndim >= 1
               and len(s[key]) == len(s["input_ids"]) for s in samples)


def collate(samples: Sequence[Sample], pad_token_id: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if is_token_key(samples, key):
            fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)
            batch[key] = _stack_padded(values, fill)
        else:
            shape = [max(v.shape[d] for v in values) for d in range(values[0].ndim)]
            padded = []
            for v in values:
                pads = []
                for d in reversed(range(1, v.ndim)):
                    pads += [0, shape[d] - v.shape[d]]
                padded.append(F.pad(v, pads) if any(pads) else v)
            batch[key] = torch.cat(padded)
    return batch


def _stack_padded(values: Sequence[Any], fill: int):
    """(B, L_max, ...): each right-padded with `fill` along the tokens; further dimensions
    (images, tiles of a cross-attention mask) zero-padded to the largest."""
    import torch

    shape = [max(v.shape[d] for v in values) for d in range(values[0].ndim)]
    if all(list(v.shape) == shape for v in values):
        return torch.stack(list(values))
    out = torch.zeros((len(values), *shape), dtype=values[0].dtype)
    for i, v in enumerate(values):
        out[i, len(v):] = fill
        out[(i, *(slice(0, n) for n in v.shape))] = v
    return out
