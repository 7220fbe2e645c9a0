#!/usr/bin/env python
"""Training throughput, peak memory and answer loss: domainvlm against TRL's SFTTrainer.

Both frameworks LoRA-fine-tune the same tiny random LLaVA (CLIP vision + Llama LM, ~4.8 M
parameters, 64x64 images in 8 px patches = 64 image tokens, ~80-token sequences) on the same
coloured-shapes VQA set, for the same steps, batch size, learning-rate schedule and seed, with
LoRA r=8, alpha=16, dropout 0 on the same language-model Linear layers. Each framework trains
in its own subprocess so its peak RSS is its own; a fourth subprocess then scores both final
adapters on the same held-out samples with domainvlm's answer-only labels. One JSON object goes
to stdout; see benchmarks/README.md for what each figure means.

    .venv/bin/python benchmarks/train_throughput.py          # 40 steps of 16, twice each: ~2.5 min
    .venv/bin/python benchmarks/train_throughput.py --quick  # smoke test: about a minute
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

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("domainvlm", "trl")
MIN_QA_PER_IMAGE = 7  # domainvlm.nano.shapes_world.scene_questions asks 7 to 10 per scene
IMAGE_SIZE = 64
MODEL_SIZE = "small"  # domainvlm.models.random_init.SIZES: ~4.8 M parameters, patch 8 at 64 px
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}
WARMUP_RATIO = 0.03  # domainvlm's default; TRL gets the same number of warm-up steps
GOAL_SPEEDUP = 1.5
LOSS_TOLERANCE = 0.02  # domainvlm's answer loss may exceed TRL's by this fraction
POLL_SECONDS = 0.05
TIMING = ("samples_per_s: samples in optimizer steps 2..N over the time from the end of step 1 "
          "to the end of step N (step 1 is warm-up); each step's data loading, collation and "
          "logging are inside it. samples_per_s_median_step: batch size over the median step "
          "time (robust to bursts of load). end_to_end_s: model load + data preparation + "
          "training + adapter save. Best of the repeats for each.")


# --- orchestration (stdlib + psutil only: the parent stays small, see peak RSS notes) ----------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per framework")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-samples", type=int, default=80,
                        help="held-out questions scored after training")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2,
                        help="train each framework this many times, alternating which goes "
                             "first, and keep each one's best throughput (shared CPUs are noisy)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 3 steps of batch 4, 10 eval samples")
    parser.add_argument("--trl-assistant-only-loss", action="store_true",
                        help="train TRL on assistant tokens only (default: TRL's default, "
                             "which also trains on prompt and image tokens)")
    parser.add_argument("--workdir", type=Path,
                        help="keep model, data, adapters and worker logs here")
    parser.add_argument("--output", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--worker", choices=("prepare", *FRAMEWORKS, "evaluate"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.eval_samples, args.repeats = 3, 4, 10, 1
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (step 1 is the untimed warm-up)")
    return args


def make_plan(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Sizes and paths every worker reads. The train set is exactly `steps` full batches."""
    batch = args.batch_size
    train_images = math.ceil(args.steps * batch / MIN_QA_PER_IMAGE)
    eval_images = math.ceil(args.eval_samples / MIN_QA_PER_IMAGE)
    return {
        "workdir": str(workdir),
        "model": str(workdir / "model"),
        "data": str(workdir / "data"),
        "train_images": train_images,
        "eval_images": eval_images,
        "eval_samples": args.eval_samples,
        "steps": args.steps,
        "batch_size": batch,
        "learning_rate": args.learning_rate,
        "warmup_steps": round(WARMUP_RATIO * args.steps),  # as domainvlm rounds it
        "seed": args.seed,
        "repeats": args.repeats,
        "trl_assistant_only_loss": args.trl_assistant_only_loss,
    }


