"""Batch samples of different lengths and image counts.

Per-token keys are right-padded (input_ids with the pad id, labels with -100, masks with 0).
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
    """Keys stored as 1-D per-token tensors (same length as input_ids in every sample)."""
    return all(s[key].ndim == 1 and len(s[key]) == len(s["input_ids"]) for s in samples)


def collate(samples: Sequence[Sample], pad_token_id: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    batch: dict[str, Any] = {}
    longest = max(len(s["input_ids"]) for s in samples)
    for key in samples[0]:
        values = [s[key] for s in samples]
        if is_token_key(samples, key):
            fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)
            batch[key] = torch.stack(
                [F.pad(v, (0, longest - len(v)), value=fill) for v in values]
            )
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
