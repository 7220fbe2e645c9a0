#!/usr/bin/env python
"""Training throughput, peak memory and answer loss: domainvlm against TRL's SFTTrainer.

Both frameworks LoRA-fine-tune the same tiny random LLaVA (CLIP vision + Llama LM, ~4.8 M
parameters, 64x64 images in 8 px patches = 64 image tokens, ~90-token sequences) on the same
coloured-shapes VQA set (7 to 10 questions per image), for the same epoch, learning-rate
schedule and seed, with LoRA r=8, alpha=16, dropout 0 on the same language-model Linear layers,
in three side-by-side comparisons, each its own ratio:

- single_row: one row per question, float32 (the top-level figures);
- packed_questions: domainvlm with --pack-questions (all questions about an image in one
  sequence, its image tokens once) against TRL one row per question (TRL cannot pack images),
  both training the same questions and the same answer tokens (checked);
- bf16: single_row with bf16 autocast on both sides (the JSON says if the CPU has native bf16).

Each training run is its own subprocess (train_throughput_workers.py), so its peak RSS is its
own; a last one scores every mode's adapters on the same held-out samples with domainvlm's
answer-only labels. One JSON object goes to stdout; see benchmarks/README.md.

    .venv/bin/python benchmarks/train_throughput.py          # 40 steps of 16, twice each: ~14 min
    .venv/bin/python benchmarks/train_throughput.py --quick  # smoke test: a few minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import train_throughput_workers as workers

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("domainvlm", "trl")
EXTRA_MODES = ("packed_questions", "bf16")  # single_row always runs: the headline ratio
MIN_QA_PER_IMAGE = 7  # domainvlm.nano.shapes_world.scene_questions asks 7 to 10 per scene
IMAGE_SIZE = 64
MODEL_SIZE = "small"  # domainvlm.models.random_init.SIZES: ~4.8 M parameters, patch 8 at 64 px
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}
WARMUP_RATIO = 0.03  # domainvlm's default; TRL gets the same number of warm-up steps
GOAL_SPEEDUP = 1.5
LOSS_TOLERANCE = 0.02  # domainvlm's answer loss may exceed TRL's by this fraction
POLL_SECONDS = 0.05
TIMING = ("samples_per_s (questions_per_s when packed): questions trained in optimizer steps "
          "2..N over the time from the end of step 1 to the end of step N (step 1 is warm-up; "
          "both sides count the questions their forwards supervise); each step's data loading, "
          "collation and logging are inside it. supervised_tokens_per_s: the answer tokens of "
          "those steps alike. samples_per_s_median_step: batch size over the median step time "
          "(robust to bursts of load); questions_per_s_median_step: the median of each packed "
          "step's questions per second. end_to_end_s: model load + data "
          "preparation + training + adapter save. Best of the repeats for each.")


# --- orchestration (stdlib + psutil only: the parent stays small, see peak RSS notes) ----------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40,
                        help="optimizer steps per run, one row per question")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-samples", type=int, default=80,
                        help="held-out questions scored after training")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2,
                        help="train each framework this many times per mode, alternating which "
                             "goes first, and keep each one's best throughput (shared CPUs are "
                             "noisy)")
    parser.add_argument("--bf16-steps", type=int, default=10,
                        help="steps of the bf16 runs, on the first steps x batch training rows "
                             "(bf16 is slow on CPUs that emulate it; at most --steps)")
    parser.add_argument("--skip", action="append", choices=EXTRA_MODES, default=[],
                        help="leave out this comparison (repeatable); single_row always runs")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 3 steps of batch 4 (2 in bf16), 10 eval samples")
    parser.add_argument("--trl-assistant-only-loss", action="store_true",
                        help="in single_row and bf16, train TRL on assistant tokens only "
                             "(default: TRL's default, which also trains on prompt and image "
                             "tokens); packed_questions always does")
    parser.add_argument("--workdir", type=Path,
                        help="keep model, data, adapters and worker logs here")
    parser.add_argument("--output", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.eval_samples, args.repeats = 3, 4, 10, 1
        args.bf16_steps = 2
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if min(args.steps, args.bf16_steps) < 2:
        parser.error("--steps and --bf16-steps must be at least 2 (step 1 is the untimed "
                     "warm-up)")
    args.bf16_steps = min(args.bf16_steps, args.steps)
    return args


def make_plan(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Sizes, paths and modes every worker reads. Each mode's training file is exactly its
    `steps` full row batches: train.jsonl, or its head for bf16."""
    batch = args.batch_size
    train_images = math.ceil(args.steps * batch / MIN_QA_PER_IMAGE)
    eval_images = math.ceil(args.eval_samples / MIN_QA_PER_IMAGE)
    answers_only = args.trl_assistant_only_loss
    full = {"train_file": "train.jsonl", "steps": args.steps}
    modes = {
        "single_row": {**full, "pack_questions": False, "bf16": False,
                       "trl_assistant_only_loss": answers_only},
        "packed_questions": {**full, "pack_questions": True, "bf16": False,
                             "trl_assistant_only_loss": True},  # equal answer tokens
        "bf16": {"train_file": "train-bf16.jsonl", "steps": args.bf16_steps,
                 "pack_questions": False, "bf16": True, "trl_assistant_only_loss": answers_only},
    }
    return {
        "workdir": str(workdir),
        "model": str(workdir / "model"),
        "data": str(workdir / "data"),
        "model_size": MODEL_SIZE,
        "image_size": IMAGE_SIZE,
        "lora": LORA,
        "warmup_ratio": WARMUP_RATIO,
        "train_images": train_images,
        "eval_images": eval_images,
        "eval_samples": args.eval_samples,
        "steps": args.steps,
        "batch_size": batch,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "repeats": args.repeats,
        "trl_assistant_only_loss": answers_only,
        "modes": {name: mode for name, mode in modes.items() if name not in args.skip},
    }


