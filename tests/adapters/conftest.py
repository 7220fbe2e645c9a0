"""Fixtures of the adapter tests: a store stocked with every kind of adapter, built once."""

from __future__ import annotations

import pytest
from stocked import Stocked, stock


@pytest.fixture(scope="session")
def world(tiny_models, tmp_path_factory) -> Stocked:
    """The tiny LLaVA and a store of its adapters (tests may add more, never remove)."""
    return stock(tmp_path_factory.mktemp("stocked"), tiny_models("llava"))
