"""Image features computed once per run where the parts that make them are frozen.

With LoRA on the language model only, the features of an image never change during training,
yet peers recompute the vision tower for every sample at every step. We capture the features
the model itself would scatter into the language model's input, and hand them back through
transformers' `mm_encoder_outputs`, so the forward pass skips the vision tower. When the
projector trains but the tower is frozen, `TowerMemo` keeps the tower's own outputs instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from domainvlm.data.collate import collate
from domainvlm.families import Family
from domainvlm.models.parts import part_of

# Inputs only the vision tower reads; dropped once features are cached.
VISION_ONLY_KEYS = ("pixel_values", "pixel_attention_mask", "image_sizes")
FEATURE_KEY = "image_features"


class _Captured(Exception):
    """Raised from a hook to stop the forward pass once the LM input is captured."""


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

    handle = part_of(model, "language").register_forward_pre_hook(hook, with_kwargs=True)
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


class TowerMemo:
    """A frozen vision tower's outputs, computed once per distinct image.

    With LoRA on the projector, the LM's image features change every step, but the frozen
    tower's outputs do not, and a VQA set asks several questions about each image. Within the
    `with` block the tower serves each image row from memory, keyed by its pixels (and the call's
    options), so batches need no ids and an image never seen runs the tower. Only for families
    whose tower outputs have one row per image (`Family.tower_rows_per_image`), with the tower
    in eval mode; past `max_bytes` new rows are computed as usual and not kept.
    """

    def __init__(self, tower: Any, max_bytes: float) -> None:
        self.tower, self.max_bytes = tower, max_bytes
        self.rows: dict[bytes, dict[str, Any]] = {}
        self.kept_bytes = 0
        self.computed = 0  # image rows the tower really ran on
        self.served = 0  # image rows handed back from memory
        self.kind: type | None = None  # the tower's output class

    def __enter__(self) -> TowerMemo:
        live = self.tower.forward

        def memo_forward(pixel_values: Any, *args: Any, **kwargs: Any) -> Any:
            return self._forward(live, pixel_values, *args, **kwargs)

        self.tower.forward = memo_forward  # an instance attribute: state_dict is untouched
        return self

    def __exit__(self, *exc: object) -> None:
        del self.tower.forward
        self.rows.clear()
        self.kept_bytes = 0

    def _forward(self, live: Callable, pixel_values: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        if args or any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            return live(pixel_values, *args, **kwargs)  # per-call tensors: not memoizable
        options = repr(sorted(kwargs.items())).encode()
        keys = [_row_key(row, options) for row in pixel_values]
        fresh: dict[bytes, dict[str, Any]] = {}
        missing = list(dict.fromkeys(k for k in keys if k not in self.rows))
        if missing:
            first = {k: keys.index(k) for k in missing}
            with torch.no_grad():
                out = live(pixel_values[[first[k] for k in missing]], **kwargs)
            self.kind = type(out)
            for j, key in enumerate(missing):
                row = {name: _take(value, j) for name, value in out.items()}
                fresh[key] = row
                size = sum(t.numel() * t.element_size() for t in _tensors(row))
                if self.kept_bytes + size <= self.max_bytes:
                    self.rows[key], self.kept_bytes = row, self.kept_bytes + size
            self.computed += len(missing)
        self.served += len(keys) - len(missing)
        rows = [fresh[k] if k in fresh else self.rows[k] for k in keys]
        return self.kind(**{name: _join([r[name] for r in rows]) for name in rows[0]})


def _row_key(row: Any, options: bytes) -> bytes:
    import hashlib

    import torch

    data = row.detach().contiguous().flatten().view(torch.uint8).cpu().numpy()
    digest = hashlib.blake2b(data.tobytes(), digest_size=16)
    digest.update(f"{row.dtype}{tuple(row.shape)}".encode() + options)
    return digest.digest()


def _take(value: Any, j: int) -> Any:
    """Row j of a tower output field (a tensor, None or a tuple of them), as a batch of one."""
    if isinstance(value, tuple):
        return tuple(_take(v, j) for v in value)
    return None if value is None else value[j:j + 1].detach()


def _join(values: list[Any]) -> Any:
    import torch

    if isinstance(values[0], tuple):
        return tuple(_join(list(parts)) for parts in zip(*values, strict=True))
    return None if values[0] is None else torch.cat(values)


def _tensors(row: dict[str, Any]) -> list[Any]:
    found = [t for value in row.values()
             for t in (value if isinstance(value, tuple) else (value,))]
    return [t for t in found if t is not None]
