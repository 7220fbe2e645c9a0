"""Every question about one image trained in one sequence, the image's tokens only once.

A VQA set asks several questions of each image. Trained one row per sequence, the language model
runs over the image's tokens (most of each sequence) once per question. Packed, a sequence is
the prompt prefix the rows share (template and image tokens) followed by each row's own tokens
(question, answer, end of turn); a block mask lets each row attend to the prefix and to itself
only, and its position ids continue from the prefix. Each row's logits, and so its loss, are the
ones it has alone; the step runs the image once for all its questions.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from domainvlm.data.collate import is_token_key
from domainvlm.data.encode import IGNORE_INDEX, Sample
from domainvlm.errors import ConfigError
from domainvlm.families import FAMILIES, Family

SEGMENT_KEY = "segment_ids"  # per token: 0 padding, 1 shared prefix, 2... one per packed row
PREFIX, FIRST_ROW = 1, 2


def pack_by_image(samples: Sequence[Sample], repeats: Sequence[int],
                  image_keys: Sequence[Hashable | None], max_length: int,
                  image_token_id: int | None) -> tuple[list[Sample], list[int]]:
    """Packed samples, one per image (split where one would pass `max_length`), and how many
    rows each holds. A row with `repeats[i]` > 1 appears that many times in its pack; rows
    whose key is None (no image) stay alone."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(image_keys):
        groups.setdefault(("alone", i) if key is None else key, []).append(i)
    packs: list[Sample] = []
    counts: list[int] = []
    for members in groups.values():
        prefix = _shared_prefix([samples[i] for i in members])
        rows = [i for i in members for _ in range(repeats[i])]
        for chunk in _chunks(samples, rows, prefix, max_length):
            packs.append(_pack(samples, chunk, prefix, image_token_id))
            counts.append(len(chunk))
    return packs, counts


def segment_attention_mask(segments, float_dtype=None):
    """The (B, 1, L, L) mask of packed rows: a token sees earlier tokens of the prefix and of its
    own row. Boolean (True: may attend), or additive in `float_dtype` for eager attention.
    Padding sees itself only, so no softmax row is empty."""
    import torch

    length = segments.shape[1]
    query, key = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (query != 0) & (key != 0) & ((key == PREFIX) | (key == query))
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)
    allowed = allowed[:, None]
    if float_dtype is None:
        return allowed
    blocked = torch.zeros(allowed.shape, dtype=float_dtype, device=segments.device)
    return blocked.masked_fill(~allowed, torch.finfo(float_dtype).min)


def with_segment_mask(inputs: dict[str, Any], attention: str) -> dict[str, Any]:
    """Model inputs with a packed batch's segment ids turned into its attention mask: boolean
    for SDPA, additive for eager attention (which adds the mask to its scores)."""
    import torch

    if SEGMENT_KEY not in inputs:
        return inputs
    inputs = dict(inputs)
    segments = inputs.pop(SEGMENT_KEY)
    inputs["attention_mask"] = segment_attention_mask(
        segments, None if attention == "sdpa" else torch.float32)
    return inputs


def attention_of(model: Any) -> str:
    """The language model's attention implementation ("sdpa", "eager", ...)."""
    config = getattr(model, "module", model).config  # DDP wraps the model
    return config.get_text_config()._attn_implementation


def check_packable(family: Family, attention: str) -> None:
    """ConfigError unless this model's rows can share a sequence."""
    if not family.packs_questions:
        able = ", ".join(f.name for f in FAMILIES if f.packs_questions)
        raise ConfigError(f"--pack-questions is not supported for the {family.name} family "
                          f"(supported: {able}); train without it")
    if attention not in ("sdpa", "eager"):
        raise ConfigError(f"--pack-questions needs a custom attention mask, which the model's "
                          f"{attention!r} attention does not take; load it with sdpa or eager "
                          "attention, or train without --pack-questions")


def _shared_prefix(members: Sequence[Sample]) -> int:
    """Tokens at the start that every member has alike (every per-token key but the labels),
    stopping before the token that predicts any member's first trained token.

    That token must belong to each row: in the prefix, only the first row would follow it, and
    every later row's first answer token would be predicted from the row before it (rows that
    share their whole prompt: a repeated record, or one question asked twice).
    """
    first = members[0]
    keys = [k for k in first if k != "labels" and is_token_key([first], k)]
    length = min(int((s["labels"] != IGNORE_INDEX).nonzero()[0]) for s in members) - 1
    for sample in members[1:]:
        for key in keys:
            differs = (first[key][:length] != sample[key][:length])
            differs = differs.reshape(len(differs), -1).any(1).nonzero()  # (L, ...) per token
            if len(differs):
                length = int(differs[0])
    return max(length, 0)


def _chunks(samples: Sequence[Sample], rows: list[int], prefix: int,
            max_length: int) -> list[list[int]]:
    chunks: list[list[int]] = [[]]
    length = prefix
    for i in rows:
        own = len(samples[i]["input_ids"]) - prefix
        if chunks[-1] and length + own > max_length:
            chunks.append([])
            length = prefix
        chunks[-1].append(i)
        length += own
    return chunks


def _pack(samples: Sequence[Sample], rows: list[int], prefix: int,
          image_token_id: int | None) -> Sample:
    import torch

    first = samples[rows[0]]
    own = [samples[i]["input_ids"][prefix:] for i in rows]
    if image_token_id is not None and any((part == image_token_id).any() for part in own):
        raise ConfigError("the rows of an image differ before its image tokens (the prompt "
                          "puts text before the image), so they share no image prefix; train "
                          "without --pack-questions")
    packed: Sample = {}
    for key, value in first.items():
        if is_token_key([first], key):
            packed[key] = torch.cat([value[:prefix], *(samples[i][key][prefix:] for i in rows)])
        else:
            packed[key] = value  # the image tensors: one image, alike in every row
    packed["position_ids"] = torch.cat(
        [torch.arange(prefix), *(torch.arange(prefix, prefix + len(part)) for part in own)])
    packed[SEGMENT_KEY] = torch.cat(
        [torch.full((prefix,), PREFIX),
         *(torch.full((len(part),), FIRST_ROW + k) for k, part in enumerate(own))])
    return packed
