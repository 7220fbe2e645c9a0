"""The demo's report: report.md plus PNG plots, from the numbers the run computed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from domainvlm.atomic import write_bytes


def write_report(result: Any, cfg: Any, model: str, vqa: Path) -> Path:
    """Write loss.png, accuracy.png, gallery.png and report.md into the demo folder."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    out = result.output
    history = json.loads((out / "finetune" / "history.json").read_text())
    _save(_loss_plot(history), out / "loss.png")
    _save(_accuracy_plot(result.base, result.adapted), out / "accuracy.png")
    _save(_gallery(out, vqa), out / "gallery.png")
    write_bytes(out / "report.md", _markdown(result, cfg, model, vqa).encode())
    return out / "report.md"


def _selection_note(seed: int, selection_seeds: list[int]) -> str:
    """How the recipe was chosen, and whether this seed's test patients took part."""
    how = ("The recipe was chosen by comparing test scores of cohort seeds "
           f"{', '.join(map(str, selection_seeds))} (docs/experiments.md); later choices are "
           "made on the validation patients.")
    if seed in selection_seeds:
        return (f"{how} **Seed {seed} is one of them: its test figures informed the recipe and "
                "are not held out from model selection**; run another `--seed` for a held-out "
                "figure.")
    return f"{how} Seed {seed} is not one of them: its test figures are held out."


def _save(figure: Any, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_bytes(path, buffer.getvalue())


def _loss_plot(history: list[dict[str, Any]]) -> Any:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([h["step"] for h in history], [h["loss"] for h in history], label="train")
    evals = [h for h in history if "eval_loss" in h]
    if evals:
        axis.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o-",
                  label="validation patients")
    axis.set(xlabel="optimizer step", ylabel="answer-token loss", title="LoRA fine-tuning")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


def _accuracy_plot(base: dict[str, Any], adapted: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt
    import numpy as np

    names = sorted(set(base.get("by_category", {})) | set(adapted.get("by_category", {})))
    names += ["closed", "open"]

    def value(metrics: dict[str, Any], name: str) -> float:
        if name in ("closed", "open"):
            return 100 * (metrics["vqa"].get(f"{name}_accuracy") or 0.0)
        return 100 * (metrics.get("by_category", {}).get(name, {}).get("accuracy") or 0.0)

    x = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(8, 3.8))
    for offset, (label, metrics) in ((-0.2, ("base (zero-shot)", base)),
                                     (0.2, ("adapted (LoRA)", adapted))):
        bars = axis.bar(x + offset, [value(metrics, n) for n in names], 0.4, label=label)
        axis.bar_label(bars, fmt="%.0f", fontsize=7)
    axis.set_xticks(x, names, rotation=20)
    axis.set(ylabel="accuracy on held-out patients (%)", ylim=(0, 110),
             title="Accuracy per question type")
    axis.legend(loc="upper left")
    return figure


def _gallery(out: Path, vqa: Path, n: int = 6) -> Any:
    import matplotlib.pyplot as plt
    from PIL import Image

    base = _predictions(out / "eval-base")
    adapted = _predictions(out / "eval-adapted")
    # One question per scan, mixing categories, so the gallery shows different kinds.
    chosen, seen = [], set()
    for key, row in adapted.items():
        scan = row["images"][0] if row["images"] else key
        if scan in seen or len(chosen) >= n:
            continue
        if row.get("category") in {c.get("category") for c in chosen}:
            continue
        seen.add(scan)
        chosen.append({**row, "base": base.get(key, {}).get("prediction", "")})
    figure, axes = plt.subplots(1, max(1, len(chosen)), figsize=(3.2 * max(1, len(chosen)), 4.6))
    for axis, row in zip(list(getattr(axes, "flat", [axes])), chosen, strict=False):
        if row["images"]:
            axis.imshow(Image.open(row["images"][0]))
        axis.axis("off")
        text = (f"Q: {row['question']}\ntruth: {row['answer']}\nbase: {row['base']}\n"
                f"adapted: {row['prediction']}")
        axis.set_title("\n".join(textwrap.fill(line, 34) for line in text.splitlines()),
                       fontsize=7, loc="left")
    return figure


