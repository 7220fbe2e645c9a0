"""Our calls into transformers, peft and accelerate use no deprecated API.

Fine-tuning (LoRA and full, with activation checkpointing), evaluation, merging and probing run
on tiny models of two families (PaliGemma builds its prompt apart) while every deprecation
warning raised with our code on the stack, and every warning transformers logs, is collected:
there must be none. A deprecated call coming back (e.g. `gradient_checkpointing_enable`, which
transformers 5.25 deprecates) fails here before it reaches a user's terminal.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import domainvlm

OURS = str(Path(domainvlm.__file__).parent)
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


@contextlib.contextmanager
def library_complaints() -> Iterator[list[str]]:
    """Deprecation warnings raised while our code is on the stack, and what transformers logs
    at WARNING or above, during the block (whatever filters earlier tests or the CLI set)."""
    from transformers.utils import logging as hf_logging

    found: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None):
        ours = any(frame.filename.startswith(OURS) for frame in traceback.extract_stack())
        if issubclass(category, DEPRECATIONS) and ours:
            found.append(f"{category.__name__} at {filename}:{lineno}: {message}")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(f"transformers logged {record.levelname}: {record.getMessage()}")

    handler, level = Collect(logging.WARNING), hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    hf_logging.get_logger().addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            yield found
    finally:
        hf_logging.get_logger().removeHandler(handler)
        hf_logging.set_verbosity(level)


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_our_calls_use_no_deprecated_api(family, tiny_models, shapes_data, tmp_path):
    from domainvlm.adapter_io import merge_adapter
    from domainvlm.evaluation.probe import probe_closed_questions
    from domainvlm.evaluation.run import evaluate
    from domainvlm.train.config import build_config
    from domainvlm.train.loop import finetune

    model = tiny_models(family)
    with library_complaints() as found:
        runs = {}
        for method in ("lora", "full"):
            runs[method] = finetune(build_config(dict(
                model=str(model), data=str(shapes_data["train"]), output=tmp_path / method,
                method=method, gradient_checkpointing=True, max_steps=1, batch_size=2,
                cache_dir=tmp_path / "cache")))
        adapter = runs["lora"].adapter
        evaluate(str(adapter), str(shapes_data["eval"]), tmp_path / "eval", batch_size=4,
                 max_new_tokens=2)
        merge_adapter(adapter, tmp_path / "merged")
        probe_closed_questions(str(adapter), str(shapes_data["train"]),
                               str(shapes_data["eval"]))
    assert not found, "\n".join(dict.fromkeys(found))
