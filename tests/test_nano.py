"""The nano recipe: our engine fully fine-tunes a tiny LLaVA on the synthetic world, caches it,
and plain transformers loads the result. A shrunken recipe keeps this fast."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from domainvlm.nano import NanoRecipe, ensure_nano, nano_path, pretrain_nano
from domainvlm.tiny import build_tiny_model

RECIPE = NanoRecipe(size="tiny", image_size=64, scenes=12, epochs=1.0, batch_size=8)


@pytest.fixture(scope="module")
def nano(tiny_nano):
    return tiny_nano  # built from RECIPE (the conftest fixture uses the same settings)


def test_pretrained_nano_loads_with_plain_transformers_and_says_what_it_is(nano):
    assert nano == nano_path(RECIPE)
    model = AutoModelForImageTextToText.from_pretrained(nano)
    processor = AutoProcessor.from_pretrained(nano)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.image_processor.crop_size["height"] == RECIPE.image_size
    assert json.loads((nano / "recipe.json").read_text())["scenes"] == RECIPE.scenes
    card = (nano / "README.md").read_text()
    assert "What it is not" in card and RECIPE.key() in card


def test_every_weight_was_trained(nano, tmp_path):
    random_init = AutoModelForImageTextToText.from_pretrained(
        build_tiny_model("llava", tmp_path / "random", seed=RECIPE.seed,
                         image_size=RECIPE.image_size, size=RECIPE.size))
    trained = AutoModelForImageTextToText.from_pretrained(nano)
    before = dict(random_init.named_parameters())
    changed = {name: not torch.equal(before[name], p) for name, p in trained.named_parameters()}
    parts = {"vision_tower", "multi_modal_projector", "language_model"}
    for part in parts:  # full fine-tuning: every component moved, not only LoRA layers
        assert any(c for n, c in changed.items() if part in n), part


def test_cached_model_is_reused_and_same_recipe_gives_same_weights(nano, tmp_path):
    stamp = (nano / "model.safetensors").stat().st_mtime_ns
    assert ensure_nano(RECIPE) == nano
    assert (nano / "model.safetensors").stat().st_mtime_ns == stamp
    again = pretrain_nano(tmp_path / "again", RECIPE)
    first = AutoModelForImageTextToText.from_pretrained(nano).state_dict()
    second = AutoModelForImageTextToText.from_pretrained(again).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_recipe_key_changes_with_any_setting():
    assert NanoRecipe().key() != NanoRecipe(seed=1).key() != NanoRecipe(scenes=10).key()


def test_shipped_nano_is_the_default_recipe_and_loads():
    from domainvlm.nano import DEFAULT_RECIPE, SHIPPED, shipped_nano

    assert shipped_nano(DEFAULT_RECIPE) == SHIPPED
    assert shipped_nano(NanoRecipe(seed=99)) is None
    model = AutoModelForImageTextToText.from_pretrained(SHIPPED)
    assert 4_000_000 < sum(p.numel() for p in model.parameters()) < 6_000_000
    assert AutoProcessor.from_pretrained(SHIPPED).image_processor.crop_size["height"] == (
        DEFAULT_RECIPE.image_size)
    assert "What it is not" in (SHIPPED / "README.md").read_text()
