"""The fine-tuning recipe: setup -> train -> save, readable top to bottom.

Runs unchanged on one CPU, one GPU or several processes under `accelerate launch`. The loss is
the sum of answer-token cross-entropies divided by the number of answer tokens in the whole
global batch, so 1 process and N processes with the same global batch take the same steps.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainvlm.atomic import write_json
from domainvlm.base_identity import BaseIdentity, identify, write_record
from domainvlm.compat import enable_activation_checkpointing
from domainvlm.data.cache import load_or_encode
from domainvlm.data.collate import collate
from domainvlm.data.encode import IGNORE_INDEX, image_token_id, pad_token_id
from domainvlm.data.images import image_digest
from domainvlm.data.packing import attention_of, check_packable, pack_by_image, with_segment_mask
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import load_records
from domainvlm.data.views import training_views, write_views
from domainvlm.errors import ConfigError
from domainvlm.loading import load_model
from domainvlm.models.parts import COMPONENT_NAMES, part_of
from domainvlm.models.vision_cache import (
    TowerMemo,
    attach_image_features,
    encoder_outputs,
    feature_bytes,
)
from domainvlm.progress import Reporter
from domainvlm.train import checkpoint as ckpt
from domainvlm.train.batching import epoch_batches, micro_batches, repeated
from domainvlm.train.config import FinetuneConfig
from domainvlm.train.lora import (
    apply_lora,
    freeze_components,
    may_leave_trainables_unused,
    parameter_report,
    train_mode,
    untrained_modules,
)
from domainvlm.train.run_dir import check_output, claim_output, mark_finished
from domainvlm.train.stops import check_finite, recorded_stops


@dataclass
class RunResult:
    """What `finetune` made: the run folder, the adapter (or with method full, the model)
    folder, and how the run went (losses are answer-token cross-entropies)."""

    output: Path
    adapter: Path
    steps: int
    final_loss: float | None
    best_eval_loss: float | None
    seconds: float
    samples_per_second: float


def finetune(cfg: FinetuneConfig, reporter: Reporter | None = None) -> RunResult:
    """Fine-tune `cfg.model` on `cfg.data`; writes `cfg.output / "adapter"` (PEFT format), or
    with `method="full"` the whole model to `cfg.output / "model"`, beside checkpoints, logs
    and run.json. Ctrl-C raises RunInterrupted; `resume=True` continues from a checkpoint.

    Example::

        from domainvlm import FinetuneConfig, finetune

        result = finetune(FinetuneConfig(model="llava-hf/llava-1.5-7b-hf", data="train.jsonl",
                                         output="runs/chest", epochs=3))
        print(result.adapter, result.steps, result.final_loss)
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    # Whether DDP must expect parameters without gradients is known once the model is set up
    # (below); accelerate reads this handler only in `prepare`.
    ddp = DistributedDataParallelKwargs()
    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg.mixed_precision),
                              cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
    reporter = reporter or Reporter(enabled=accelerator.is_main_process)
    world, rank = accelerator.num_processes, accelerator.process_index
    accumulation = _accumulation(cfg, world)
    set_seed(cfg.seed)

    # --- setup -------------------------------------------------------------------------------
    check_output(cfg.output, cfg.fingerprint_fields(), resume=cfg.resume,
                 overwrite=cfg.overwrite)
    last = ckpt.latest_checkpoint(cfg.output / "checkpoints") if cfg.resume else None

    loaded = load_model(cfg.model, dtype=cfg.dtype, device=str(accelerator.device),
                        quantization="4bit" if cfg.method == "qlora" else None,
                        resolution=cfg.resolution)
    model, processor, family = loaded.model, loaded.processor, loaded.family
    fmt = PromptFormat.from_processor(processor, family)
    pad_id = pad_token_id(processor)
    if cfg.pack_questions:
        check_packable(family, attention_of(model))
    with accelerator.main_process_first():
        train, repeats, rows = _samples(cfg.data, fmt, cfg, reporter, "train")
        evals = (_samples(cfg.eval_data, fmt, cfg, reporter, "eval", repeat=False)[0]
                 if cfg.eval_data else [])
    views = training_views(cfg.data)  # how scans became the training images, if recorded

    # Inputs are valid: only now does the output folder become this run's.
    base = None  # what an adapter is checked against when it is loaded (not for `full`)
    if accelerator.is_main_process:
        claim_output(cfg.output, cfg.fingerprint_fields(), overwrite=cfg.overwrite)
        base = identify(cfg.model) if cfg.method != "full" else None
    accelerator.wait_for_everyone()

    trained = (set(COMPONENT_NAMES) - set(cfg.frozen) if cfg.method == "full"
               else {*cfg.lora_targets, *cfg.train_fully})
    features_fixed = not {"vision", "projector"} & trained
    img_id = image_token_id(processor)
    memo = None
    if (cfg.vision_cache == "auto" and features_fixed and family.image_features_as
            and img_id is not None
            and feature_bytes(train + evals, img_id, model) < cfg.vision_cache_max_gb * 2**30):
        with reporter.task("caching image features", total=len(train) + len(evals)) as advance:
            attach_image_features(model, train + evals, img_id, pad_id, progress=advance)
    elif cfg.vision_cache == "auto" and "vision" not in trained and family.tower_rows_per_image:
        memo = TowerMemo(part_of(model, "vision"), cfg.vision_cache_max_gb * 2**30)

    model.config.use_cache = False
    model.config.get_text_config(decoder=True).use_cache = False  # the LM reads its own
    if cfg.method == "full":
        model.requires_grad_(True)
        freeze_components(model, cfg.frozen)
    else:
        model = apply_lora(model, method=cfg.method, r=cfg.lora_r, alpha=cfg.alpha,
                           dropout=cfg.lora_dropout, components=cfg.lora_targets,
                           fully=cfg.train_fully)
    frozen_parts = untrained_modules(model)
    ddp.find_unused_parameters = may_leave_trainables_unused(model)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    reporter.parameters(parameter_report(model))

    plan = repeated(repeats)  # an epoch: every sample, some more than once
    steps_per_epoch = math.ceil(len(plan) / cfg.batch_size)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    scheduler = _scheduler(cfg, optimizer, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = ckpt.TrainState()
    if last is not None:
        _load_weights(accelerator.unwrap_model(model), last)
        state = ckpt.load_trainer_state(last, optimizer, scheduler)
        ckpt.set_rng_state(torch.load(last / f"rng-{rank}.pt", weights_only=False))
        reporter.line(f"resuming from {last.name} (step {state.step} of {total_steps})")

    writer = _tensorboard(cfg.output / "logs") if accelerator.is_main_process else None
    lengths = [len(train[i]["input_ids"]) for i in plan]

    # --- train -------------------------------------------------------------------------------
    train_mode(model, frozen_parts)
    started, seen, last_loss = time.perf_counter(), 0, None
    try:
        with (recorded_stops(cfg.output, state, total_steps, accelerator.is_main_process),
              memo or contextlib.nullcontext(),
              reporter.task("fine-tuning", total=total_steps, completed=state.step) as advance):
            while state.step < total_steps:
                epoch, index = divmod(state.step, steps_per_epoch)
                batch_ids = [plan[j] for j in epoch_batches(
                    lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)[index]]
                loss, grad_norm = _train_step(model, optimizer, accelerator, train, batch_ids,
                                              world, rank, accumulation, pad_id, family,
                                              cfg.max_grad_norm)
                check_finite(state.step + 1, total_steps, loss, grad_norm, output=cfg.output,
                             learning_rate=cfg.learning_rate)
                scheduler.step()
                state.step += 1
                seen += sum(rows[i] for i in batch_ids)
                last_loss = loss
                record = {"step": state.step, "loss": loss, "lr": scheduler.get_last_lr()[0]}
                if evals and (state.step == total_steps
                              or (cfg.eval_every and state.step % cfg.eval_every == 0)):
                    record["eval_loss"] = evaluate_loss(model, evals, cfg.batch_size, pad_id,
                                                        family, accelerator)
                    train_mode(model, frozen_parts)
                    _keep_best(state, record, accelerator, model, processor, cfg.output, base,
                               views)
                state.history.append(record)
                _log(writer, record)
                advance(1, loss=loss)
                if (cfg.save_every and state.step % cfg.save_every == 0
                        and state.step < total_steps):
                    _save_checkpoint(cfg, accelerator, model, optimizer, scheduler, state, rank)
    finally:
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - started

    # --- save --------------------------------------------------------------------------------
    adapter = cfg.output / ("model" if cfg.method == "full" else "adapter")
    if accelerator.is_main_process:
        save_adapter(accelerator.unwrap_model(model), processor, adapter, base, views)
        summary = {"steps": state.step, "final_loss": last_loss,
                   "best_eval_loss": state.best_eval_loss, "best_step": state.best_step,
                   "seconds": round(elapsed, 3), "samples": seen,  # data rows, repeats counted
                   "samples_per_second": round(seen * 1.0 / elapsed, 3) if elapsed else None,
                   "world_size": world}
        if memo is not None:  # what the frozen tower really ran on, and what memory served
            summary["vision_tower_rows"] = {"computed": memo.computed, "served": memo.served}
        write_json(cfg.output / "history.json", state.history)
        mark_finished(cfg.output, summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return RunResult(cfg.output, adapter, state.step, last_loss, state.best_eval_loss, elapsed,
                     seen / elapsed if elapsed else 0.0)


def _train_step(model, optimizer, accelerator, samples, batch_ids, world, rank, accumulation,
                pad_id, family, max_grad_norm) -> tuple[float, float | None]:
    """One optimizer step over a global batch: the global mean answer-token loss and the
    gradient norm (None where it is not measured). A step whose loss or norm is not finite is
    not applied, so the weights stay those of the last good step."""
    import torch

    # The model predicts token t+1 from t, so the first label never counts.
    n_tokens = sum(int((samples[i]["labels"][1:] != IGNORE_INDEX).sum()) for i in batch_ids)
    chunks = micro_batches(batch_ids, world, rank, accumulation)
    loss_sum = torch.zeros((), device=accelerator.device)
    for k, chunk in enumerate(chunks):
        if not chunk and world == 1:
            continue
        # An empty share (a small last batch) still joins DDP's all-reduce, with weight 0.
        weight = 1.0 if chunk else 0.0
        inputs = _to_device(collate([samples[i] for i in chunk or batch_ids[:1]], pad_id),
                            accelerator.device, family)
        sync = k == len(chunks) - 1
        context = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
        with context, accelerator.autocast():
            total = token_loss_sum(model, inputs) * weight
            # DDP averages gradients over processes: scale so the result is sum / n_tokens.
            accelerator.backward(total * world / n_tokens)
        loss_sum += total.detach()
    norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm) if max_grad_norm \
        else None
    # fp16's gradient scaler expects inf norms now and then and skips those steps itself.
    if not isinstance(norm, torch.Tensor) or accelerator.scaler is not None:
        norm = None
    watched = accelerator.reduce(loss_sum, reduction="sum").reshape(1)
    if norm is not None:
        watched = torch.cat([watched, norm.detach().float().reshape(1).to(watched.device)])
    values = watched.tolist()  # the step's one device sync, as before
    loss, grad_norm = values[0] / n_tokens, (values[1] if norm is not None else None)
    if math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm)):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


