#!/usr/bin/env python
"""Fine-tuning with the questions about each image packed into one sequence, against one row
per sequence: rows per second, and proof that both take the same steps.

The shipped nano model (a FastVLM), fed 320 px images as `domainvlm demo` feeds it (100 image
tokens), is LoRA-fine-tuned twice per repeat in one process, alternating which goes first, on
coloured-shape questions (`domainvlm.nano.shapes_world`, 10 per image): rows one per sequence, then
`--pack-questions`. Every step takes the whole training set, each forward pass the same 20 rows
(20 rows, or 2 images with their 10 questions each), so both runs make the same updates and
their adapters may differ by float32 summation order only. One JSON object goes to stdout; see
benchmarks/README.md.

    .venv/bin/python benchmarks/packing.py            # 24 images, 6 steps, 2 repeats: ~1.5 min
    .venv/bin/python benchmarks/packing.py --quick    # smoke test: 4 images at 192 px, 2 steps
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("unpacked", "packed")
ROWS_PER_FORWARD = 20
GOAL_SPEEDUP = 2.0
SAME_ADAPTER = 1e-4  # largest difference of any adapter weight, float32 summation order only
TIMING = ("rows_per_s: rows trained over the training loop's wall time (run.json summary: every "
          "step, the frozen tower's first pass over each image included; model loading and data "
          "encoding not); the best over the repeats, which alternate which mode goes first.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24, help="training images (even)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    parser.add_argument("--image-size", type=int, default=320,
                        help="pixels the nano is fed (320: 100 image tokens, as in the demo)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode; best is kept")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 4 images at 192 px, 2 steps, 1 repeat")
    parser.add_argument("--workdir", type=Path, help="keep model, data and runs here")
    parser.add_argument("--output", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.image_size, args.repeats = 4, 2, 192, 1
    if args.images < 2 or args.images % 2:
        parser.error("--images must be an even number, at least 2 (2 images per forward pass)")
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    return args


def prepare(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path, int]:
    """The nano at the benchmark's input size, and a training file of exactly `args.images`
    images with 10 questions each; returns (model, data, rows)."""
    from domainvlm.nano import ensure_nano, with_input_size
    from domainvlm.nano.shapes_world import write_shapes_dataset

    model = with_input_size(ensure_nano(), args.image_size, workdir / "nano")
    # write_shapes_dataset keeps a quarter of the images for its eval split
    paths = write_shapes_dataset(workdir / "shapes", n_images=args.images * 4 // 3 + 1, seed=0)
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    images = sorted({row["image"] for row in rows})[:args.images]
    kept = [row for row in rows if row["image"] in images]
    data = paths["train"].with_name("benchmark.jsonl")
    data.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return model, data, len(kept)


def train(mode: str, model: Path, data: Path, rows: int, images: int, steps: int,
          workdir: Path, name: str) -> dict[str, Any]:
    from domainvlm.progress import Reporter
    from domainvlm.train.config import FinetuneConfig
    from domainvlm.train.loop import finetune

    packed = mode == "packed"
    result = finetune(FinetuneConfig(
        model=str(model), data=str(data), output=workdir / name, max_steps=steps,
        batch_size=images if packed else rows,
        micro_batch_size=ROWS_PER_FORWARD * images // rows if packed else ROWS_PER_FORWARD,
        pack_questions=packed, lora_dropout=0.0, learning_rate=1e-3, warmup_ratio=0.0,
        cache_dir=workdir / "cache", overwrite=True), Reporter(enabled=False))
    summary = json.loads((result.output / "run.json").read_text())["summary"]
    return {"rows_per_s": summary["samples_per_second"], "seconds": summary["seconds"],
            "adapter": result.adapter}


def adapter_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    first = load_file(str(a / "adapter_model.safetensors"))
    second = load_file(str(b / "adapter_model.safetensors"))
    if first.keys() != second.keys():
        raise RuntimeError("the two adapters hold different weights")
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model, data, rows = prepare(args, workdir)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):
        order = MODES if repeat % 2 == 0 else MODES[::-1]
        for mode in order:
            runs[mode].append(train(mode, model, data, rows, args.images, args.steps, workdir,
                                    f"{mode}-{repeat}"))
    best = {mode: max(r["rows_per_s"] for r in runs[mode]) for mode in MODES}
    difference = adapter_difference(runs["unpacked"][0]["adapter"], runs["packed"][0]["adapter"])
    speedup = best["packed"] / best["unpacked"]
    return {
        **{mode: {"rows_per_s": best[mode],
                  "seconds": [r["seconds"] for r in runs[mode]]} for mode in MODES},
        "speedup": round(speedup, 3),
        "adapter_max_difference": difference,
        "goal_met": {f"speedup_ge_{GOAL_SPEEDUP:g}": speedup >= GOAL_SPEEDUP,
                     "same_adapter": difference < SAME_ADAPTER},
        "config": {"images": args.images, "rows": rows, "steps": args.steps,
                   "image_size": args.image_size, "repeats": args.repeats,
                   "rows_per_forward": ROWS_PER_FORWARD, "timing": TIMING},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, Path(tmp))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["load_average"] = os.getloadavg()[0]
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