def worker_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               DOMAINVLM_CACHE=str(workdir / "domainvlm-cache"),  # fresh: no processed-data hits
               HF_DATASETS_CACHE=str(workdir / "hf-datasets"), PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_worker(kind: str, plan_path: Path, env: dict[str, str], mode: str | None = None,
               tag: str | None = None) -> dict[str, Any]:
    """Run one worker subprocess; its JSON result plus `peak_rss_mb_polled` (psutil, 50 ms)."""
    import psutil

    workdir = plan_path.parent
    name = f"{kind}-{tag}" if tag else kind
    log = workdir / f"{name}.log"
    command = [sys.executable, workers.__file__, kind, str(plan_path),
               *(["--mode", mode, "--tag", tag] if mode and tag else [])]
    with log.open("w") as handle:
        proc = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                cwd=workdir)
        peak = 0
        with contextlib.suppress(psutil.NoSuchProcess):
            child = psutil.Process(proc.pid)
            while proc.poll() is None:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    rss = child.memory_info().rss
                    rss += sum(c.memory_info().rss for c in child.children(recursive=True))
                    peak = max(peak, rss)
                time.sleep(POLL_SECONDS)
        proc.wait()
    if proc.returncode:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        sys.exit(f"benchmark worker {name!r} failed (exit {proc.returncode}); log {log}:\n{tail}")
    result = json.loads((workdir / f"{name}.json").read_text())
    result["peak_rss_mb_polled"] = round(peak / 2**20, 1)
    return result


