"""Answer questions with a model (base or base + adapter), batched, greedy."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from domainvlm.data.images import open_image
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record
from domainvlm.models.parts import part_of
from domainvlm.models.vision_cache import TowerMemo


def generate_answers(model: Any, fmt: PromptFormat, records: list[Record], *,
                     batch_size: int = 8, max_new_tokens: int = 32,
                     progress: Callable[[int], None] | None = None,
                     memo_bytes: float | None = 2 * 2**30,
                     adapter_names: list[str] | None = None) -> list[str]:
    """Greedy answers for `records`, in order. Prompts are left-padded so batches decode.

    Nothing trains here, so where the family allows it the vision tower runs once per distinct
    image, not once per question (a VQA set asks several about each scan); `memo_bytes` caps
    what is kept (None: the tower runs every time). `adapter_names` (one per record, a PEFT
    adapter name or "__base__") answers each record with its own adapter of a multi-adapter
    PeftModel, in the same batches (PEFT's mixed-batch inference).
    """
    if adapter_names is not None and len(adapter_names) != len(records):
        raise ValueError(f"{len(adapter_names)} adapter names for {len(records)} records")
    tokenizer = fmt.processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    answers: list[str] = []
    memo = (TowerMemo(part_of(model, "vision"), memo_bytes)
            if memo_bytes and fmt.family.tower_rows_per_image else contextlib.nullcontext())
    try:
        with memo:
            for start in range(0, len(records), batch_size):
                chunk = records[start:start + batch_size]
                names = adapter_names[start:start + batch_size] if adapter_names else None
                answers += _answer_batch(model, fmt, chunk, max_new_tokens, names)
                if progress is not None:
                    progress(len(chunk))
    finally:
        tokenizer.padding_side = side
    return answers


def _answer_batch(model: Any, fmt: PromptFormat, chunk: list[Record], max_new_tokens: int,
                  adapter_names: list[str] | None) -> list[str]:
    import torch

    tokenizer = fmt.processor.tokenizer
    images = [[open_image(ref, r.source) for ref in r.images] for r in chunk]
    prompts = [fmt.prompt(r.question, len(imgs)) for r, imgs in zip(chunk, images, strict=True)]
    inputs = fmt.processor(**fmt.processor_inputs(prompts, images), padding=True,
                           return_tensors="pt").to(model.device)
    mixed = {} if adapter_names is None else {"adapter_names": adapter_names}
    with torch.no_grad():
        out = model.generate(**inputs, **mixed, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=[fmt.end_of_turn_id, tokenizer.eos_token_id],
                             pad_token_id=tokenizer.pad_token_id)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
