"""`domainvlm demo`: adapt a VLM to CT with LoRA and prove it on patients it never saw.

One readable recipe: synthetic CT cohort as DICOM -> de-identified VQA data split by patient
-> zero-shot score of the base model -> LoRA fine-tune -> score of the adapted model on the same
held-out patients -> report.md with plots. Every number in the report is computed here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domainvlm.medical.demo_recipe import DemoRecipe, load_recipe
from domainvlm.progress import Reporter

if TYPE_CHECKING:
    from domainvlm.train.config import FinetuneConfig

# The de-identification key of the synthetic cohort only. It is published, so it is not a
# secret: DeidConfig accepts it only with synthetic_only=True, which refuses every data set
# the cohort writer did not mark (domainvlm.medical.keys). The split hangs on the pseudonyms
# it gives, so changing it would change the demo's results.
DEMO_KEY = "domainvlm-demo"


@dataclass(frozen=True)
class DemoConfig:
    """One demo run: where it writes, and the recipe that decides every number of it."""

    output: Path
    recipe: DemoRecipe = field(default_factory=load_recipe)
    workers: int = 0  # processes for the cohort's DICOM, de-identification, views; 0: per CPU
    overwrite: bool = False

    def __post_init__(self) -> None:
        from domainvlm.errors import ConfigError

        if self.workers < 0:
            raise ConfigError(f"`--workers` must be 0 (one per CPU) or more, got {self.workers}")


@dataclass
class DemoResult:
    output: Path
    base: dict[str, Any]
    adapted: dict[str, Any]
    probe: dict[str, dict[str, Any]]  # "base" / "adapted" -> domainvlm.evaluation.probe result
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(cfg: DemoConfig, reporter: Reporter | None = None) -> DemoResult:
    """Run every stage into `cfg.output` (new, empty, or an earlier demo with `overwrite`); a
    run that fails or is interrupted leaves no half demo behind."""
    import shutil

    from domainvlm.outputs import check_folder, claim_folder

    out = Path(cfg.output)
    check_folder(out, "demo", inputs=[cfg.recipe.model], overwrite=cfg.overwrite,
                 made_by_us=_earlier_demo)
    try:
        claim_folder(out, "demo", overwrite=cfg.overwrite)
        return _stages(cfg, out, reporter or Reporter())
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _stages(cfg: DemoConfig, out: Path, reporter: Reporter) -> DemoResult:
    from domainvlm.evaluation.run import evaluate
    from domainvlm.nano import ensure_nano, with_input_size
    from domainvlm.parallel import default_workers
    from domainvlm.train.loop import finetune

    recipe = cfg.recipe
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    model = recipe.model or str(with_input_size(ensure_nano(reporter=reporter),
                                                recipe.nano_input_px, out / "base-model"))
    lap("base model")
    vqa = make_data(recipe, out, _image_size(model), cfg.workers or default_workers(), reporter)
    lap("cohort and VQA data")
    scoring = recipe.evaluation.model_dump()
    base = evaluate(model, str(vqa / "test.jsonl"), out / "eval-base", **scoring,
                    reporter=reporter)
    lap("zero-shot evaluation")
    run = finetune(finetune_config(recipe, model, vqa, out), reporter)
    lap("LoRA fine-tuning")
    adapted = evaluate(str(run.adapter), str(vqa / "test.jsonl"), out / "eval-adapted",
                       **scoring, reporter=reporter)
    lap("adapted evaluation")
    probe = _probes(model, run.adapter, vqa, out, reporter)
    lap("feature probes")
    result = DemoResult(out, base, adapted, probe, timings)
    from domainvlm.medical.demo_report import write_report

    write_report(result, cfg, model, vqa)
    lap("report")
    timings["total"] = round(sum(timings.values()), 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    return result


def _earlier_demo(folder: Path) -> bool:
    """A demo written before outputs carried a marker: its cohort and its fine-tuning run."""
    return (folder / "cohort").is_dir() and (folder / "finetune" / "run.json").is_file()


def make_data(recipe: DemoRecipe, out: Path, image_size: int, workers: int,
              reporter: Reporter) -> Path:
    """The cohort as DICOM in OUT/cohort (labels.jsonl beside it, the recipe's repeats in it),
    then de-identified, rendered and split by patient into OUT/vqa; returns OUT/vqa."""
    from domainvlm.medical.cohort import write_cohort
    from domainvlm.medical.cohort_questions import cohort_questions
    from domainvlm.medical.deid import DeidConfig
    from domainvlm.medical.sources import folder_fetcher
    from domainvlm.medical.vqa import build_vqa

    patients = recipe.cohort.patients
    with reporter.task("writing CT patients (DICOM)", total=patients) as advance:
        manifest = write_cohort(out / "cohort", patients, seed=recipe.seed,
                                shape=(recipe.cohort.slices, *recipe.cohort.matrix),
                                progress=advance, workers=workers)
    labels = out / "cohort" / "labels.jsonl"
    repeats = recipe.repeats
    rows = [{**row, "repeat": repeats[row["question_id"]]} if row["question_id"] in repeats
            else row for row in cohort_questions(manifest.patients)]
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fetch = folder_fetcher(out / "cohort")
    with reporter.task("de-identifying and rendering", total=patients) as advance:
        build_vqa(fetch, labels, out / "vqa",
                  deid=DeidConfig(project_key=DEMO_KEY, synthetic_only=True),
                  views=recipe.view.spec(image_size), fractions=recipe.split.model_dump(),
                  seed=recipe.seed, progress=advance, workers=workers,
                  keep_columns=["question_id"])  # synthetic: names no one
    return out / "vqa"


def finetune_config(recipe: DemoRecipe, model: str, vqa: Path, out: Path) -> FinetuneConfig:
    """The recipe's fine-tuning of `model` on OUT/vqa's train split, validated on val."""
    from domainvlm.train.config import FinetuneConfig

    checks = recipe.eval_loss_checks
    return FinetuneConfig(
        **recipe.finetune_values(), model=model, data=str(vqa / "train.jsonl"),
        eval_data=str(vqa / "val.jsonl"), output=out / "finetune", seed=recipe.seed,
        eval_every=max(1, _steps(vqa, recipe) // checks), cache_dir=out / "cache")


def _probes(model: str, adapter: Path, vqa: Path, out: Path,
            reporter: Reporter) -> dict[str, dict[str, Any]]:
    """Can the closed questions be read off the image features the LM receives, before and
    after adaptation? Both from one pass of the frozen tower; OUT/probe-{base,adapted}.json."""
    from domainvlm.atomic import write_json
    from domainvlm.evaluation.probe import probe_closed_questions

    adapted = probe_closed_questions(str(adapter), str(vqa / "train.jsonl"),
                                     str(vqa / "test.jsonl"), reporter=reporter, base_too=True)
    probes = {"base": {"model": model, **adapted.pop("base")}, "adapted": adapted}
    for name, result in probes.items():
        write_json(out / f"probe-{name}.json", result)
    return probes


def _image_size(model: str) -> int:
    """The side of the square the model's processor crops to: views rendered at that size
    reach the model without being resampled again (224 px if the processor does not say)."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(model)
    crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    return int(crop.get("height") or crop.get("shortest_edge") or 224)


def _steps(vqa: Path, recipe: DemoRecipe) -> int:
    """Optimizer steps of the fine-tuning, counted as `domainvlm.train.loop` does (packed, a
    sample is a scan with its questions; else a row, as many times as it repeats)."""
    import math

    settings = recipe.finetune
    rows = [json.loads(line) for line in (vqa / "train.jsonl").read_text().splitlines()]
    samples = (len({tuple(row["image"]) for row in rows}) if settings.pack_questions
               else sum(row.get("repeat", 1) for row in rows))
    return settings.max_steps or math.ceil(settings.epochs
                                           * math.ceil(samples / settings.batch_size))


def summary_rows(result: DemoResult) -> list[tuple[str, str, str]]:
    """(metric, base, adapted) rows for the terminal table and the report."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    rows = []
    for key, label in (("closed_accuracy", "closed-question accuracy"),
                       ("open_accuracy", "open-question accuracy"),
                       ("accuracy", "all questions")):
        rows.append((label, pct(result.base["vqa"].get(key)),
                     pct(result.adapted["vqa"].get(key))))
    rows.append(("false premise answered as absent",
                 pct(result.base.get("abstention", {}).get("abstention_rate")),
                 pct(result.adapted.get("abstention", {}).get("abstention_rate"))))
    probe = {name: result.probe[name]["overall"] for name in ("base", "adapted")}
    rows.append(("closed, linear probe on image features",
                 pct(probe["base"]["probe_accuracy"]), pct(probe["adapted"]["probe_accuracy"])))
    rows.append(("closed, commonest training answer",
                 pct(probe["base"]["baseline_accuracy"]),
                 pct(probe["adapted"]["baseline_accuracy"])))
    for key in ("bleu4", "rouge_l", "meteor", "cider"):
        base_v = result.base.get("open_text", {}).get(key)
        adapted_v = result.adapted.get("open_text", {}).get(key)
        rows.append((f"{key} (open)", "-" if base_v is None else f"{base_v:.3f}",
                     "-" if adapted_v is None else f"{adapted_v:.3f}"))
    return rows


def config_dict(cfg: DemoConfig) -> dict[str, Any]:
    return {"output": str(cfg.output), "workers": cfg.workers, "overwrite": cfg.overwrite,
            "recipe": cfg.recipe.model_dump(mode="json", exclude_unset=True)}
