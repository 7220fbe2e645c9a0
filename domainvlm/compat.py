"""Calls into transformers and peft that work on every version pyproject admits
(transformers >=5.0,<6) without the deprecation warnings the newer ones give.

transformers 5.25 renamed gradient checkpointing to activation checkpointing and warns
(FutureWarning, removal in v6) on the old names; 5.0 has only the old ones.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

_NO_REENTRANT = {"use_reentrant": False}  # the reentrant variant needs inputs that want grads


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=dict(_NO_REENTRANT))
    else:  # transformers before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(_NO_REENTRANT))


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around `get_peft_model` / `PeftModel.from_pretrained`: peft (0.21) reads the model's
    deprecated `is_gradient_checkpointing` when it wraps it. The read is peft's, so only that
    one warning is hidden; any other still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield
