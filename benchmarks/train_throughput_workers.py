#!/usr/bin/env python
"""The worker processes of benchmarks/train_throughput.py, one job each.

    train_throughput_workers.py KIND PLAN [--mode MODE --tag TAG]

KIND is `prepare` (model, data, sizes), `domainvlm` or `trl` (one training run in MODE), or
`evaluate` (answer loss of every mode's first adapters). Each writes `KIND[-TAG].json` beside
PLAN. Every training forward is counted on both sides the same way (`Tally`), so the parent can
check that both frameworks trained the same questions and, where TRL trains on answers only,
the same answer tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100  # the label both frameworks use for "not trained"
# TRL's assistant mask covers the characters inside {% generation %}; domainvlm trains every
# token after the prompt, which includes a lone " " token where the vocabulary has no " word"
# for the answer's first word ("ASSISTANT:", " ", "There"). Opening the span one character
# earlier renders the same text and makes TRL train exactly those tokens too.
ANSWER_SPAN = ("{{ 'ASSISTANT: ' }}{% generation %}{{ text",
               "{{ 'ASSISTANT:' }}{% generation %}{{ ' ' + text")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def peak_rss_mb() -> float:
    """This process's high-water resident set so far (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


class Tally:
    """What the training forwards so far supervised, counted from their labels (B, L): answer
    tokens (labels past the first that are not ignored: position t predicts t+1), questions (one
    contiguous run of them per answer, packed or not), sequences and input positions (B x L,
    padding included); and the dtype a LoRA matmul ran in (bfloat16 under autocast)."""

    def __init__(self) -> None:
        self.questions = self.tokens = self.sequences = self.positions = 0
        self.matmul_dtypes: set[str] = set()
        self._watched = False
        self.step_ends: list[float] = []
        self.step_questions: list[int] = []
        self.step_tokens: list[int] = []

    def count(self, model: Any, labels: Any) -> None:
        if not self._watched:
            lora_a = next((m for name, m in model.named_modules()
                           if name.endswith("lora_A.default")), None)
            if lora_a is None:
                raise RuntimeError("no LoRA layer (lora_A.default) in the trained model")
            lora_a.register_forward_hook(
                lambda _m, _i, out: self.matmul_dtypes.add(str(out.dtype).removeprefix("torch.")))
            self._watched = True
        trained = labels[:, 1:] != IGNORE_INDEX  # (B, L-1)
        self.tokens += int(trained.sum())
        self.questions += int(trained[:, 0].sum() + (trained[:, 1:] & ~trained[:, :-1]).sum())
        self.sequences += labels.shape[0]
        self.positions += labels.numel()

    def step_end(self) -> None:
        self.step_ends.append(time.perf_counter())
        self.step_questions.append(self.questions)
        self.step_tokens.append(self.tokens)

    def figures(self) -> dict[str, Any]:
        return {"step_ends": self.step_ends, "step_questions": self.step_questions,
                "step_supervised_tokens": self.step_tokens, "questions": self.questions,
                "supervised_tokens": self.tokens, "sequences": self.sequences,
                "input_positions": self.positions, "steps": len(self.step_ends),
                "matmul_dtype": "/".join(sorted(self.matmul_dtypes))}


