"""How a run ends early: a loss that stopped being finite, or Ctrl-C.

Either way the last checkpoint stands (a non-finite step is never applied, so no checkpoint
or adapter of NaNs is ever written), `run.json` says what happened, and the caller gets an
exception that says what to do next.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

from domainvlm.atomic import write_json
from domainvlm.errors import RunInterrupted, TrainingDivergedError
from domainvlm.train.checkpoint import TrainState, latest_checkpoint
from domainvlm.train.run_dir import mark_stopped


def check_finite(step: int, total: int, loss: float, grad_norm: float | None, *,
                 output: Path, learning_rate: float) -> None:
    """Raise TrainingDivergedError when step `step`'s loss or gradient norm is inf or nan."""
    if math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm)):
        return
    norm = "" if grad_norm is None else f", gradient norm {grad_norm}"
    last = latest_checkpoint(output / "checkpoints")
    kept = (f"the last good checkpoint is {last}" if last is not None
            else "no checkpoint was written before it")
    raise TrainingDivergedError(
        f"training diverged at step {step} of {total}: loss {loss}{norm}. The step was not "
        f"applied and no adapter was written; {kept}. Lower --learning-rate (now "
        f"{learning_rate:g}) or check the data, then start again with --overwrite"
    )


@contextlib.contextmanager
def recorded_stops(output: Path, state: TrainState, total: int,
                   is_main: bool) -> Iterator[None]:
    """Around the training loop: a divergence or Ctrl-C is written to run.json (status
    `failed` or `interrupted`) with the history so far, then raised again; Ctrl-C as
    RunInterrupted, which names the checkpoint a `--resume` continues from."""
    try:
        yield
    except TrainingDivergedError as exc:
        if is_main:
            write_json(output / "history.json", state.history)
            mark_stopped(output, "failed", {"error": str(exc), "failed_step": state.step + 1})
        raise
    except KeyboardInterrupt:
        last = latest_checkpoint(output / "checkpoints")
        if is_main:
            write_json(output / "history.json", state.history)
            mark_stopped(output, "interrupted", {
                "interrupted_after_step": state.step,
                "last_checkpoint": None if last is None else str(last)})
        raise RunInterrupted(state.step, total, last) from None
