"""Answer questions with a model (base or base + adapter), batched, greedy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domainvlm.data.images import open_image
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record


def generate_answers(model: Any, fmt: PromptFormat, records: list[Record], *,
                     batch_size: int = 8, max_new_tokens: int = 32,
                     progress: Callable[[int], None] | None = None) -> list[str]:
    """Greedy answers for `records`, in order. Prompts are left-padded so batches decode."""
    import torch

    tokenizer = fmt.processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    answers: list[str] = []
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            images = [[open_image(ref, r.source) for ref in r.images] for r in chunk]
            prompts = [fmt.prompt(r.question, len(imgs))
                       for r, imgs in zip(chunk, images, strict=True)]
            flat = images if fmt.family.nest_images else [i for imgs in images for i in imgs]
            inputs = fmt.processor(text=prompts, images=flat, padding=True,
                                   return_tensors="pt").to(model.device)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=[fmt.end_of_turn_id, tokenizer.eos_token_id],
                                     pad_token_id=tokenizer.pad_token_id)
            new = out[:, inputs["input_ids"].shape[1]:]
            answers += [text.strip() for text in
                        tokenizer.batch_decode(new, skip_special_tokens=True)]
            if progress is not None:
                progress(len(chunk))
    finally:
        tokenizer.padding_side = side
    return answers
