"""Tiny, randomly initialised vision-language models for offline tests and smoke runs.

Real checkpoints weigh gigabytes and live on the Hub. `build_tiny_model` writes a
sub-million-parameter instance of a family's architecture (`domainvlm.models.random_init`) with
a model card that says it is random, so every SDK code path (templating, collation, LoRA,
generation) runs on a CPU in seconds without network access; `domainvlm tiny-model` is its
command.
"""

from __future__ import annotations

from pathlib import Path

from domainvlm.families import known_family_names
from domainvlm.models.random_init import write_random_model

# Every family the project knows: the registry's, and those that run the generic path.
FAMILIES = tuple(known_family_names())

_CARD = """---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [domainvlm, tiny-random, test]
---
# tiny-random-{family}

A randomly initialised, tiny `{arch}` ({params:,} parameters) built offline by
`{call}`, with a byte-level
BPE tokenizer trained on a small built-in English corpus. It produces nonsense: use it only for
tests and smoke runs, never for predictions.
"""


def build_tiny_model(
    family: str, output: Path | str, *, seed: int = 0, image_size: int = 64, size: str = "tiny"
) -> Path:
    """Write a tiny random `family` model, its processor and a model card to `output`.

    The result loads with `AutoModelForImageTextToText` / `AutoProcessor`; the same `seed`
    gives byte-identical weights and tokenizer. `size` is "tiny" or "small"
    (`domainvlm.models.random_init.SIZES`).
    """
    model = write_random_model(family, output, seed=seed, image_size=image_size, size=size)
    params = sum(p.numel() for p in model.parameters())
    call = f'domainvlm.tiny.build_tiny_model("{family}", seed={seed}, image_size={image_size}'
    call += f', size="{size}")' if size != "tiny" else ")"
    card = _CARD.format(family=family, arch=type(model).__name__, params=params, call=call)
    out = Path(output)
    (out / "README.md").write_text(card)
    return out
