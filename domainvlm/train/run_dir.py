"""The output folder's contract: one run per folder, never silently overwritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from domainvlm.atomic import write_json
from domainvlm.errors import OutputExistsError
from domainvlm.outputs import refuse_inputs_inside

RUN_FILE = "run.json"


def read_run(output: Path) -> dict[str, Any] | None:
    path = output / RUN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_output(output: Path, settings: dict[str, Any], *, resume: bool,
                 overwrite: bool) -> None:
    """Fail fast, before any work, when `output` may not take a run with `settings`: a file,
    a folder that holds the run's own inputs, or one that holds something else."""
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"output {output} is a file; name a folder for --output")
    refuse_inputs_inside(output, "finetune",
                         [settings.get(key) for key in ("model", "data", "eval_data")])
    run = read_run(output) if output.is_dir() else None
    occupied = output.is_dir() and any(output.iterdir())
    if occupied and run is None:
        raise OutputExistsError(
            f"output folder {output} is not empty and holds no domainvlm run; choose another "
            "--output"
        )
    if occupied and not overwrite:
        changed = sorted(k for k in set(settings) | set(run["config"])
                         if settings.get(k) != run["config"].get(k))
        if changed:
            raise OutputExistsError(
                f"output folder {output} holds a different run (differs in: "
                f"{', '.join(changed)}); pass --overwrite to replace it or choose another "
                "--output"
            )
        if resume:
            return
        if run.get("status") == "finished":
            raise OutputExistsError(
                f"output folder {output} already holds this finished run; pass --overwrite to "
                "train it again"
            )
        if run.get("status") == "failed":
            raise OutputExistsError(
                f"output folder {output} holds a run of this config that failed "
                f"({run.get('error', 'no reason recorded')}); pass --overwrite to start over, "
                "or --resume to continue from its last checkpoint"
            )
        raise OutputExistsError(
            f"output folder {output} holds an interrupted run of this config; pass --resume to "
            "continue it or --overwrite to start over"
        )


def claim_output(output: Path, settings: dict[str, Any], *, overwrite: bool) -> None:
    """Mark `output` as holding a running run (after `check_output` and all validation)."""
    if overwrite and output.is_dir():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    # A resumed run keeps its record but is running again: why it stopped last time is past.
    run = read_run(output) or {"config": settings}
    write_json(output / RUN_FILE, {"config": run["config"], "status": "running"})


def mark_finished(output: Path, summary: dict[str, Any]) -> None:
    mark_stopped(output, "finished", {"summary": summary})


def mark_stopped(output: Path, status: str, details: dict[str, Any]) -> None:
    """Record how the run ended: finished, failed (with the error) or interrupted."""
    run = read_run(output) or {}
    write_json(output / RUN_FILE, {"config": run.get("config"), "status": status, **details})
