"""Loading through the Auto classes: hub ids and folders alike, clear errors otherwise."""

from __future__ import annotations

import pytest
import torch
from testkit import ALL_FAMILIES

from domainvlm.errors import ConfigError, ModelLoadError
from domainvlm.families import GENERIC_PATH_FAMILIES
from domainvlm.loading import load_model, pick_dtype, resolve_source


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_family_loads_with_its_registry_entry(tiny_models, family):
    loaded = load_model(str(tiny_models(family)))
    # Mllama has no entry: it is the tiny family that runs through the generic path.
    assert loaded.family.name == ("generic" if family in GENERIC_PATH_FAMILIES else family)
    assert loaded.model.device.type == "cpu"
    assert next(loaded.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize(("requested", "device", "expected"), [
    ("auto", "cpu", torch.float32),
    ("bfloat16", "cpu", torch.bfloat16),
    ("float16", "cuda", torch.float16),
    ("float32", "cuda", torch.float32),
])
def test_dtype_choice(requested, device, expected):
    assert pick_dtype(requested, device) is expected


def test_bad_dtype_names_the_flag():
    with pytest.raises(ConfigError, match="`--dtype`.*'int3'"):
        pick_dtype("int3", "cpu")


@pytest.mark.parametrize(("source", "message"), [
    ("./missing-model", "model folder ./missing-model does not exist"),
    ("/abs/missing", "does not exist"),
    ("a/b/c", "does not exist"),
])
def test_missing_folders_are_errors_before_any_download(source, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_source(source)


def test_hub_ids_pass_through_and_offline_miss_is_explained():
    assert resolve_source("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1"):
        load_model("llava-hf/llava-1.5-7b-hf")


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_source(str(tmp_path))


def test_resolution_knob_applies_to_qwen_only(tiny_models):
    loaded = load_model(str(tiny_models("qwen2-vl")), resolution={"max_pixels": 64 * 64})
    assert loaded.processor.image_processor.size["longest_edge"] == 64 * 64
    with pytest.raises(ConfigError, match="`max_pixels` does not apply to the llava family"):
        load_model(str(tiny_models("llava")), resolution={"max_pixels": 4096})
