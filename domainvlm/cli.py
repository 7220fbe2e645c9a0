"""The `domainvlm` command: fine-tune, evaluate, merge, build tiny models, inspect.

Every bad input ends as one line on stderr and exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import enum
import inspect
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from domainvlm.detection.cli import detect_command, distill_command
from domainvlm.families import known_family_names

# The tiny-model factory's families: the registry's, and those that run the generic path.
TinyFamily = enum.Enum("TinyFamily", {name: name for name in known_family_names()}, type=str)
SynthWorld = enum.Enum("SynthWorld", {"shapes": "shapes", "tabletop": "tabletop"}, type=str)

app = typer.Typer(
    help="Adapt pretrained vision-language models to domain data with LoRA.\n\n"
    "Start with `domainvlm finetune --help`. Models are hub ids or local folders; "
    "`domainvlm tiny-model` writes a small random one for smoke tests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

_DEBUG = False


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option(help="Show tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option(
        help="Also show other libraries' deprecation warnings and weight-loading bars.")] = False,
):
    global _DEBUG
    _DEBUG = debug or os.environ.get("DOMAINVLM_DEBUG") == "1"
    if verbose:
        os.environ["DOMAINVLM_QUIET"] = "0"  # over a quiet parent's: decoders and workers too
    else:
        from domainvlm.quiet import quiet_libraries

        quiet_libraries()


def _finetune_command():
    """Build `finetune` whose options are exactly the fields of FinetuneConfig."""
    from domainvlm.train.config import FinetuneConfig

    params = [inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Optional[Path], typer.Option(  # noqa: UP045 (typer needs it)
            help="YAML file with any of the options below; flags given here win.")])]
    for name, field in FinetuneConfig.model_fields.items():
        params.append(inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[_cli_type(field.annotation),
                                 typer.Option(help=_help(field), show_default=False)]))

    def finetune(**options: Any) -> None:
        from domainvlm.errors import RunInterrupted
        from domainvlm.train.config import build_config, load_yaml
        from domainvlm.train.loop import finetune as run

        path = options.pop("config")
        values = load_yaml(path) if path else {}
        for key, value in options.items():
            if value is not None:
                values[key] = (value.split(",") if key in ("lora_targets", "train_fully", "frozen")
                               else value)
        cfg = build_config(values, source=f"config {path}" if path else "options")
        try:
            result = run(cfg)
        except RunInterrupted as stop:
            if os.environ.get("RANK", "0") == "0":  # one message under `accelerate launch`
                typer.echo(f"{stop}\nresume with: {resume_command(sys.argv, cfg.overwrite)}",
                           err=True)
            sys.exit(130)
        typer.echo(f"steps: {result.steps}  final loss: {result.final_loss:.4f}  "
                   f"samples/s: {result.samples_per_second:.1f}")
        typer.echo(f"wrote {result.adapter}")

    finetune.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    finetune.__doc__ = (
        "LoRA / DoRA / QLoRA fine-tune a vision-language model on VQA or caption data.\n\n"
        "Data: JSONL lines {\"image\": path or [paths], \"question\": ..., \"answer\": ...}, "
        "LLaVA-style JSON, or a datasets folder. Loss is on answer tokens only. Writes "
        "OUTPUT/adapter (PEFT format), OUTPUT/checkpoints, OUTPUT/logs (TensorBoard).\n\n"
        "Example: domainvlm finetune --model llava-hf/llava-1.5-7b-hf --data train.jsonl "
        "--output runs/rad"
    )
    return finetune


def resume_command(argv: list[str], overwrite: bool = False) -> str:
    """The command that continues an interrupted run: the same command line plus `--resume`
    (without `--overwrite`, which would start it over)."""
    import shlex
    import shutil

    program = Path(argv[0])
    if program.name == "cli.py":  # started as `python -m domainvlm.cli`
        head = [sys.executable, "-m", "domainvlm.cli"]
    else:
        on_path = shutil.which("domainvlm")
        same = on_path is not None and Path(on_path).resolve() == program.resolve()
        head = ["domainvlm" if same else argv[0]]
    rest = [arg for arg in argv[1:] if arg not in ("--resume", "--no-resume", "--overwrite")]
    # `overwrite: true` from a YAML file: a flag wins over it.
    return shlex.join([*head, *rest, *(["--no-overwrite"] if overwrite else []), "--resume"])


def _cli_type(annotation: Any) -> Any:
    """The CLI type for a config field: Literals and lists travel as strings."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args and typing.get_origin(annotation) is not typing.Literal else annotation
    if typing.get_origin(base) in (typing.Literal, list):
        return Optional[str]  # noqa: UP045
    if base is Path:
        return Optional[Path]  # noqa: UP045
    return Optional[base]  # noqa: UP045


