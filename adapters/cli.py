"""`domainvlm adapters ...`: the adapter store from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from domainvlm.adapters.store import ENV

app = typer.Typer(help="The adapter store: add, list, show, remove, export and import "
                  "trained adapters as name@version.", no_args_is_help=True,
                  rich_markup_mode=None)

Store = Annotated[Optional[Path], typer.Option(  # noqa: UP045 (typer needs Optional)
    "--store", envvar=ENV, show_default=False, show_envvar=False,
    help=f"The store folder. Default: ${ENV} if set, else "
    "$XDG_DATA_HOME/domainvlm/adapters (~/.local/share/domainvlm/adapters).")]


def _open(store: Path | None):
    from domainvlm.adapters.store import AdapterStore, default_root

    return AdapterStore(store or default_root())


@app.command("add")
def add_command(
    source: Annotated[Path, typer.Argument(
        help="A `domainvlm finetune` run folder (run.json and adapter/) or an adapter folder.")],
    name: Annotated[str, typer.Argument(
        help="The adapter's name: lower-case letters, digits, '.', '_', '-'.")],
    version: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Version label (default: the next whole number: 1, 2, ...).")] = None,
    intended_use: Annotated[str, typer.Option(
        help="What it is for, and what not (kept in its card).")] = "",
    licence: Annotated[str, typer.Option(help="Its licence (kept in its card).")] = "",
    metrics: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Output folder of `domainvlm eval` on this adapter (its metrics.json).")] = None,
    store: Store = None,
) -> None:
    """Keep an adapter in the store as name@version, with a card: its base model, a fingerprint
    of its training data, its metrics and the sha256 of every file."""
    from domainvlm.adapters import sources

    opened = _open(store)
    card = opened.add(source, name, version=version, intended_use=intended_use,
                      licence=licence, metrics=metrics)
    folder = opened.path(card.ref, verify=False)
    if not card.mixable:
        why = sources.mixing_blocker(folder, json.loads(
            (folder / sources.ADAPTER_CONFIG).read_text(encoding="utf-8")))
        typer.echo(f"note: {card.ref} is answered in batches of its own: {why}")
    typer.echo(f"wrote {folder} ({card.ref})")


@app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the cards as JSON.")] = False,
    store: Store = None,
) -> None:
    """The stored adapters: name@version, base model, when added, headline metric, and whether
    it shares batches with other adapters (mixable)."""
    opened = _open(store)
    cards = opened.list()
    if as_json:
        typer.echo(json.dumps([card.to_json() for card in cards], indent=2))
        return
    if not cards:
        typer.echo(f"no adapters in {opened.root}")
        return
    rows = [("ADAPTER", "BASE", "CREATED", "METRICS", "MIXABLE")]
    rows += [(c.ref, c.base.get("source", "?"), c.created, _headline(c.metrics),
              "yes" if c.mixable else "no") for c in cards]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                     strict=True)).rstrip())


def _headline(metrics: dict[str, Any] | None) -> str:
    """VQA accuracy over n questions, the first number `domainvlm eval` reports."""
    vqa = (metrics or {}).get("vqa")
    if isinstance(vqa, dict) and isinstance(vqa.get("accuracy"), int | float):
        return f"vqa accuracy {vqa['accuracy']:.3f} (n={metrics.get('n', '?')})"
    return "-"


@app.command("show")
def show_command(
    ref: Annotated[str, typer.Argument(help="name@version, or name for its latest version.")],
    store: Store = None,
) -> None:
    """Print an adapter's card (JSON)."""
    typer.echo(json.dumps(_open(store).card(ref).to_json(), indent=2))


@app.command("rm")
def rm_command(
    ref: Annotated[str, typer.Argument(help="name@version (the version must be named).")],
    store: Store = None,
) -> None:
    """Delete an adapter version from the store."""
    opened = _open(store)
    card = opened.remove(ref)
    typer.echo(f"removed {card.ref} from {opened.root}")


@app.command("export")
def export_command(
    archive: Annotated[Path, typer.Argument(help="The .tar file to write.")],
    refs: Annotated[Optional[list[str]], typer.Argument(  # noqa: UP045
        help="Adapters to export (name@version or name); default: all.", show_default=False)
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace ARCHIVE if it exists.")] = False,
    store: Store = None,
) -> None:
    """Write adapters, checked against their cards, with their cards into one .tar file (for
    another store: `domainvlm adapters import`)."""
    typer.echo(f"wrote {_open(store).export(archive, refs or None, overwrite=overwrite)}")


@app.command("import")
def import_command(
    archive: Annotated[Path, typer.Argument(help="A .tar written by `domainvlm adapters export`.")],
    overwrite: Annotated[bool, typer.Option(
        help="Replace a name@version the store holds with other content.")] = False,
    store: Store = None,
) -> None:
    """Add the adapters of an exported archive; every file is checked against its card first,
    and nothing is added if one fails. Adapters already stored with the same content are left
    as they are."""
    from domainvlm.adapters.archive import listed

    opened = _open(store)
    written = opened.import_archive(archive, overwrite=overwrite)
    for card in written:
        typer.echo(f"wrote {opened.path(card.ref, verify=False)} ({card.ref})")
    same = [ref for ref in listed(archive) if ref not in {card.ref for card in written}]
    if same:
        typer.echo(f"unchanged (already in the store with the same content): {', '.join(same)}")
