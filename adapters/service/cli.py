"""`domainvlm serve`: run the REST service; `domainvlm serve keys ...`: its API keys."""

from __future__ import annotations

import typer

app = typer.Typer(help="Serve adapters over REST.", no_args_is_help=True,
                  rich_markup_mode=None)
