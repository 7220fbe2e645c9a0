"""The nano recipe: a FastVLM whose tower first learns to find spots, then our engine trains
its projector and language model on the synthetic worlds; cached, and plain transformers loads
the result. A shrunken recipe keeps this fast."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from testkit import TINY_NANO_RECIPE as RECIPE
from transformers import AutoModelForImageTextToText, AutoProcessor

from domainvlm.errors import OutputExistsError
from domainvlm.models.random_init import write_random_model
from domainvlm.nano import (
    DEFAULT_RECIPE,
    RECIPE_FILE,
    ensure_nano,
    load_recipe,
    nano_path,
    pretrain_nano,
    tower_path,
)


@pytest.fixture(scope="module")
def nano(tiny_nano):
    return tiny_nano  # built from RECIPE by the conftest fixture


def test_pretrained_nano_loads_with_plain_transformers_and_says_what_it_is(nano):
    assert nano == nano_path(RECIPE)
    model = AutoModelForImageTextToText.from_pretrained(nano)
    processor = AutoProcessor.from_pretrained(nano)
    assert type(model).__name__ == "FastVlmForConditionalGeneration"
    assert next(model.parameters()).dtype == torch.float32  # stored as float16, loads as 32
    assert processor.image_processor.crop_size["height"] == RECIPE.image_size
    assert json.loads((nano / "recipe.json").read_text())["scenes"] == RECIPE.scenes
    card = (nano / "README.md").read_text()
    assert "What it is not" in card and RECIPE.key() in card


def test_every_weight_was_trained(nano, tmp_path):
    write_random_model(RECIPE.family, tmp_path / "random", seed=RECIPE.seed,
                       image_size=RECIPE.image_size, size=RECIPE.size)
    random_init = AutoModelForImageTextToText.from_pretrained(tmp_path / "random")
    trained = AutoModelForImageTextToText.from_pretrained(nano)
    before = dict(random_init.named_parameters())
    # The shipped weights are float16 on disk: compare with the random init rounded the same way.
    changed = {name: not torch.equal(before[name].half().float(), p)
               for name, p in trained.named_parameters()}
    parts = {"vision_tower", "multi_modal_projector", "language_model"}
    for part in parts:  # the tower by its pretext, the rest by full fine-tuning
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
    assert (DEFAULT_RECIPE.key() != replace(DEFAULT_RECIPE, seed=1).key()
            != replace(DEFAULT_RECIPE, scenes=10).key())


def test_the_shipped_recipe_file_is_the_shipped_model_s_recipe(tmp_path):
    """recipe.yaml is the one home of the defaults: it must name every field and equal the
    recipe the shipped weights were built from (assets/nano/recipe.json, written by the
    build); a user's file keeps the values it leaves out."""
    from dataclasses import asdict

    from domainvlm.nano import SHIPPED

    assert asdict(DEFAULT_RECIPE) == json.loads((SHIPPED / "recipe.json").read_text())
    assert load_recipe(RECIPE_FILE) == DEFAULT_RECIPE
    partial = tmp_path / "mine.yaml"
    partial.write_text("seed: 7\n")
    assert load_recipe(partial) == replace(DEFAULT_RECIPE, seed=7)


def test_shipped_nano_is_the_default_recipe_and_loads():
    from domainvlm.nano import SHIPPED, shipped_nano

    assert shipped_nano(DEFAULT_RECIPE) == SHIPPED
    assert shipped_nano(replace(DEFAULT_RECIPE, seed=99)) is None
    model = AutoModelForImageTextToText.from_pretrained(SHIPPED)
    assert 7_000_000 < sum(p.numel() for p in model.parameters()) < 8_000_000
    assert (SHIPPED / "model.safetensors").stat().st_size < 25 * 2**20  # float16 on disk
    assert AutoProcessor.from_pretrained(SHIPPED).image_processor.crop_size["height"] == (
        DEFAULT_RECIPE.image_size)
    assert "What it is not" in (SHIPPED / "README.md").read_text()


def test_tower_stage_is_cached_apart_and_reused_by_language_stage_changes(nano, tmp_path):
    from dataclasses import replace

    from domainvlm.nano import nano_cache_root

    tower = nano_cache_root() / f"tower-{RECIPE.tower_key()}"
    stamp = (tower / "model.safetensors").stat().st_mtime_ns
    other_language_stage = replace(RECIPE, scenes=RECIPE.scenes + 2)
    assert other_language_stage.tower_key() == RECIPE.tower_key()
    assert other_language_stage.key() != RECIPE.key()
    assert replace(RECIPE, tower_steps=RECIPE.tower_steps + 1).tower_key() != RECIPE.tower_key()
    pretrain_nano(tmp_path / "other", other_language_stage)
    assert (tower / "model.safetensors").stat().st_mtime_ns == stamp  # not trained again
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "other").state_dict()
    pretext = AutoModelForImageTextToText.from_pretrained(tower).state_dict()
    vision = [k for k in pretext if "vision_tower" in k]
    assert vision and all(torch.equal(trained[k], pretext[k].half().float()) for k in vision)


