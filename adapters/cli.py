"""`domainvlm adapters ...`: the adapter store from the command line."""

from __future__ import annotations

import typer

app = typer.Typer(help="The adapter store: add, list, show, remove, export and import "
                  "trained adapters as name@version.", no_args_is_help=True,
                  rich_markup_mode=None)
