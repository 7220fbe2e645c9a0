"""Atomic checkpoints: everything needed to continue a run bit for bit.

A checkpoint is written into a hidden temp folder and renamed into place, so a run killed at
any instant leaves either a complete checkpoint or none, never a half one that looks valid.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainvlm.atomic import publish, temp_dir_for  # noqa: F401 (used as ckpt.publish)

CHECKPOINT_PREFIX = "step-"


@dataclass
class TrainState:
    """Counters and history that travel with a checkpoint."""

    step: int = 0
    best_eval_loss: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"{CHECKPOINT_PREFIX}{step:07d}"


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint (temp folders are ignored: they may be half written)."""
    done = sorted(p for p in root.glob(f"{CHECKPOINT_PREFIX}*")
                  if p.is_dir() and (p / "trainer_state.pt").is_file())
    return done[-1] if done else None


def prune_checkpoints(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())
    for path in done[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def trainer_state_dict(state: TrainState, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    return {"state": state.__dict__, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict()}


def load_trainer_state(path: Path, optimizer: Any, scheduler: Any) -> TrainState:
    import torch

    saved = torch.load(path / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return TrainState(**saved["state"])