def check_equal_work(plan: dict[str, Any],
                     runs: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """Exit with one line unless both frameworks trained as many questions as the comparison has
    training rows (one epoch of one file), and the same answer tokens wherever TRL trains on
    answers only."""
    for mode, by_name in runs.items():
        for repeat, pair in enumerate(zip(*(by_name[name] for name in FRAMEWORKS), strict=True)):
            ours, trl = pair
            rows = plan["modes"][mode]["steps"] * plan["batch_size"]
            all_questions = ours["questions"] == trl["questions"] == rows
            same_tokens = ours["supervised_tokens"] == trl["supervised_tokens"]
            if not all_questions or (plan["modes"][mode]["trl_assistant_only_loss"]
                                     and not same_tokens):
                sys.exit(f"benchmark: unequal work in {mode} (repeat {repeat}): domainvlm "
                         f"trained {ours['questions']} questions / {ours['supervised_tokens']} "
                         f"answer tokens, TRL {trl['questions']} / {trl['supervised_tokens']}; "
                         f"both must train all {rows} training questions of the mode "
                         "(and the same answer tokens where TRL trains on answers only)")


def throughputs(run: dict[str, Any], batch_size: int | None) -> dict[str, float]:
    """Steady-state rates over steps 2..N: questions and answer tokens per second, and a rate
    robust to bursts of load: row batches of `batch_size` over the median step time, or (packed
    steps differ in size) the median of each step's questions per second."""
    ends = run["step_ends"]
    if len(ends) < 2:
        raise RuntimeError(f"need at least 2 timed steps, got {len(ends)}")
    seconds = ends[-1] - ends[0]
    rates = {
        "questions_per_s": round((run["step_questions"][-1] - run["step_questions"][0])
                                 / seconds, 2),
        "supervised_tokens_per_s": round((run["step_supervised_tokens"][-1]
                                          - run["step_supervised_tokens"][0]) / seconds, 1),
    }
    steps = [ends[i + 1] - ends[i] for i in range(len(ends) - 1)]
    if batch_size is not None:
        rates["median_step"] = round(batch_size / statistics.median(steps), 2)
    else:
        questions = run["step_questions"]
        rates["median_step"] = round(statistics.median(
            (questions[i + 1] - questions[i]) / steps[i] for i in range(len(steps))), 2)
    return rates


def best_of(plan: dict[str, Any], mode: str, repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One framework's figures in one mode over its repeats: best speed, highest memory. Row
    modes name questions samples (one question per row), as the headline always has."""
    packed = plan["modes"][mode]["pack_questions"]
    unit = "questions" if packed else "samples"
    speeds = [throughputs(run, None if packed else plan["batch_size"]) for run in repeats]
    end_to_end = min(run["end_to_end_s"] for run in repeats)
    first = repeats[0]
    figures = {
        f"{unit}_per_s": max(s["questions_per_s"] for s in speeds),
        f"{unit}_per_s_median_step": max(s["median_step"] for s in speeds),
        f"{unit}_per_s_each_repeat": [s["questions_per_s"] for s in speeds],
        "supervised_tokens_per_s": max(s["supervised_tokens_per_s"] for s in speeds),
        "end_to_end_s": end_to_end,
        f"end_to_end_{unit}_per_s": round(first["questions"] / end_to_end, 2),
        "peak_rss_mb": max(run["peak_rss_mb"] for run in repeats),
        "peak_rss_mb_polled": max(run["peak_rss_mb_polled"] for run in repeats),
        "trainable_parameters": first["trainable_parameters"],
        **{key: first[key] for key in ("steps", "questions", "supervised_tokens", "sequences",
                                       "input_positions", "matmul_dtype")},
    }
    return figures


def compare(figures: dict[str, dict[str, Any]], unit: str) -> dict[str, float]:
    """domainvlm over TRL: throughput, end to end, and peak memory."""
    dvlm, trl = figures["domainvlm"], figures["trl"]
    ratios = {"speedup": round(dvlm[f"{unit}_per_s"] / trl[f"{unit}_per_s"], 3),
              "speedup_median_step": round(dvlm[f"{unit}_per_s_median_step"]
                                           / trl[f"{unit}_per_s_median_step"], 3)}
    if unit == "questions":
        ratios["speedup_supervised_tokens"] = round(dvlm["supervised_tokens_per_s"]
                                                    / trl["supervised_tokens_per_s"], 3)
    ratios["speedup_end_to_end"] = round(trl["end_to_end_s"] / dvlm["end_to_end_s"], 3)
    ratios["rss_ratio"] = round(dvlm["peak_rss_mb"] / trl["peak_rss_mb"], 3)
    return ratios


def summarise(plan: dict[str, Any], prep: dict[str, Any],
              runs: dict[str, dict[str, list[dict[str, Any]]]], scores: dict[str, Any],
              wall: float) -> dict[str, Any]:
    single = runs["single_row"]
    out: dict[str, Any] = {
        "benchmark": "train_throughput",
        "config": {
            "model": f"tiny LLaVA (CLIP vision + Llama LM), domainvlm.tiny size={MODEL_SIZE!r}",
            "parameters": prep["parameters"],
            "image_size": IMAGE_SIZE,
            "image_tokens": prep["image_tokens"],
            "sequence_length": scores["sequence_length"],
            "batch_size": plan["batch_size"],
            "steps": plan["steps"],
            "timed_steps": plan["steps"] - 1,
            "repeats": plan["repeats"],
            "train_samples": prep["train_samples"],
            "train_images": prep["train_images"],
            "eval_samples": scores["eval_samples"],
            "seed": plan["seed"],
            "learning_rate": plan["learning_rate"],
            "schedule": f"cosine, {WARMUP_RATIO:.0%} warm-up (rounded to whole steps), AdamW, "
                        "grad-norm 1.0",
            "lora": {**LORA, "target_modules": prep["target_modules"]},
            "trl_loss_tokens": "assistant only" if plan["trl_assistant_only_loss"]
            else "all non-padding tokens (TRL's default)",
            "torch_threads": {name: single[name][0]["torch_threads"] for name in FRAMEWORKS},
            "modes": plan["modes"],
            "timing": TIMING,
        },
    }
    figures = {}
    for mode in plan["modes"]:
        figures[mode] = {name: {**best_of(plan, mode, runs[mode][name]),
                                "answer_loss": scores[mode][name]} for name in FRAMEWORKS}
    out.update(figures["single_row"])
    out["base_answer_loss"] = scores["base"]
    out.update(compare(figures["single_row"], "samples"))
    dvlm, trl = out["domainvlm"], out["trl"]
    goals = {
        f"speedup_ge_{GOAL_SPEEDUP}": out["speedup"] >= GOAL_SPEEDUP,
        "answer_loss_le_trl": dvlm["answer_loss"] <= trl["answer_loss"] * (1 + LOSS_TOLERANCE),
        "rss_not_higher": out["rss_ratio"] <= 1.0,
    }
    out["goal_met"] = {**goals, "all": all(goals.values())}
    if "packed_questions" in figures:
        packed = figures["packed_questions"]
        out["packed_questions"] = {
            "what": f"domainvlm --pack-questions, {prep['images_per_step']} image(s) with all "
                    "their questions per step, each image's tokens once; TRL one row per "
                    f"question, {plan['batch_size']} per step, assistant-only loss",
            "unit": "questions_per_s (supervised_tokens_per_s alike): both sides train the "
                    "same questions and the same answer tokens (checked), in a different "
                    "number of steps",
            "images_per_step": prep["images_per_step"],
            "equal_work": {"questions": packed["trl"]["questions"],
                           "supervised_tokens": packed["trl"]["supervised_tokens"]},
            **packed,
            **compare(packed, "questions"),
        }
    if "bf16" in figures:
        half = figures["bf16"]
        for name in FRAMEWORKS:
            half[name]["vs_float32"] = round(half[name]["samples_per_s"]
                                             / out[name]["samples_per_s"], 3)
        out["bf16"] = {
            "what": f"single_row with bf16 autocast, {plan['modes']['bf16']['steps']} steps on "
                    "the head of its training rows: domainvlm mixed_precision bf16, TRL "
                    "bf16=True; float32 weights, bf16 matmuls (matmul_dtype)",
            "cpu": prep["cpu"],
            **half,
            **compare(half, "samples"),
        }
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["wall_s"] = round(wall, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    keep = args.workdir is not None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="dvlm-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        plan = make_plan(args, workdir)
        plan_path = workdir / "plan.json"
        plan_path.write_text(json.dumps(plan, indent=2))
        env = worker_env(workdir)
        prep = run_worker("prepare", plan_path, env)
        runs = {mode: {name: [] for name in FRAMEWORKS} for mode in plan["modes"]}
        for repeat in range(args.repeats):  # alternate the order: A B, B A, ...
            for mode in plan["modes"]:
                for name in FRAMEWORKS[:: 1 if repeat % 2 == 0 else -1]:
                    runs[mode][name].append(run_worker(name, plan_path, env, mode,
                                                       workers.run_tag(mode, repeat)))
        check_equal_work(plan, runs)
        scores = run_worker("evaluate", plan_path, env)  # scores the adapters of repeat 0
        result = summarise(plan, prep, runs, scores, time.perf_counter() - started)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.output:
        from domainvlm.atomic import write_bytes

        write_bytes(args.output, (text + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
