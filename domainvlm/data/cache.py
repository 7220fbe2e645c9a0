"""Processed tensors computed once and kept on disk, keyed by data + processor fingerprint.

Peers re-run the processor on every epoch and every run; a key that covers the records, the
image bytes, the processor files, the prompt layout and the code that encodes (our encoding
modules' source, the transformers / tokenizers / Pillow / torch versions) means a hit is
always safe to reuse, also after an upgrade that changes how samples are made.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domainvlm.atomic import atomic_file
from domainvlm.data.encode import Sample, encode_records
from domainvlm.data.images import image_digest
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record

CACHE_FORMAT = 1
# Our modules whose code runs while a record becomes a sample (checked in the tests against the
# modules seen executing while encoding), and the distributions whose code does the rest.
ENCODING_MODULES = ("domainvlm.data.cache", "domainvlm.data.encode", "domainvlm.data.images",
                    "domainvlm.data.prompting", "domainvlm.families")
ENCODING_DISTRIBUTIONS = ("transformers", "tokenizers", "pillow", "torch")


def cache_root() -> Path:
    """Where domainvlm keeps what it computes once: `$DOMAINVLM_CACHE`, else
    ~/.cache/domainvlm."""
    return Path(os.environ.get("DOMAINVLM_CACHE") or Path.home() / ".cache" / "domainvlm")


def default_cache_dir() -> Path:
    return cache_root() / "processed"


def processor_fingerprint(processor: Any) -> str:
    """Hash of every file `save_pretrained` writes for the processor (tokenizer included)."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        processor.save_pretrained(tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def code_fingerprint() -> str:
    """Hash of the source of `ENCODING_MODULES` and the versions of `ENCODING_DISTRIBUTIONS`."""
    digest = hashlib.sha256()
    for name in ENCODING_MODULES:
        digest.update(name.encode())
        digest.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    for name in ENCODING_DISTRIBUTIONS:
        digest.update(f"{name}=={importlib.metadata.version(name)}".encode())
    return digest.hexdigest()


def data_fingerprint(records: list[Record], fmt: PromptFormat, max_length: int) -> str:
    digest = hashlib.sha256()
    header = [CACHE_FORMAT, code_fingerprint(), processor_fingerprint(fmt.processor),
              fmt.family.name, fmt.answer_prefix, fmt.end_of_turn_id, max_length]
    digest.update(json.dumps(header).encode())
    for record in records:
        row = [record.question, record.answer, [image_digest(ref) for ref in record.images]]
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()


def load_or_encode(records: list[Record], fmt: PromptFormat, max_length: int,
                   cache_dir: Path | None = None,
                   progress: Callable[[], None] | None = None) -> tuple[list[Sample], bool]:
    """Samples for `records`, from the cache when their fingerprint is there (then True)."""
    import torch

    key = data_fingerprint(records, fmt, max_length)
    path = (cache_dir or default_cache_dir()) / f"{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True), True
        except (RuntimeError, EOFError, OSError, ValueError,  # a damaged pickle: ValueError
                pickle.UnpicklingError):
            path.unlink(missing_ok=True)  # unreadable entry: rebuild it below
    samples = encode_records(records, fmt, max_length, progress)
    with atomic_file(path) as handle:  # never a half-written entry
        torch.save(samples, handle)
    return samples, False