def cpu_bf16() -> dict[str, Any]:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16, AMX, Arm BF16) or torch
    emulates it, from torch's own CPU checks and the kernel's CPU flags."""
    import torch

    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    found = {key: bool(getattr(torch.cpu, name, lambda: False)()) for key, name in checks.items()}
    bf16_flags = sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), **found,
            "cpu_flags": bf16_flags, "native_bf16": any(found.values()) or bool(bf16_flags)}


def prepare(plan: dict[str, Any], mode: str | None) -> dict[str, Any]:
    """Build the model and data set once; every run reads the same files."""
    from transformers import AutoModelForImageTextToText

    from domainvlm.nano.shapes_world import write_shapes_dataset
    from domainvlm.tiny import build_tiny_model
    from domainvlm.train.lora import select_targets

    model_dir = build_tiny_model("llava", plan["model"], seed=plan["seed"],
                                 image_size=plan["image_size"], size=plan["model_size"])
    n_images = plan["train_images"] + plan["eval_images"]
    paths = write_shapes_dataset(plan["data"], n_images=n_images, seed=plan["seed"],
                                 image_size=plan["image_size"],
                                 eval_fraction=plan["eval_images"] / n_images)
    for split, keep in (("train", plan["steps"] * plan["batch_size"]),
                        ("eval", plan["eval_samples"])):
        rows = read_jsonl(paths[split])[:keep]
        paths[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
    train = read_jsonl(paths["train"])
    for mode in plan["modes"].values():  # each mode's file: its steps of full row batches
        rows = train[:mode["steps"] * plan["batch_size"]]
        if len(rows) != mode["steps"] * plan["batch_size"]:
            raise RuntimeError(f"{len(rows)} training rows for {mode['steps']} steps of "
                               f"{plan['batch_size']}: the scenes hold fewer questions than "
                               "MIN_QA_PER_IMAGE in train_throughput.py assumes")
        (Path(plan["data"]) / mode["train_file"]).write_text(
            "".join(json.dumps(row) + "\n" for row in rows))
    images = len({row["image"] for row in train})
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    vision = model.config.vision_config
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_tokens": (vision.image_size // vision.patch_size) ** 2,
        "train_samples": len(train),
        "train_images": images,
        # --pack-questions counts images per step: as many as hold about one row batch.
        "images_per_step": max(1, round(plan["batch_size"] * images / len(train))),
        "target_modules": select_targets(model, ["language"]),  # domainvlm's default targets
        "cpu": cpu_bf16(),
    }


def train_domainvlm(plan: dict[str, Any], mode: str) -> dict[str, Any]:
    import torch

    from domainvlm.progress import Reporter
    from domainvlm.train import loop
    from domainvlm.train.config import FinetuneConfig

    settings = plan["modes"][mode]
    workdir = Path(plan["workdir"])
    prep = json.loads((workdir / "prepare.json").read_text())
    tally = Tally()
    token_loss_sum = loop.token_loss_sum

    def counted_loss_sum(model: Any, inputs: dict[str, Any]) -> Any:
        tally.count(model, inputs["labels"])
        return token_loss_sum(model, inputs)

    loop.token_loss_sum = counted_loss_sum  # the loop's one loss call: count, then the real one

    class StepClock(Reporter):
        """A silent reporter that stamps the end of every optimizer step."""

        def __init__(self) -> None:
            super().__init__(enabled=False)

        @contextlib.contextmanager
        def task(self, description: str, total: int, completed: int = 0):
            def advance(n: int = 1, **fields: Any) -> None:
                if description == "fine-tuning":
                    tally.step_end()

            yield advance

    packed = settings["pack_questions"]
    cfg = FinetuneConfig(
        model=plan["model"],
        data=str(Path(plan["data"]) / settings["train_file"]),
        output=workdir / f"{plan['tag']}-run",
        lora_r=plan["lora"]["r"],
        lora_alpha=plan["lora"]["alpha"],
        lora_dropout=plan["lora"]["dropout"],
        batch_size=prep["images_per_step"] if packed else plan["batch_size"],
        epochs=1,  # the training set is one epoch of full row batches
        max_steps=None if packed else settings["steps"],
        learning_rate=plan["learning_rate"],
        warmup_ratio=plan["warmup_ratio"],
        schedule="cosine",
        max_grad_norm=1.0,
        seed=plan["seed"],
        mixed_precision="bf16" if settings["bf16"] else "no",
        group_by_length=True,
        pack_questions=packed,
        vision_cache="auto",
        cache_dir=workdir / f"{plan['tag']}-cache",  # fresh: nothing from an earlier run
    )
    started = time.perf_counter()
    result = loop.finetune(cfg, reporter=StepClock())
    end_to_end = time.perf_counter() - started
    rss = peak_rss_mb()
    return {
        **tally.figures(),
        "end_to_end_s": round(end_to_end, 2),
        "peak_rss_mb": rss,
        "adapter": str(result.adapter),
        "trainable_parameters": _adapter_parameters(result.adapter),
        "torch_threads": torch.get_num_threads(),
    }


def train_trl(plan: dict[str, Any], mode: str) -> dict[str, Any]:
    import torch
    from datasets import Dataset, Image, List
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    settings = plan["modes"][mode]
    tally = Tally()

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            tally.step_end()

    class CountingSFTTrainer(SFTTrainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any,
                         **kwargs: Any) -> Any:
            tally.count(model, inputs["labels"])
            return super().compute_loss(model, inputs, *args, **kwargs)

    workdir, data = Path(plan["workdir"]), Path(plan["data"])
    prep = json.loads((workdir / "prepare.json").read_text())
    started = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(plan["model"], dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(plan["model"])
    if settings["trl_assistant_only_loss"]:
        processor.chat_template = answer_span_template(processor.chat_template)
    rows = read_jsonl(data / settings["train_file"])
    # TRL's conversational VLM format: string contents; TRL inserts the image placeholder.
    # TRL cannot pack images: one row per question, always.
    dataset = Dataset.from_dict({
        "images": [[str(data / row["image"])] for row in rows],
        "messages": [[{"role": "user", "content": row["question"]},
                      {"role": "assistant", "content": row["answer"]}] for row in rows],
    }).cast_column("images", List(Image()))
    args = SFTConfig(
        output_dir=str(workdir / f"{plan['tag']}-run"),
        max_steps=settings["steps"],
        per_device_train_batch_size=plan["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=plan["learning_rate"],
        lr_scheduler_type="cosine",
        warmup_steps=round(plan["warmup_ratio"] * settings["steps"]),  # as domainvlm rounds
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=plan["seed"],
        bf16=settings["bf16"],  # TRL defaults to bf16; domainvlm trains float32 on a CPU
        use_cpu=not torch.cuda.is_available(),  # as domainvlm picks; bf16 on a CPU needs it
        gradient_checkpointing=False,  # TRL defaults to on; domainvlm to off
        assistant_only_loss=settings["trl_assistant_only_loss"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    peft_config = LoraConfig(r=plan["lora"]["r"], lora_alpha=plan["lora"]["alpha"],
                             lora_dropout=plan["lora"]["dropout"],
                             target_modules=prep["target_modules"], bias="none")
    trainer = CountingSFTTrainer(model=model, args=args, train_dataset=dataset,
                                 processing_class=processor, peft_config=peft_config,
                                 callbacks=[StepClock()])
    trainer.train()
    adapter = workdir / f"{plan['tag']}-run" / "adapter"
    trainer.save_model(str(adapter))
    end_to_end = time.perf_counter() - started
    rss = peak_rss_mb()
    return {
        **tally.figures(),
        "end_to_end_s": round(end_to_end, 2),
        "peak_rss_mb": rss,
        "adapter": str(adapter),
        "trainable_parameters": _adapter_parameters(adapter),
        "torch_threads": torch.get_num_threads(),
    }


def answer_span_template(template: str) -> str:
    """The tiny LLaVA's chat template with its {% generation %} span opened one character
    earlier (see ANSWER_SPAN); the same text either way."""
    old, new = ANSWER_SPAN
    if template.count(old) != 1:
        raise RuntimeError(f"the tiny LLaVA's chat template no longer holds {old!r} once; "
                           "update ANSWER_SPAN in benchmarks/train_throughput_workers.py")
    return template.replace(old, new)


def _adapter_parameters(folder: Path) -> int:
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / "adapter_model.safetensors"))
    return sum(tensor.numel() for tensor in weights.values())


def evaluate(plan: dict[str, Any], mode: str | None) -> dict[str, Any]:
    """Mean answer-token loss of the base model and of each mode's first adapters, scored the
    same way for all: domainvlm's encoding and masking, float32, no autocast."""
    import torch
    from peft import PeftModel

    from domainvlm.data.collate import collate
    from domainvlm.data.encode import encode_records
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
    for run_mode in plan["modes"]:
        for name in ("domainvlm", "trl"):
            result = json.loads((workdir / f"{name}-{run_tag(run_mode, 0)}.json").read_text())
            base = load_model(plan["model"], dtype="float32", device="cpu").model
            scores.setdefault(run_mode, {})[name] = answer_loss(
                PeftModel.from_pretrained(base, result["adapter"]))
    scores["eval_samples"] = len(samples)
    scores["sequence_length"] = {"min": min(lengths), "max": max(lengths),
                                 "mean": round(sum(lengths) / len(lengths), 1)}
    return scores


def run_tag(mode: str, repeat: int) -> str:
    """Run names: the single-row runs keep their plain repeat number (domainvlm-0-run)."""
    return str(repeat) if mode == "single_row" else f"{mode}-{repeat}"


WORKERS = {"prepare": prepare, "domainvlm": train_domainvlm, "trl": train_trl,
           "evaluate": evaluate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=WORKERS)
    parser.add_argument("plan", type=Path)
    parser.add_argument("--mode")
    parser.add_argument("--tag")
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    name = f"{args.kind}-{args.tag}" if args.tag else args.kind
    result = WORKERS[args.kind]({**plan, "tag": name}, args.mode)
    (args.plan.parent / f"{name}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
