"""`domainvlm demo robot`: the open-vocabulary recipe end to end, offline, on a CPU.

A recipe, not a component: it wires the tabletop world, the shipped nano CLIP, `distill` and
`assess`, then writes OUTPUT/report.md. Every setting is in `robot-demo.yaml` beside this file.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from domainvlm.atomic import write_json
from domainvlm.errors import ConfigError
from domainvlm.outputs import check_folder, claim_folder
from domainvlm.progress import Reporter

RECIPE = Path(__file__).with_name("robot-demo.yaml")
COMMAND = "demo robot"


def load_recipe(path: Path | None, *, split: str | None, steps: int | None,
                seed: int | None = None) -> dict:
    path = path or RECIPE
    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(recipe, dict) or not {"world", "distill", "evaluation"} <= set(recipe):
        raise ConfigError(f"{path}: a robot-demo recipe needs world, distill and evaluation "
                          f"sections (see {RECIPE})")
    if split is not None:
        recipe["world"]["split"] = split
    if steps is not None:
        recipe["distill"]["steps"] = steps
    if seed is not None:
        recipe["world"]["seed"] = seed
    return recipe


def run_robot_demo(output: Path, *, config: Path | None = None, split: str | None = None,
                   steps: int | None = None, seed: int | None = None, overwrite: bool = False,
                   reporter: Reporter | None = None) -> Path:
    """World -> teacher -> distillation -> evaluation -> OUTPUT/report.md."""
    from domainvlm.nano.tabletop_world import SPLITS

    reporter = reporter or Reporter()
    recipe = load_recipe(config, split=split, steps=steps, seed=seed)
    world = recipe["world"]
    if world["split"] not in SPLITS:
        raise ConfigError(f"world.split is {world['split']!r}: one of {', '.join(SPLITS)}")
    output = Path(output)
    check_folder(output, COMMAND, inputs=[config, recipe.get("teacher")], overwrite=overwrite)
    try:
        claim_folder(output, COMMAND, overwrite=overwrite)
        return _stages(output, recipe, reporter)
    except BaseException:  # a failed or interrupted demo leaves no half demo behind
        shutil.rmtree(output, ignore_errors=True)
        raise


def _stages(output: Path, recipe: dict, reporter: Reporter) -> Path:
    from domainvlm.detection.assess import assess
    from domainvlm.detection.coco import read_coco, read_split
    from domainvlm.detection.detector import Detector
    from domainvlm.detection.distill import DistillConfig, distill
    from domainvlm.detection.teacher import Teacher
    from domainvlm.nano.tabletop_world import write_tabletop

    world = recipe["world"]
    write_json(output / "recipe.json", recipe)
    started = time.perf_counter()
    timings = {}
    size = tuple(world["size"])
    parts = {"train": ("base", world["train_images"], world["seed"]),
             "validation": ("all", world["validation_images"], world["seed"] + 1),
             "test": ("all", world["test_images"], world["seed"] + 2)}
    for name, (labels, count, seed) in parts.items():
        reporter.line(f"world: {count} {name} images ({labels} labels)")
        write_tabletop(output / "world" / name, split=world["split"], images=count, size=size,
                       seed=seed, labels=labels, reporter=reporter)
    timings["world"] = time.perf_counter() - started
    run_config = DistillConfig(
        train=output / "world" / "train" / "instances.json",
        split=output / "world" / "train" / "split.json",
        validation=output / "world" / "validation" / "instances.json",
        teacher=recipe.get("teacher"), **recipe["distill"],
        student={"frame": list(size)}).checked()
    mark = time.perf_counter()
    final = distill(run_config, output / "run", reporter=reporter)
    timings["distillation"] = time.perf_counter() - mark
    mark = time.perf_counter()
    detector = Detector.load(final)
    test = read_coco(output / "world" / "test" / "instances.json")
    split_ = read_split(output / "world" / "test" / "split.json", test)
    evaluation = recipe["evaluation"]
    result = assess(detector, test, split_, teacher=Teacher.load(recipe.get("teacher")),
                    teacher_images=evaluation["teacher_images"], reporter=reporter)
    timings["evaluation"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    from domainvlm.detection.demo_report import write_robot_report

    return write_robot_report(output, recipe, detector, test, split_, result, timings)


def summary(result) -> dict:
    """The figures the issue's targets speak of, as one flat dict (also metrics.json)."""
    def get(row: str, group: str, key: str = "AP50") -> float:
        return result.rows[row]["coco"][group][key]

    def acc(row: str, group: str) -> float:
        return result.rows[row]["accuracy"][group]

    ensemble, text = "ViLD (ensemble)", "ViLD-text only"
    out = {
        "base_AP50": get(ensemble, "base"), "novel_AP50": get(ensemble, "novel"),
        "base_top1": acc(ensemble, "base"), "novel_top1": acc(ensemble, "novel"),
        "novel_over_base_AP50": _ratio(get(ensemble, "novel"), get(ensemble, "base")),
        "novel_over_base_top1": _ratio(acc(ensemble, "novel"), acc(ensemble, "base")),
        "text_only_novel_AP50": get(text, "novel"), "text_only_novel_top1": acc(text, "novel"),
        "control_novel_AP50": get("random-embedding control", "novel"),
        "proposal_recall": result.recall,
        "student_ms_per_image": 1000 * result.student_seconds,
    }
    if "teacher crop-and-classify" in result.rows:
        teacher = get("teacher crop-and-classify", "novel")
        same = get("ViLD (ensemble), same images", "novel")
        out.update(teacher_novel_AP50=teacher, student_novel_AP50_same_images=same,
                   student_over_teacher_novel_AP50=_ratio(same, teacher),
                   teacher_ms_per_image=1000 * result.teacher_seconds,
                   speedup_over_teacher=_ratio(result.teacher_seconds, result.student_seconds))
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def save_metrics(output: Path, result, timings: dict) -> dict:
    figures = summary(result)
    write_json(output / "metrics.json", {"summary": figures, "timings_s": timings,
                                         "rows": result.rows})
    return figures

