"""Every shipped YAML config loads and validates, so configs never rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from domainvlm.train.config import build_config, load_yaml

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path):
    config = build_config(load_yaml(path), source=str(path))
    assert config.lora_r > 0 and config.output.parts