def test_tower_pretext_needs_a_convolutional_tower(tmp_path):
    recipe = replace(DEFAULT_RECIPE, family="llava", size="tiny", image_size=64,
                     tower_steps=2, scenes=4, findings_scenes=0)
    with pytest.raises(ValueError, match="convolutional .* set tower_steps=0"):
        pretrain_nano(tmp_path / "nano", recipe)
    assert list(tmp_path.iterdir()) == []  # no model, no half-written hidden folder
    assert not tower_path(recipe).exists()


def test_nano_fed_a_larger_input_keeps_its_weights_and_runs(nano, tmp_path):
    from PIL import Image

    from domainvlm.nano import with_input_size

    size = 2 * RECIPE.image_size
    larger = with_input_size(nano, size, tmp_path / "larger")
    model = AutoModelForImageTextToText.from_pretrained(larger)
    processor = AutoProcessor.from_pretrained(larger)
    assert processor.image_processor.crop_size == {"height": size, "width": size}
    assert model.config.image_seq_length == (size // 32) ** 2 == 4 * (RECIPE.image_size // 32) ** 2
    original = AutoModelForImageTextToText.from_pretrained(nano).state_dict()
    assert all(torch.equal(p, original[k]) for k, p in model.state_dict().items())
    inputs = processor(images=[Image.new("RGB", (size, size))],
                       text=["<image>\nIs there a spot?"], return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (size, size)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == (
        model.config.image_seq_length)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
    with pytest.raises(ValueError, match="multiple of 32"):
        with_input_size(nano, size + 8, tmp_path / "odd")
    # An earlier copy is never overwritten, nor mixed with a new one.
    with pytest.raises(OutputExistsError, match="already exists"):
        with_input_size(nano, 3 * RECIPE.image_size, larger)
    assert AutoProcessor.from_pretrained(larger).image_processor.crop_size["height"] == size
    assert sorted(p.name for p in larger.iterdir()) == sorted(p.name for p in nano.iterdir())


def test_only_a_convolutional_tower_takes_another_input_size(tiny_models, tmp_path):
    from domainvlm.nano import with_input_size

    with pytest.raises(ValueError, match="not a FastVLM"):
        with_input_size(tiny_models("llava"), 128, tmp_path / "llava")


def test_pretrain_force_rebuilds_even_when_a_model_of_the_recipe_is_at_hand(
        nano, tmp_path, monkeypatch):
    """`nano pretrain --force --recipe FILE` through the CLI: the recipe's model is shipped
    (here a copy of the one built for it), yet --force builds it again, into the cache."""
    from dataclasses import asdict

    from typer.testing import CliRunner

    import domainvlm.nano.model
    from domainvlm.cli import app

    shipped = shutil.copytree(nano, tmp_path / "shipped")
    monkeypatch.setattr(domainvlm.nano.model, "SHIPPED", shipped)
    monkeypatch.setenv("DOMAINVLM_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(asdict(RECIPE)))
    runner = CliRunner()

    plain = runner.invoke(app, ["nano", "pretrain", "--recipe", str(recipe)])
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.strip() == f"nano model: {shipped}"  # at hand without building

    forced = runner.invoke(app, ["nano", "pretrain", "--force", "--recipe", str(recipe)])
    assert forced.exit_code == 0, forced.output
    built = nano_path(RECIPE)
    assert built.is_relative_to(tmp_path / "cache")
    assert forced.stdout.strip() == f"nano model: {built}"
    assert tower_path(RECIPE).is_dir()  # both stages ran here, the tower one too
    # Built, not copied: the same recipe gives the same weights as the session's build.
    first = AutoModelForImageTextToText.from_pretrained(nano).state_dict()
    again = AutoModelForImageTextToText.from_pretrained(built).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)

    # Now cached, and --force still builds again (replacing the cached model when done).
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    forced = runner.invoke(app, ["nano", "pretrain", "--force", "--recipe", str(recipe)])
    assert forced.exit_code == 0, forced.output
    assert (built / "model.safetensors").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in built.parent.iterdir()) == sorted(
        [built.name, tower_path(RECIPE).name])  # no temp folder left


@pytest.mark.parametrize(("text", "message"), [
    ('{"scenes": 4, "colour": 1}', "unknown key `colour`; valid keys: family, size"),
    ('{"learning_rate": "fast"}', "`learning_rate` must be a finite float, got 'fast'"),
    ("tower_learning_rate: .inf", "`tower_learning_rate` must be a finite float, got inf"),
    ('{"scenes": -3}', "`scenes` cannot be negative, got -3"),
    ("[1, 2]", "must hold a mapping")])
def test_a_bad_recipe_file_is_one_clear_line(tmp_path, text, message):
    import subprocess
    import sys

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    result = subprocess.run([sys.executable, "-m", "domainvlm.cli", "nano", "path",
                             "--recipe", str(recipe)], capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: recipe file {recipe}: {message}"), result.stderr


def test_a_recipe_file_picks_where_its_model_is_cached(tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("size: tiny\nimage_size: 64\nseed: 3\n")
    result = subprocess.run([sys.executable, "-m", "domainvlm.cli", "nano", "path",
                             "--recipe", str(recipe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    expected = nano_path(replace(DEFAULT_RECIPE, size="tiny", image_size=64, seed=3))
    assert result.stdout.strip() == f"{expected}  (not built yet)"