def token_loss_sum(model, inputs: dict[str, Any]):
    """Summed cross-entropy over answer tokens.

    The LM head runs only where the next token is trained (`logits_to_keep` as a boolean mask),
    so the (B, L, V) logits tensor, the largest in a VLM step, is never built.
    """
    import torch
    import torch.nn.functional as F

    labels = inputs.pop("labels")  # (B, L)
    trained = labels[:, 1:] != IGNORE_INDEX  # (B, L-1): position t predicts token t+1
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = trained
    inputs = with_segment_mask(inputs, attention_of(model))
    logits = model(**inputs, logits_to_keep=keep).logits  # (N_answer, V)
    return F.cross_entropy(logits.float(), labels[:, 1:][trained], reduction="sum")


def evaluate_loss(model, samples, batch_size, pad_id, family, accelerator) -> float:
    """Mean answer-token loss over `samples` (every process computes all of it: eval is small)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            inputs = _to_device(collate(chunk, pad_id), accelerator.device, family)
            count += int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
            with accelerator.autocast():
                total += float(token_loss_sum(model, inputs))
    model.train(was_training)
    return total / max(count, 1)


def save_adapter(model, processor, folder: Path, base: BaseIdentity | None = None,
                 views: dict[str, Any] | None = None) -> None:
    """PEFT-format adapter + processor files (+ the identity of its base, and the view its
    training images were rendered with: `domainvlm.data.views`), published atomically."""
    import shutil

    temp = ckpt.temp_dir_for(folder)
    shutil.rmtree(temp, ignore_errors=True)
    try:
        model.save_pretrained(temp)
        processor.save_pretrained(temp)
        if base is not None:
            write_record(temp, base)
        if views is not None:
            write_views(temp, views)
        ckpt.publish(temp, folder)
    except BaseException:  # a full disk, say: no half adapter left behind
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _save_checkpoint(cfg, accelerator, model, optimizer, scheduler, state, rank) -> None:
    import torch

    root = cfg.output / "checkpoints"
    final = ckpt.checkpoint_dir(root, state.step)
    temp = ckpt.temp_dir_for(final)
    if accelerator.is_main_process:
        temp.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(temp)
    accelerator.wait_for_everyone()
    torch.save(ckpt.rng_state(), temp / f"rng-{rank}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # trainer_state.pt is written last: its presence marks the checkpoint complete.
        torch.save(ckpt.trainer_state_dict(state, optimizer, scheduler),
                   temp / "trainer_state.pt")
        ckpt.publish(temp, final)
        ckpt.prune_checkpoints(root, cfg.keep_checkpoints)
    accelerator.wait_for_everyone()


def _load_weights(model, folder: Path) -> None:
    """Trained weights of a checkpoint: the LoRA adapter, or the whole model (`full`)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        set_peft_model_state_dict(model, load_file(str(adapter)))
    else:
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)