def _predictions(folder: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    return {row["source"]: row for row in rows}


def _markdown(result: Any, cfg: Any, model: str, vqa: Path) -> str:
    from domainvlm.medical.demo import config_dict, summary_rows

    recipe = cfg.recipe
    rows, columns = recipe.cohort.matrix
    windows = recipe.view.window.replace("+", ", ")
    repeats = ", ".join(f"{q} x{k}" for q, k in recipe.repeats.items()) or "none"
    build = json.loads((vqa / "build.json").read_text())
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in summary_rows(result))
    cats = sorted(result.adapted.get("by_category", {}))
    per_cat = "\n".join(
        f"| {c} | {_pct(result.base.get('by_category', {}).get(c))} | "
        f"{_pct(result.adapted['by_category'].get(c))} | "
        f"{result.adapted['by_category'][c]['n']} |" for c in cats)
    timings = "\n".join(f"| {k} | {v:.1f} s |" for k, v in result.timings.items())
    probe = _probe_table(result.probe)
    return f"""# domainvlm demo: adapting a VLM to CT on held-out patients

Base model: `{model}`. Data: {recipe.cohort.patients} synthetic CT patients
(`domainvlm.medical.cohort`, seed {recipe.seed}, {recipe.cohort.slices} slices of {rows}x{columns})
written as DICOM, de-identified (PS3.15 Basic Profile) and rendered (view `{recipe.view.strategy}`,
count {recipe.view.count}, windows {windows}). Questions per split (by
patient, no patient in two splits): {build['records']}; patients: {build['patients']}. Trained
on more than once per epoch (by question id): {repeats}. Scores below are on the **test**
patients only, which no training saw. {_selection_note(recipe.seed, recipe.selection_seeds)}

| metric (test patients) | base, zero-shot | adapted (LoRA) |
| --- | --- | --- |
{table}

![accuracy](accuracy.png)

| question type | base | adapted | questions |
| --- | --- | --- | --- |
{per_cat}

False-premise questions ask about a finding the scan does not have ("How large is the liver
lesion?" with none); "answered as absent" counts answers such as "There is none." / "no".

![loss](loss.png)

![gallery](gallery.png)

## Can the model see the findings? (linear probe)

For each closed question, a logistic regression on the image features the language model
receives (pooled per scan) is fitted on the training patients and scored on the test patients
(`domainvlm.evaluation.probe`), beside always giving the commonest training answer. A probe
near that baseline means the answer is not linearly readable from what the language model is
shown, so the vision side has to learn; a probe well above it that the model's answers do not
reach means the language side has not learned to use what it sees.

| question type | probe, base features | probe, adapted features | commonest answer | questions |
| --- | --- | --- | --- | --- |
{probe}

## Run

Settings: `{json.dumps(config_dict(cfg))}`. {_packing(recipe.finetune)} Adapter:
`finetune/adapter` (PEFT format).
Predictions: `eval-base/predictions.jsonl`, `eval-adapted/predictions.jsonl`.

| stage | time |
| --- | --- |
{timings}

The base model is a nano model pretrained on synthetic shapes, not a medical model, and the CT
is synthetic: these numbers show that the pipeline adapts a model to a new imaging domain and
measures it honestly, not that anything here is fit for clinical use.
"""


def _packing(settings: Any) -> str:
    if not settings.pack_questions:
        return f"{settings.batch_size} questions per step."
    return ("The questions about each scan train as one sequence (`--pack-questions`: the "
            "image's tokens once, each question seeing only the image and itself), "
            f"{settings.batch_size} scans per step.")


def _probe_table(probe: dict[str, dict[str, Any]]) -> str:
    base, adapted = probe["base"]["by_category"], probe["adapted"]["by_category"]

    def pct(row: dict[str, Any] | None, key: str) -> str:
        return "-" if row is None else f"{100 * row[key]:.1f}%"

    return "\n".join(f"| {c} | {pct(base[c], 'probe_accuracy')} | "
                     f"{pct(adapted.get(c), 'probe_accuracy')} | "
                     f"{pct(base[c], 'baseline_accuracy')} | {base[c]['n']} |"
                     for c in sorted(base))


def _pct(metrics: dict[str, Any] | None) -> str:
    if not metrics or metrics.get("accuracy") is None:
        return "-"
    return f"{100 * metrics['accuracy']:.1f}%"