def worker_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               DOMAINVLM_CACHE=str(workdir / "domainvlm-cache"),  # fresh: no processed-data hits
               HF_DATASETS_CACHE=str(workdir / "hf-datasets"), PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_worker(kind: str, plan_path: Path, env: dict[str, str],
               tag: str | None = None) -> dict[str, Any]:
    """Run one worker subprocess; its JSON result plus `peak_rss_mb_polled` (psutil, 50 ms)."""
    import psutil

    workdir = plan_path.parent
    name = f"{kind}-{tag}" if tag else kind
    log = workdir / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
               "--plan", str(plan_path), *(["--tag", tag] if tag else [])]
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


def throughputs(run: dict[str, Any], batch_size: int) -> dict[str, float]:
    """Steady-state samples/s over steps 2..N (mean, and from the median step time)."""
    ends = run["step_ends"]
    if len(ends) < 2:
        raise RuntimeError(f"need at least 2 timed steps, got {len(ends)}")
    steps = [ends[i + 1] - ends[i] for i in range(len(ends) - 1)]
    return {"samples_per_s": round(len(steps) * batch_size / (ends[-1] - ends[0]), 2),
            "samples_per_s_median_step": round(batch_size / statistics.median(steps), 2)}


def best_of(plan: dict[str, Any], repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One framework's figures over its repeats: best speed, highest memory."""
    speeds = [throughputs(run, plan["batch_size"]) for run in repeats]
    samples = plan["steps"] * plan["batch_size"]
    end_to_end = min(run["end_to_end_s"] for run in repeats)
    return {
        "samples_per_s": max(s["samples_per_s"] for s in speeds),
        "samples_per_s_median_step": max(s["samples_per_s_median_step"] for s in speeds),
        "samples_per_s_each_repeat": [s["samples_per_s"] for s in speeds],
        "end_to_end_s": end_to_end,
        "end_to_end_samples_per_s": round(samples / end_to_end, 2),
        "peak_rss_mb": max(run["peak_rss_mb"] for run in repeats),
        "peak_rss_mb_polled": max(run["peak_rss_mb_polled"] for run in repeats),
        "trainable_parameters": repeats[0]["trainable_parameters"],
        "torch_threads": sorted({run["torch_threads"] for run in repeats}),
    }


def summarise(plan: dict[str, Any], prep: dict[str, Any],
              runs: dict[str, list[dict[str, Any]]], scores: dict[str, Any],
              wall: float) -> dict[str, Any]:
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
            "eval_samples": scores["eval_samples"],
            "seed": plan["seed"],
            "learning_rate": plan["learning_rate"],
            "schedule": f"cosine, {plan['warmup_steps']} warm-up step(s), AdamW, grad-norm 1.0",
            "lora": {**LORA, "target_modules": prep["target_modules"]},
            "trl_loss_tokens": "assistant only" if plan["trl_assistant_only_loss"]
            else "all non-padding tokens (TRL's default)",
            "torch_threads": {name: runs[name][0]["torch_threads"] for name in FRAMEWORKS},
            "timing": TIMING,
        },
    }
    for name in FRAMEWORKS:
        figures = best_of(plan, runs[name])
        del figures["torch_threads"]
        out[name] = {**figures, "answer_loss": scores[name]}
    dvlm, trl = out["domainvlm"], out["trl"]
    out["base_answer_loss"] = scores["base"]
    out["speedup"] = round(dvlm["samples_per_s"] / trl["samples_per_s"], 3)
    out["speedup_median_step"] = round(dvlm["samples_per_s_median_step"]
                                       / trl["samples_per_s_median_step"], 3)
    out["speedup_end_to_end"] = round(trl["end_to_end_s"] / dvlm["end_to_end_s"], 3)
    out["rss_ratio"] = round(dvlm["peak_rss_mb"] / trl["peak_rss_mb"], 3)
    goals = {
        f"speedup_ge_{GOAL_SPEEDUP}": out["speedup"] >= GOAL_SPEEDUP,
        "answer_loss_le_trl": dvlm["answer_loss"] <= trl["answer_loss"] * (1 + LOSS_TOLERANCE),
        "rss_not_higher": out["rss_ratio"] <= 1.0,
    }
    out["goal_met"] = {**goals, "all": all(goals.values())}
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["wall_s"] = round(wall, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        plan = json.loads(args.plan.read_text())
        name = f"{args.worker}-{args.tag}" if args.tag else args.worker
        result = WORKERS[args.worker]({**plan, "tag": name})
        (args.plan.parent / f"{name}.json").write_text(json.dumps(result, indent=2))
        return 0

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
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in FRAMEWORKS}
        for repeat in range(args.repeats):  # alternate the order: A B, B A, ...
            for name in FRAMEWORKS[:: 1 if repeat % 2 == 0 else -1]:
                runs[name].append(run_worker(name, plan_path, env, tag=str(repeat)))
        scores = run_worker("evaluate", plan_path, env)  # scores the adapters of repeat 0
        result = summarise(plan, prep, runs, scores, time.perf_counter() - started)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