def _help(field: Any) -> str:
    text = field.description or ""
    choices = [a for a in typing.get_args(field.annotation)]
    if typing.get_origin(field.annotation) is typing.Literal:
        text += f" [{'|'.join(map(str, choices))}]"
    if typing.get_origin(field.annotation) is list:
        text += " (comma-separated)"
    if not field.is_required():
        default = field.default_factory() if field.default_factory else field.default
        text += f" [default: {','.join(default) if isinstance(default, list) else default}]"
    return text.strip()


app.command("finetune")(_finetune_command())

IGNORE_BASE_HELP = ("Load the adapter even on a base other than the one it was trained on "
                    "(another architecture or other weights); it is refused otherwise.")


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Option(help="Model (hub id / folder) or an adapter folder.")],
    data: Annotated[str, typer.Option(help="Questions with reference answers (.jsonl/.json).")],
    output: Annotated[Path, typer.Option(help="Folder for metrics.json, predictions.jsonl.")],
    base: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Base model of the adapter (default: the one it names).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an earlier `eval` output in OUTPUT.")] = False,
    ignore_base_mismatch: Annotated[bool, typer.Option(help=IGNORE_BASE_HELP)] = False,
) -> None:
    """Generate answers and score them: VQA accuracy (closed/open), BLEU-4, ROUGE-L, METEOR,
    CIDEr, and abstention on questions marked not answerable."""
    from domainvlm.evaluation.run import evaluate, summary_lines

    metrics = evaluate(model, data, output, base=base, batch_size=batch_size,
                       max_new_tokens=max_new_tokens, overwrite=overwrite,
                       ignore_base_mismatch=ignore_base_mismatch)
    for line in summary_lines(metrics):
        typer.echo(line)
    typer.echo(f"wrote {output}")


VIEW_FROM = {"recorded": "the view recorded with the model's training data",
             "recorded+given": "the recorded training view, changed by --view",
             "given": "--view (the model recorded none)",
             "default": "the reader's default view (the model recorded none)"}


@app.command("ask")
def ask_command(
    question: Annotated[str, typer.Argument(help="The question, in quotes.")],
    model: Annotated[str, typer.Option(
        help="Adapter folder of a fine-tuning run, or a model (hub id / folder).")],
    image: Annotated[list[str], typer.Option(
        help="An image file, a DICOM file or a DICOM series folder. Repeat it for several: "
        "all go to the one question, in order.")],
    base: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Base model of the adapter (default: the one it names).")] = None,
    view: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="How DICOM becomes images, over the view recorded with the adapter's training "
        "data (`dicom build-vqa` records it; with none recorded, a montage of 9 axial slices "
        "in lung / mediastinum / bone windows as RGB): key=value pairs joined by commas, e.g. "
        "strategy=slabs,count=4,window=lung (window=40,400 works too), or a JSON object. "
        "Keys: strategy (montage|slabs|slices|mip), count, plane, window, image_size, "
        "layout (grid|sides).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object: answer, model, base, the images and views "
        "used, seconds.")] = False,
    ignore_base_mismatch: Annotated[bool, typer.Option(help=IGNORE_BASE_HELP)] = False,
) -> None:
    """Ask a model one question about images, greedily, as `eval` answers.

    The answer goes to stdout; how each DICOM input was rendered (and whose view was used)
    to stderr. Example: domainvlm ask --model runs/chest/adapter --image scan.png
    "Is there a nodule?"
    """
    import json

    from domainvlm.ask import ask

    asked = ask(model, image, [question], base=base, view=view,
                max_new_tokens=max_new_tokens, ignore_base_mismatch=ignore_base_mismatch)
    if json_output:
        typer.echo(json.dumps(asked.summary(), indent=2))
        return
    for item in asked.inputs:
        if item.description:
            settings = ",".join(f"{k}={v}" for k, v in (item.view or {}).items())
            how = f" [view: {VIEW_FROM[item.view_from]}: {settings}]" if item.view_from else ""
            typer.echo(f"{item.input}: {item.description}{how}", err=True)
    typer.echo(asked.answers[0])


