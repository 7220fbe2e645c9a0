"""Records to model-ready tensors, with loss only on answer tokens.

Each sample keeps per-token tensors, first dimension the token (input_ids, attention_mask,
labels, and any other per-token key the processor returns, such as PaliGemma's token_type_ids,
Qwen's mm_token_type_ids or Mllama's (L, images, tiles) cross_attention_mask), and the
processor's image tensors as it returned them. Which keys are per token is read off what the
processor returns (an integer tensor whose second dimension is the prompt's length), not
off a family table, so a processor not seen before is handled alike.
"""

from __future__ import annotations

from typing import Any

from domainvlm.data.images import open_image
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record
from domainvlm.errors import ConfigError, DataError

IGNORE_INDEX = -100

Sample = dict[str, Any]  # str -> torch.Tensor


def encode_record(record: Record, fmt: PromptFormat, max_length: int) -> Sample:
    """Tokenise and process one record; DataError if it cannot fit without cutting it."""
    import torch

    images = [open_image(ref, record.source) for ref in record.images]
    if len(images) > 1 and not fmt.family.multi_image:
        raise DataError(f"{record.source}: {len(images)} images, but the {fmt.family.name} "
                        "family takes one image per prompt")
    prompt = fmt.prompt(record.question, len(images))
    batch = fmt.processor(**fmt.processor_inputs(prompt, [images]), return_tensors="pt")
    prompt_ids = batch["input_ids"][0]
    target = torch.tensor(fmt.target_ids(record.answer), dtype=prompt_ids.dtype)
    n_prompt, total = len(prompt_ids), len(prompt_ids) + len(target)
    if total > max_length:
        n_image = int((prompt_ids == image_token_id(fmt.processor)).sum())
        raise DataError(
            f"{record.source}: prompt and answer need {total} tokens ({n_image} of them image "
            f"tokens) but --max-length is {max_length}; cutting would drop image or answer "
            "tokens. Raise --max-length, shorten the text or lower the image resolution"
        )
    sample: Sample = {}
    for key, value in batch.items():
        if is_per_token(value, n_prompt):
            fill = target if key == "input_ids" else _answer_fill(key, value[0], fmt, len(target))
            sample[key] = torch.cat([value[0], fill.to(value.dtype)])
        else:
            sample[key] = value
    sample["labels"] = torch.cat(
        [torch.full((n_prompt,), IGNORE_INDEX, dtype=torch.long), target.long()]
    )
    return sample


def is_per_token(value: Any, length: int) -> bool:
    """Whether a processor output (batch of one) holds a value per token of a `length`-token
    prompt: (1, L) ids and masks, (1, L, images, tiles) cross-attention masks. Image tensors
    are floating point, or (like image_grid_thw) not L long."""
    import torch

    return (isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == 1
            and value.shape[1] == length and not value.is_floating_point())


def _answer_fill(key: str, prompt_values, fmt: PromptFormat, n: int):
    """Values of `key` for the `n` answer tokens: the family's, else the last prompt token's
    (attention 1, text type 0, the images that token attends to), as the processor would give
    the answer had it been part of the text."""
    import torch

    if key in fmt.family.answer_token_values:
        value = torch.tensor(fmt.family.answer_token_values[key], dtype=prompt_values.dtype)
        return value.expand(n, *prompt_values.shape[1:])
    return prompt_values[-1:].expand(n, *prompt_values.shape[1:])


def image_token_id(processor: Any) -> int | None:
    """The placeholder token id the processor expands into image features."""
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None and getattr(processor, "image_token", None):
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return token_id


def pad_token_id(processor: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its end-of-sequence."""
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError("the tokenizer has neither a pad nor an eos token; set pad_token")
    return pad


def encode_records(records: list[Record], fmt: PromptFormat, max_length: int,
                   progress: Any = None) -> list[Sample]:
    """Encode every record; all problems are gathered and reported together, none dropped."""
    if not records:
        raise DataError("the data set is empty; it needs at least one record")
    samples, problems = [], []
    for record in records:
        try:
            samples.append(encode_record(record, fmt, max_length))
        except DataError as exc:
            problems.append(str(exc))
        if progress is not None:
            progress()
    if problems:
        shown = "\n  ".join(problems[:5])
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise DataError(f"{len(problems)} of {len(records)} records are unusable:\n  "
                        f"{shown}{more}")
    return samples