# --- workers (each in its own process) ----------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's high-water resident set so far (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prepare(plan: dict[str, Any]) -> dict[str, Any]:
    """Build the model and data set once; both frameworks read the same files."""
    from transformers import AutoModelForImageTextToText

    from domainvlm.nano.shapes_world import write_shapes_dataset
    from domainvlm.tiny import build_tiny_model
    from domainvlm.train.lora import select_targets

    model_dir = build_tiny_model("llava", plan["model"], seed=plan["seed"],
                                 image_size=IMAGE_SIZE, size=MODEL_SIZE)
    n_images = plan["train_images"] + plan["eval_images"]
    paths = write_shapes_dataset(plan["data"], n_images=n_images, seed=plan["seed"],
                                 image_size=IMAGE_SIZE,
                                 eval_fraction=plan["eval_images"] / n_images)
    for split, keep in (("train", plan["steps"] * plan["batch_size"]),
                        ("eval", plan["eval_samples"])):
        rows = read_jsonl(paths[split])[:keep]
        paths[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    vision = model.config.vision_config
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_tokens": (vision.image_size // vision.patch_size) ** 2,
        "train_samples": len(read_jsonl(paths["train"])),
        "target_modules": select_targets(model, ["language"]),  # domainvlm's default targets
    }


def train_domainvlm(plan: dict[str, Any]) -> dict[str, Any]:
    import torch

    from domainvlm.progress import Reporter
    from domainvlm.train.config import FinetuneConfig
    from domainvlm.train.loop import finetune

    class StepClock(Reporter):
        """A silent reporter that stamps the end of every optimizer step."""

        def __init__(self) -> None:
            super().__init__(enabled=False)
            self.step_ends: list[float] = []

        @contextlib.contextmanager
        def task(self, description: str, total: int, completed: int = 0):
            def advance(n: int = 1, **fields: Any) -> None:
                if description == "fine-tuning":
                    self.step_ends.append(time.perf_counter())

            yield advance

    workdir = Path(plan["workdir"])
    cfg = FinetuneConfig(
        model=plan["model"],
        data=str(Path(plan["data"]) / "train.jsonl"),
        output=workdir / f"{plan['tag']}-run",
        lora_r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        batch_size=plan["batch_size"],
        max_steps=plan["steps"],
        learning_rate=plan["learning_rate"],
        warmup_ratio=WARMUP_RATIO,
        schedule="cosine",
        max_grad_norm=1.0,
        seed=plan["seed"],
        group_by_length=True,
        vision_cache="auto",
        cache_dir=workdir / f"{plan['tag']}-cache",  # fresh: nothing from an earlier run
    )
    clock = StepClock()
    started = time.perf_counter()
    result = finetune(cfg, reporter=clock)
    end_to_end = time.perf_counter() - started
    rss = peak_rss_mb()
    trainable = _adapter_parameters(result.adapter)
    return {
        "step_ends": clock.step_ends,
        "end_to_end_s": round(end_to_end, 2),
        "peak_rss_mb": rss,
        "adapter": str(result.adapter),
        "trainable_parameters": trainable,
        "torch_threads": torch.get_num_threads(),
    }