@app.command("probe")
def probe_command(
    model: Annotated[str, typer.Option(help="Model (hub id / folder) or an adapter folder.")],
    train: Annotated[str, typer.Option(help="Questions the probe is fitted on (.jsonl/.json).")],
    test: Annotated[str, typer.Option(help="Questions it is scored on: other images.")],
    output: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Also write the result here as JSON.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUTPUT file.")] = False,
) -> None:
    """Can the closed questions be read off the image features the model's language part
    receives? A logistic regression per question on pooled features, fitted on TRAIN and
    scored on TEST, beside always giving the commonest training answer. Run it on a base
    model before fine-tuning: a probe near the baseline means the vision side must learn."""
    from domainvlm.atomic import write_json
    from domainvlm.evaluation.probe import probe_closed_questions
    from domainvlm.outputs import check_file

    if output is not None:
        check_file(output, inputs=[train, test], overwrite=overwrite)
    result = probe_closed_questions(model, train, test)
    if output is not None:
        write_json(output, result)
    for name, row in result["by_category"].items():
        typer.echo(f"{name}: probe {100 * row['probe_accuracy']:.1f}%, commonest answer "
                   f"{100 * row['baseline_accuracy']:.1f}% ({row['n']} test questions)")
    if output is not None:
        typer.echo(f"wrote {output}")


@app.command("merge")
def merge_command(
    adapter: Annotated[Path, typer.Option(help="Adapter folder of a fine-tuning run.")],
    output: Annotated[Path, typer.Option(help="Folder for the merged model.")],
    base: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Base model (default: the one the adapter names).")] = None,
    overwrite: bool = False,
    ignore_base_mismatch: Annotated[bool, typer.Option(help=IGNORE_BASE_HELP)] = False,
) -> None:
    """Fold a LoRA adapter into its base: a plain transformers model plus processor files."""
    from domainvlm.adapter_io import merge_adapter

    merged = merge_adapter(adapter, output, base=base, overwrite=overwrite,
                           ignore_base_mismatch=ignore_base_mismatch)
    typer.echo(f"wrote {merged}")


@app.command("tiny-model")
def tiny_model_command(
    family: Annotated[TinyFamily, typer.Option(help="Architecture family to build.")],
    output: Annotated[Path, typer.Option(help="Folder to write the model into (new or "
                                          "empty).")],
    seed: int = 0,
    overwrite: Annotated[bool, typer.Option(
        help="Replace a tiny model written there before.")] = False,
) -> None:
    """Write a tiny random model of a real architecture, with tokenizer and processor."""
    from domainvlm.outputs import new_output
    from domainvlm.tiny import build_tiny_model

    with new_output(output, "tiny-model", overwrite=overwrite) as partial:
        build_tiny_model(family.value, partial, seed=seed)
    typer.echo(f"wrote {output} (tiny {family.value} model)")


@app.command("synth-data")
def synth_data_command(
    output: Annotated[Path, typer.Option(help="Folder for the data set (new or empty).")],
    images: Annotated[int, typer.Option(min=2, help="How many scenes.")] = 64,
    seed: int = 0,
    world: Annotated[SynthWorld, typer.Option(
        help="shapes: coloured-shape questions (images, train/eval JSONL); tabletop: robot "
             "camera scenes with boxes (images, COCO instances.json, split.json).")
    ] = SynthWorld.shapes,
    split: Annotated[str, typer.Option(help="tabletop: base/novel split, easy or hard.")] = "easy",
    labels: Annotated[str, typer.Option(
        help="tabletop: 'base' labels base objects only (training), 'all' every object.")
    ] = "all",
    overwrite: Annotated[bool, typer.Option(
        help="Replace a data set written there before.")] = False,
) -> None:
    """Write a small synthetic data set to try the engine on."""
    from domainvlm.outputs import new_output

    with new_output(output, "synth-data", overwrite=overwrite) as partial:
        if world is SynthWorld.tabletop:
            from domainvlm.nano.tabletop_world import write_tabletop

            write_tabletop(partial, split=split, images=images, seed=seed, labels=labels)
            written = {"instances": partial / "instances.json", "split": partial / "split.json"}
        else:
            from domainvlm.nano.shapes_world import write_shapes_dataset

            written = write_shapes_dataset(partial, images, seed)
    for part, path in written.items():
        typer.echo(f"{part}: {output / path.name}")
    typer.echo(f"wrote {output}")


@app.command("info")
def info_command(
    model: Annotated[Optional[str], typer.Argument(  # noqa: UP045
        help="Model or adapter folder to describe.")] = None,
) -> None:
    """Versions, devices, and (given a model) its family, parts and LoRA targets."""
    from domainvlm.info import describe

    for line in describe(model):
        typer.echo(line)


