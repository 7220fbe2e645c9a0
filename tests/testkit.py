"""Helpers that test modules import (`from testkit import ...`); fixtures live in conftest.py.

Not in conftest.py: test folders have conftest.py files of their own, and `from conftest
import` would find whichever was imported last.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

from domainvlm.nano import DEFAULT_RECIPE
from domainvlm.tiny import FAMILIES

ALL_FAMILIES = list(FAMILIES)
# The shipped recipe (domainvlm/nano/recipe.yaml), shrunk: every test run trains it.
TINY_NANO_RECIPE = replace(DEFAULT_RECIPE, size="tiny", image_size=64, tower_steps=6,
                           tower_batch_size=4, scenes=12, findings_scenes=8, epochs=1.0,
                           batch_size=8)


def run_cli(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `domainvlm ARGS`, in this process."""
    monkeypatch.setattr(sys, "argv", ["domainvlm", *map(str, args)])
    from domainvlm import cli

    monkeypatch.setattr(cli, "_DEBUG", False)
    with pytest.raises(SystemExit) as done:
        cli.main()
    out, err = capsys.readouterr()
    return done.value.code, out, err