def train_trl(plan: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset, Image, List
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.step_ends: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_ends.append(time.perf_counter())

    workdir, data = Path(plan["workdir"]), Path(plan["data"])
    prep = json.loads((workdir / "prepare.json").read_text())
    clock = StepClock()
    started = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(plan["model"], dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(plan["model"])
    rows = read_jsonl(data / "train.jsonl")
    # TRL's conversational VLM format: string contents; TRL inserts the image placeholder.
    dataset = Dataset.from_dict({
        "images": [[str(data / row["image"])] for row in rows],
        "messages": [[{"role": "user", "content": row["question"]},
                      {"role": "assistant", "content": row["answer"]}] for row in rows],
    }).cast_column("images", List(Image()))
    args = SFTConfig(
        output_dir=str(workdir / f"{plan['tag']}-run"),
        max_steps=plan["steps"],
        per_device_train_batch_size=plan["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=plan["learning_rate"],
        lr_scheduler_type="cosine",
        warmup_steps=plan["warmup_steps"],
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=plan["seed"],
        bf16=False,  # TRL defaults to bf16; domainvlm trains float32 on a CPU
        gradient_checkpointing=False,  # TRL defaults to on; domainvlm to off
        assistant_only_loss=plan["trl_assistant_only_loss"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=prep["target_modules"], bias="none")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=processor, peft_config=peft_config,
                         callbacks=[clock])
    trainer.train()
    adapter = workdir / f"{plan['tag']}-run" / "adapter"
    trainer.save_model(str(adapter))
    end_to_end = time.perf_counter() - started
    rss = peak_rss_mb()
    return {
        "step_ends": clock.step_ends,
        "end_to_end_s": round(end_to_end, 2),
        "peak_rss_mb": rss,
        "adapter": str(adapter),
        "trainable_parameters": _adapter_parameters(adapter),
        "torch_threads": torch.get_num_threads(),
    }


def _adapter_parameters(folder: Path) -> int:
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / "adapter_model.safetensors"))
    return sum(tensor.numel() for tensor in weights.values())


def evaluate(plan: dict[str, Any]) -> dict[str, Any]:
    """Mean answer-token loss of the base model and of each adapter, domainvlm's masking."""
    import torch
    from peft import PeftModel

    from domainvlm.data.collate import collate
    from domainvlm.data.encode import IGNORE_INDEX, encode_records
    from domainvlm.data.prompting import PromptFormat
    from domainvlm.data.records import load_records
    from domainvlm.loading import load_model
    from domainvlm.train.loop import token_loss_sum

    workdir = Path(plan["workdir"])
    loaded = load_model(plan["model"], dtype="float32", device="cpu")
    fmt = PromptFormat.from_processor(loaded.processor, loaded.family)
    records = load_records(Path(plan["data"]) / "eval.jsonl")
    samples = encode_records(records, fmt, max_length=2048)
    pad_id = loaded.processor.tokenizer.pad_token_id
    lengths = [len(s["input_ids"]) for s in samples]

    def answer_loss(model: Any) -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(samples), plan["batch_size"]):
                inputs = collate(samples[start:start + plan["batch_size"]], pad_id)
                count += int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
                total += float(token_loss_sum(model, inputs))
        return round(total / count, 4)

    scores: dict[str, Any] = {"base": answer_loss(loaded.model)}
    for name in FRAMEWORKS:
        adapter = json.loads((workdir / f"{name}-0.json").read_text())["adapter"]
        base = load_model(plan["model"], dtype="float32", device="cpu").model
        scores[name] = answer_loss(PeftModel.from_pretrained(base, adapter))
    scores["eval_samples"] = len(samples)
    scores["sequence_length"] = {"min": min(lengths), "max": max(lengths),
                                 "mean": round(sum(lengths) / len(lengths), 1)}
    return scores


WORKERS = {"prepare": prepare, "domainvlm": train_domainvlm, "trl": train_trl,
           "evaluate": evaluate}

if __name__ == "__main__":
    sys.exit(main())