nano_app = typer.Typer(help="The nano models trained here on synthetic scenes: the base model "
                       "(a small FastVLM, the default model of `domainvlm demo`) and the nano "
                       "CLIP (the offline teacher of open-vocabulary detection).",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(nano_app, name="nano")


RECIPE_HELP = ("JSON or YAML file of nano recipe fields (family, size, image_size, "
               "tower_steps, scenes, seed, ...); the rest keep the default recipe's values.")


@nano_app.command("pretrain")
def nano_pretrain_command(
    force: Annotated[bool, typer.Option(
        help="Build it again from scratch, even if it is cached or shipped.")] = False,
    recipe: Annotated[Optional[Path], typer.Option(help=RECIPE_HELP)] = None,  # noqa: UP045
) -> None:
    """Pretrain the nano model from its recipe into the cache (about half an hour on 2 CPU
    cores; the package ships the default recipe's result); later runs reuse it.
    Deterministic by the recipe's seed."""
    from domainvlm.nano import DEFAULT_RECIPE, ensure_nano, load_recipe, rebuild_nano

    chosen = load_recipe(recipe) if recipe else DEFAULT_RECIPE
    typer.echo(f"nano model: {rebuild_nano(chosen) if force else ensure_nano(chosen)}")


@nano_app.command("path")
def nano_path_command(
    recipe: Annotated[Optional[Path], typer.Option(help=RECIPE_HELP)] = None,  # noqa: UP045
) -> None:
    """Print where the nano model is (or will be) cached, and whether it is built."""
    from domainvlm.nano import DEFAULT_RECIPE, load_recipe, nano_path

    path = nano_path(load_recipe(recipe) if recipe else DEFAULT_RECIPE)
    typer.echo(f"{path}  ({'built' if (path / 'config.json').is_file() else 'not built yet'})")


@nano_app.command("clip")
def nano_clip_command(
    force: Annotated[bool, typer.Option(
        help="Train it again from its recipe (a few minutes on 2 CPU cores), even though "
             "the package ships it.")] = False,
) -> None:
    """Print the folder of the nano CLIP (a transformers dual encoder), assembling it in the
    cache on first use."""
    from domainvlm.nano.clip import nano_clip_path, retrain_nano_clip

    if force:
        retrain_nano_clip()
    typer.echo(f"nano CLIP: {nano_clip_path()}")


app.command("distill")(distill_command)
app.command("detect")(detect_command)


def _add_plugin_commands() -> None:
    """Commands of the other parts (`dicom` and `demo` from domainvlm.medical).

    They register under the `domainvlm.commands` entry-point group, so the core CLI needs no
    import of them: the dependency points inward.
    """
    from importlib.metadata import entry_points

    for entry in entry_points(group="domainvlm.commands"):
        command = entry.load()
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=entry.name)
        else:
            app.command(entry.name)(command)


_add_plugin_commands()


def main() -> None:
    """Run the CLI. Exit codes: 0 done, 1 done but some inputs were skipped (listed) or an
    unexpected error, 2 bad input or an error the user can fix (one `error:` line), 130
    interrupted. `--debug` (or DOMAINVLM_DEBUG=1) shows the traceback instead."""
    from domainvlm.errors import DomainVLMError, os_error_line

    try:
        code = app(standalone_mode=False, prog_name="domainvlm")
    except typer.Exit as done:
        code = done.exit_code
    except typer.TyperException as exc:  # bad or missing options and arguments
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as click does
            typer.echo(exc.format_message(), err=True)
            sys.exit(2)
        where = exc.ctx.command_path if getattr(exc, "ctx", None) else "domainvlm"
        _fail(f"{exc.format_message()} (see `{where} --help`)", exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130, prefix="")
    except DomainVLMError as exc:
        _fail(str(exc), 2)
    except OSError as exc:
        _fail(os_error_line(exc), 2)
    except Exception as exc:  # a bug, or an input we do not handle yet: still one line
        _fail(f"unexpected {type(exc).__name__}: {exc} (a bug in domainvlm or an input it does "
              "not handle yet; run with --debug for the traceback and report it)", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, prefix: str = "error: ") -> None:
    if _DEBUG:
        raise
    first = " ".join(message.split("\n")[0].split()) if prefix else message
    rest = message.split("\n")[1:]
    typer.echo(f"{prefix}{first}", err=True)
    for line in rest:  # listed items (several bad records), indented under the one line
        typer.echo(f"  {line.strip()}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
