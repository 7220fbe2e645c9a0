"""`domainvlm dicom ...`: inspect, render, de-identify and synthesise DICOM; build VQA data.

Registered with the core CLI through the `domainvlm.commands` entry point. Nothing here prints
patient attributes: tables show counts, geometry and coding, never names, ids or dates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from domainvlm.detection.cli import robot_demo_command

app = typer.Typer(
    help="DICOM in: inspect, render, de-identify, synthesise CT, build VQA data.\n\n"
    "Start with `domainvlm dicom info PATH` on a file, folder or .zip.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("info")
def info_command(
    path: Annotated[Path, typer.Argument(help="A DICOM file, a folder (searched recursively) "
                                         "or a .zip archive.")],
) -> None:
    """The series found, each named by the end of its UID, its description and its folder,
    with modality, images, size, spacing and transfer syntax; no patient attribute is shown."""
    import shutil

    from domainvlm.medical.errors import DicomError
    from domainvlm.medical.info import Series, description, image_row, summary_lines
    from domainvlm.medical.io import iter_dicom

    unreadable: list[str] = []
    series: dict[str, Series] = {}
    for source in iter_dicom(path, stop_before_pixels=True, unreadable=unreadable):
        try:
            row = image_row(source.dataset)
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            unreadable.append(f"{source.name}: malformed image attributes "
                              f"({type(err).__name__})")
            continue
        uid = str(source.dataset.get("SeriesInstanceUID", "?"))
        one = series.setdefault(uid, Series(uid, description(source.dataset)))
        one.names.append(source.name)
        one.rows.append(row)
    if not series and not unreadable:
        raise DicomError(f"{path}: no DICOM files found")
    if series:
        width = shutil.get_terminal_size((80, 24)).columns
        for line in summary_lines(list(series.values()), path, width):
            typer.echo(line)
    _report_skipped(unreadable, "could not be read")


def _report_skipped(skipped: list[str], what: str) -> None:
    """List the inputs passed over on stderr and end with exit code 1 (done, but not all)."""
    if not skipped:
        return
    typer.echo(f"{len(skipped)} file{'s' if len(skipped) > 1 else ''} {what}, skipped:",
               err=True)
    for line in skipped[:20]:
        typer.echo(f"  {line}", err=True)
    if len(skipped) > 20:
        typer.echo(f"  ... and {len(skipped) - 20} more", err=True)
    raise typer.Exit(1)


KeyOption = Annotated[str | None, typer.Option(
    "--project-key", envvar="DOMAINVLM_PROJECT_KEY",
    help="Secret of this project: fixes pseudonyms, remapped UIDs and date shifts, so the same "
    "patient or UID maps to the same output in every run. At least 32 random characters; "
    "prefer --project-key-file (a command line is seen by other users).")]
KeyFileOption = Annotated[Path | None, typer.Option(
    "--project-key-file", envvar="DOMAINVLM_PROJECT_KEY_FILE",
    help="File holding the project key (only you may read it), made by `domainvlm dicom "
    "keygen PATH`.")]
BurnedInOption = Annotated[bool, typer.Option(
    help="Accept images marked BurnedInAnnotation=YES, and ultrasound, secondary capture, "
    "photo and document objects that do not say (pixels are never scrubbed: text in them "
    "stays; such files say PatientIdentityRemoved=NO).")]
LayoutOption = Annotated[str, typer.Option(
    help="Tiles of montage and slabs: grid (whole slices) or sides (each cut at the body's "
    "midline, the patient's right halves on the image's left, so a side is a half of the "
    "image).")]


def _deid_config(project_key: str | None, key_file: Path | None, remove_dates: bool,
                 allow_burned_in: bool):
    from domainvlm.medical.deid import DeidConfig
    from domainvlm.medical.keys import check_project_key, resolve_project_key

    key = resolve_project_key(project_key, key_file)
    check_project_key(key, "--project-key-file" if key_file else "--project-key")
    return DeidConfig(project_key=key, shift_dates=not remove_dates,
                      allow_burned_in=allow_burned_in)


@app.command("keygen")
def keygen_command(
    path: Annotated[Path, typer.Argument(help="New file for the key (never overwritten).")],
) -> None:
    """Write a new random project key (256 bits) to PATH, readable by you only (mode 0600);
    use it with --project-key-file PATH or DOMAINVLM_PROJECT_KEY_FILE=PATH. Keep it secret and
    backed up: another key gives every patient and UID other pseudonyms."""
    from domainvlm.medical.keys import write_key_file

    write_key_file(path)
    typer.echo(f"new project key (mode 600): use --project-key-file {path}")
    typer.echo(f"wrote {path}")


def _progress(description: str, total: int | None = None):
    from domainvlm.progress import Reporter

    return Reporter().task(description, total=total)


@app.command("deid")
def deid_command(
    source: Annotated[Path, typer.Argument(help="DICOM file, folder or .zip to de-identify.")],
    output: Annotated[Path, typer.Argument(help="New folder for the de-identified files.")],
    project_key: KeyOption = None,
    project_key_file: KeyFileOption = None,
    remove_dates: Annotated[bool, typer.Option(
        help="Empty dates and times instead of shifting them per patient.")] = False,
    allow_burned_in: BurnedInOption = False,
) -> None:
    """De-identify DICOM (PS3.15 Basic Profile, private tags removed, keyed UIDs and dates)
    into OUTPUT/<study>/<series>/<instance>.dcm; the folder appears only when all is done."""
    from domainvlm.medical.deid import deidentify_tree

    config = _deid_config(project_key, project_key_file, remove_dates, allow_burned_in)
    with _progress("de-identifying") as advance:
        report = deidentify_tree(source, output, config, progress=advance)
    typer.echo(f"{report.files_written} files, {report.series} series, {report.studies} studies, "
               f"{report.patients} patients (dates {report.dates})")
    if report.burned_in_allowed or report.possibly_burned_in_allowed:
        typer.echo(f"let through by --allow-burned-in, pixels not cleaned: "
                   f"{report.burned_in_allowed} marked BurnedInAnnotation=YES, "
                   f"{report.possibly_burned_in_allowed} of a kind that often shows text "
                   f"(ultrasound, secondary capture, photos, documents) without the tag; "
                   f"{report.identity_not_removed} files say PatientIdentityRemoved=NO")
    typer.echo(f"wrote {output}")
    _report_skipped(report.skipped, "could not be read or de-identified")


@app.command("synth")
def synth_command(
    output: Annotated[Path, typer.Argument(help="New folder for the cohort.")],
    patients: Annotated[int, typer.Option(min=1, help="How many patients.")] = 40,
    seed: int = 0,
    slices: Annotated[int, typer.Option(min=4, help="Slices per CT series.")] = 32,
    size: Annotated[int, typer.Option(min=32, help="Rows and columns per slice.")] = 64,
) -> None:
    """Write a synthetic CT cohort: phantoms (body, lungs, liver, spine, 0-3 lesions) as real
    DICOM series with fake PHI, ground_truth.jsonl, and labels.jsonl of questions about them
    (presence, side, size, count, organ, and false-premise ones) for `dicom build-vqa`."""
    import json

    from domainvlm.atomic import write_text
    from domainvlm.medical.cohort import write_cohort
    from domainvlm.medical.cohort_questions import cohort_questions

    with _progress("writing patients", total=patients) as advance:
        manifest = write_cohort(output, patients, seed=seed, shape=(slices, size, size),
                                progress=advance)
    labels = output / "labels.jsonl"
    rows = cohort_questions(manifest.patients)
    write_text(labels, "".join(json.dumps(r) + "\n" for r in rows))
    typer.echo(f"{patients} patients, {len(rows)} questions (labels: {labels})")
    typer.echo(f"wrote {output}")


@app.command("build-vqa")
def build_vqa_command(
    source: Annotated[str, typer.Argument(
        help="DICOM folder, .zip or file; or a DICOMweb root URL (http://host/dicom-web).")],
    labels: Annotated[Path, typer.Argument(
        help="CSV/JSONL: study_uid and/or series_uid, question, answer, [answerable], "
        "[question_type].")],
    output: Annotated[Path, typer.Argument(help="New folder for {train,val,test}.jsonl + images.")],
    project_key: KeyOption = None,
    project_key_file: KeyFileOption = None,
    strategy: Annotated[str, typer.Option(help="montage | slabs | slices | mip")] = "montage",
    count: Annotated[int, typer.Option(
        min=1, help="Slices per montage, slabs per slab montage, images per record.")] = 9,
    plane: Annotated[str, typer.Option(help="MIP plane: axial | coronal | sagittal")] = "axial",
    window: Annotated[str, typer.Option(
        help="composite (lung/mediastinum/bone as RGB), a preset (lung, mediastinum, "
        "soft_tissue, bone, brain, liver) or CENTER,WIDTH.")] = "composite",
    image_size: Annotated[int, typer.Option(min=0, help="Longer image side in px (0: keep).")] = 0,
    layout: LayoutOption = "grid",
    split: Annotated[str, typer.Option(
        help="train,val,test fractions by patient.")] = "0.8,0.1,0.1",
    seed: int = 0,
    remove_dates: bool = False,
    allow_burned_in: BurnedInOption = False,
    keep_column: Annotated[list[str] | None, typer.Option(
        metavar="NAME", help="Copy this extra label column into the records too (repeatable). Only "
        "category and repeat travel otherwise: other columns may hold an MRN, a name or "
        "report text, so keeping one is your responsibility.")] = None,
) -> None:
    """Turn labelled DICOM studies into VQA data for `domainvlm finetune`: de-identified,
    rendered, split by patient (no patient in two splits). Label columns other than the
    known ones are left out and named (never their values)."""
    from domainvlm.medical.sources import folder_fetcher, pacs_fetcher
    from domainvlm.medical.vqa import ViewSpec, build_vqa

    fractions = _fractions(split)
    deid = _deid_config(project_key, project_key_file, remove_dates, allow_burned_in)
    views = ViewSpec(strategy=strategy, count=count, plane=plane, window=window,
                     image_size=image_size or None, layout=layout)
    unreadable: list[str] = []
    if source.startswith(("http://", "https://")):
        from domainvlm.medical.pacs import PacsClient

        fetch = pacs_fetcher(PacsClient(source))
    else:
        with _progress("indexing DICOM") as advance:
            fetch = folder_fetcher(Path(source), progress=advance, unreadable=unreadable)
    with _progress("building VQA data") as advance:
        report = build_vqa(fetch, labels, output,
                           deid=deid, views=views,
                           fractions=fractions, seed=seed, progress=advance,
                           keep_columns=keep_column or ())
    for name, n in report.records.items():
        typer.echo(f"{name}: {n} questions from {report.patients[name]} patients "
                   f"-> {output / (name + '.jsonl')}")
    if report.dropped_columns:
        typer.echo(f"label columns left out of the records (they may hold patient data): "
                   f"{', '.join(report.dropped_columns)}; --keep-column NAME keeps one")
    if report.kept_columns:
        typer.echo(f"label columns kept by --keep-column (your responsibility): "
                   f"{', '.join(report.kept_columns)}")
    typer.echo(f"wrote {output}")
    _report_skipped(unreadable, "could not be read")


@app.command("import-vqa")
def import_vqa_command(
    source: Annotated[Path, typer.Argument(help="VQA-RAD or SLAKE JSON file.")],
    output: Annotated[Path, typer.Argument(help="New folder for {train,val,test}.jsonl.")],
    image_root: Annotated[Path | None, typer.Option(
        help="Folder the image names are relative to (default: the JSON's folder).")] = None,
    split: Annotated[str, typer.Option(
        help="train,val,test fractions by patient (scan).")] = "0.8,0.1,0.1",
    seed: int = 0,
) -> None:
    """Turn a public medical VQA set (VQA-RAD, SLAKE; English questions) into JSONL for
    `domainvlm finetune`, split so that no scan is in two splits."""
    from domainvlm.medical.vqa import write_public_vqa

    counts = write_public_vqa(source, output, image_root=image_root,
                              fractions=_fractions(split), seed=seed)
    for name, n in counts.items():
        typer.echo(f"{name}: {n} questions -> {output / (name + '.jsonl')}")
    typer.echo(f"wrote {output}")


def _fractions(split: str) -> dict[str, float]:
    import math

    from domainvlm.errors import ConfigError

    try:
        fractions = dict(zip(("train", "val", "test"), map(float, split.split(",")),
                             strict=True))
    except ValueError:
        raise ConfigError(f"--split {split!r}: give three fractions, e.g. 0.8,0.1,0.1") from None
    if not all(0 <= f <= 1 for f in fractions.values()) or \
            not math.isclose(sum(fractions.values()), 1, abs_tol=1e-6):
        raise ConfigError(f"--split {split!r}: the train, val and test fractions must each lie "
                          "in 0..1 and sum to 1, e.g. 0.8,0.1,0.1")
    return fractions


@app.command("render")
def render_command(
    source: Annotated[Path, typer.Argument(help="DICOM file, folder or .zip (one series).")],
    output: Annotated[Path, typer.Argument(help="PNG file to write.")],
    strategy: Annotated[str, typer.Option(help="montage | slabs | slices | mip")] = "montage",
    count: Annotated[int, typer.Option(min=1)] = 9,
    plane: Annotated[str, typer.Option(help="MIP plane: axial | coronal | sagittal")] = "axial",
    window: Annotated[str, typer.Option(
        help="tags (the file's own VOI), composite, a preset, or CENTER,WIDTH.")] = "tags",
    layout: LayoutOption = "grid",
    overwrite: Annotated[bool, typer.Option(help="Replace existing PNG files.")] = False,
) -> None:
    """Render a series (or a single image) as PNG the way a model will see it; with
    `--strategy slices`, one PNG per slice (OUTPUT-0.png, ...)."""
    import io

    from PIL import Image

    from domainvlm.atomic import write_bytes
    from domainvlm.medical.io import frame_count, iter_dicom, read_frames
    from domainvlm.medical.render import render_frame
    from domainvlm.medical.series import group_series, load_volume
    from domainvlm.medical.vqa import ViewSpec, render_views
    from domainvlm.outputs import check_file

    check_file(output, inputs=[source], overwrite=overwrite)
    sources = list(iter_dicom(source))
    groups = group_series(sources)
    if len(groups) != 1:
        from domainvlm.medical.errors import DicomError

        raise DicomError(f"{source}: holds {len(groups)} series; point at one series' folder "
                         "(see `domainvlm dicom info`)")
    single = len(sources) == 1 and frame_count(sources[0].dataset, sources[0].name) == 1
    if single:
        ds = sources[0].dataset
        images = [render_frame(ds, read_frames(ds, sources[0].name)[0],
                               None if window == "tags" else window, name=sources[0].name)]
    else:
        volume = load_volume(sources)
        if window == "tags":  # the series' own window, else soft tissue
            tags = volume.window
            window = f"{tags.center},{tags.width}" if tags is not None else "mediastinum"
        spec = ViewSpec(strategy=strategy, count=count, plane=plane, window=window,
                        layout=layout)
        images = [view.image for view in render_views(volume, spec)]
    paths = [output] if len(images) == 1 else [
        output.with_name(f"{output.stem}-{k}{output.suffix}") for k in range(len(images))]
    for path in paths:
        check_file(path, inputs=[s.name for s in sources], overwrite=overwrite)
    for path, image in zip(paths, images, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        write_bytes(path, buffer.getvalue())
        typer.echo(f"wrote {path} ({image.shape[1]}x{image.shape[0]})")


demo_app = typer.Typer(
    help="Whole pipelines on a laptop, offline: `domainvlm demo` fine-tunes on synthetic CT "
    "(the default); `domainvlm demo robot` distils an open-vocabulary detector.",
    rich_markup_mode=None,
)


@demo_app.callback(invoke_without_command=True)
def demo_command(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option(help="Folder for the cohort, data, adapter, report.")] = (
        Path("runs/demo")),
    config: Annotated[Path | None, typer.Option(
        help="The recipe: a YAML file of every setting (default: the shipped "
        "domainvlm/medical/recipes/ct-demo.yaml; copy it to make your own). The options below "
        "override single values of it.")] = None,
    model: Annotated[str | None, typer.Option(
        help="Base model (hub id or folder), shown views at its processor's crop size "
        "(recipe: `model`; null there is the shipped nano model).")] = None,
    patients: Annotated[int | None, typer.Option(
        min=10, help="Synthetic CT patients (recipe: `cohort.patients`).")] = None,
    epochs: Annotated[float | None, typer.Option(
        min=0.1, help="Passes of LoRA fine-tuning over the training questions (recipe: "
        "`finetune.epochs`).")] = None,
    learning_rate: Annotated[float | None, typer.Option(
        min=0.0, help="Peak LoRA learning rate (recipe: `finetune.learning_rate`).")] = None,
    seed: Annotated[int | None, typer.Option(help="Cohort, split and training seed (recipe: "
                                                   "`seed`).")] = None,
    workers: Annotated[int, typer.Option(
        min=0, help="Processes that write, de-identify and render the cohort (0: one per "
        "CPU).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo in OUTPUT.")] = False,
) -> None:
    """The whole promise on a laptop: synthetic CT as DICOM -> de-identified VQA data split by
    patient -> zero-shot base score -> LoRA fine-tune -> score on held-out patients ->
    OUTPUT/report.md with plots (loss, accuracy per question type, a gallery).

    `domainvlm demo robot --help`: the robot perception demo instead."""
    if ctx.invoked_subcommand is not None:
        return
    import time

    from rich.console import Console
    from rich.table import Table

    from domainvlm.medical.demo import DemoConfig, run_demo, summary_rows
    from domainvlm.medical.demo_recipe import DEFAULT_RECIPE, load_recipe

    started = time.perf_counter()
    recipe = load_recipe(config or DEFAULT_RECIPE, {
        "--model": model or None, "--patients": patients, "--epochs": epochs,
        "--learning-rate": learning_rate, "--seed": seed})
    result = run_demo(DemoConfig(output=output, recipe=recipe, workers=workers,
                                 overwrite=overwrite))
    table = Table(title="held-out patients: base vs adapted")
    for column in ("metric", "base (zero-shot)", "adapted (LoRA)"):
        table.add_column(column)
    for row in summary_rows(result):
        table.add_row(*row)
    console = Console()
    console.print(table)
    for stage, seconds in result.timings.items():
        console.print(f"{stage:>24}: {seconds:7.1f} s")
    console.print(f"report: {output / 'report.md'}  (wall time "
                  f"{time.perf_counter() - started:.0f} s)")
    typer.echo(f"wrote {output}")


demo_app.command("robot")(robot_demo_command)