def _keep_best(state, record, accelerator, model, processor, output: Path, base,
               views) -> None:
    if state.best_eval_loss is None or record["eval_loss"] < state.best_eval_loss:
        state.best_eval_loss, state.best_step = record["eval_loss"], record["step"]
        if accelerator.is_main_process:
            save_adapter(accelerator.unwrap_model(model), processor, output / "best", base,
                         views)


def _samples(data, fmt, cfg, reporter, name, repeat=True):
    """Encoded samples (with `pack_questions`, one packed sequence per image), how many times
    per epoch each is trained on, and how many data rows each holds."""
    records = load_records(data)
    with reporter.task(f"processing {name} data", total=len(records)) as advance:
        samples, hit = load_or_encode(records, fmt, cfg.max_length, cfg.cache_dir,
                                      progress=lambda: advance(1))
    repeats = [r.repeat if repeat else 1 for r in records]
    extra = sum(repeats) - len(records)
    line = (f"{name}: {len(samples)} samples" + (" (from cache)" if hit else "")
            + (f", {extra} repeats per epoch" if extra else ""))
    if not cfg.pack_questions:
        reporter.line(line)
        return samples, repeats, [1] * len(samples)
    keys = [tuple(image_digest(ref) for ref in r.images) or None for r in records]
    packs, rows = pack_by_image(samples, repeats, keys, cfg.max_length,
                                image_token_id(fmt.processor))
    before = sum(len(s["input_ids"]) * times for s, times in zip(samples, repeats, strict=True))
    after = sum(len(p["input_ids"]) for p in packs)
    reporter.line(f"{line}; packed by image into {len(packs)} sequences "
                  f"({before / after:.1f}x fewer tokens)")
    return packs, [1] * len(packs), rows


def _to_device(batch: dict[str, Any], device, family) -> dict[str, Any]:
    from domainvlm.models.vision_cache import FEATURE_KEY

    batch = {k: v.to(device) for k, v in batch.items()}
    return encoder_outputs(batch, family) if FEATURE_KEY in batch else batch


def _accumulation(cfg: FinetuneConfig, world: int) -> int:
    micro = cfg.micro_batch_size or max(cfg.batch_size // world, 1)
    if cfg.batch_size % (micro * world):
        raise ConfigError(
            f"`--batch-size` ({cfg.batch_size}) must be a multiple of `--micro-batch-size` "
            f"({micro}) x processes ({world})"
        )
    return cfg.batch_size // (micro * world)


def _mixed_precision(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _scheduler(cfg: FinetuneConfig, optimizer, total_steps: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(cfg.schedule, cfg.schedule)
    return get_scheduler(name, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def _tensorboard(folder: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder))


def _log(writer, record: dict[str, Any]) -> None:
    if writer is None:
        return
    for key, value in record.items():
        if key != "step" and value is not None:
            writer.add_scalar(f"train/{key}" if key != "eval_loss" else "eval/loss", value,
                              record["step"])
