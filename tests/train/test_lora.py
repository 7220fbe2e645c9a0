"""Where LoRA goes on every family: Linear layers of the chosen parts, never Conv or lm_head."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from testkit import ALL_FAMILIES

from domainvlm.errors import ConfigError
from domainvlm.train.lora import apply_lora, parameter_report, select_targets

# The test's own map of module paths to parts (the projector first: Qwen keeps its merger
# inside the vision tower), written out rather than taken from the code under test.
PARTS = {
    "projector": {"multi_modal_projector", "connector", "merger"},
    "vision": {"vision_tower", "visual", "vision_model"},
    "language": {"language_model", "text_model"},
}
# Each family's vision patch embedding, which LoRA must never wrap.
PATCH_EMBED = {
    "llava": ("model.vision_tower.embeddings.patch_embedding", torch.nn.Conv2d),
    "llava-next": ("model.vision_tower.embeddings.patch_embedding", torch.nn.Conv2d),
    "qwen2-vl": ("model.visual.patch_embed.proj", torch.nn.Conv3d),
    "qwen2.5-vl": ("model.visual.patch_embed.proj", torch.nn.Conv3d),
    "idefics3": ("model.vision_model.embeddings.patch_embedding", torch.nn.Conv2d),
    "paligemma": ("model.vision_tower.embeddings.patch_embedding", torch.nn.Conv2d),
    "fast-vlm": ("model.vision_tower.timm_model.stem.0.conv_kxk.0.conv", torch.nn.Conv2d),
    "mllama": ("model.vision_model.patch_embedding", torch.nn.Conv2d),
}
ALL_PARTS = ["language", "vision", "projector"]
# FastViT-T8 towers are convolutions only: LoRA has no Linear layer to wrap there.
NO_VISION_LINEARS = {"fast-vlm"}


def wrappable(family: str, components) -> set[str]:
    """The parts where LoRA finds Linear layers on this family."""
    return set(components) - ({"vision"} if family in NO_VISION_LINEARS else set())


def part_of(name: str) -> str:
    pieces = set(name.split("."))
    return next((part for part, names in PARTS.items() if names & pieces), "other")


@pytest.fixture(scope="module")
def base_models(tiny_models):
    """family -> a loaded tiny model; tests work on deep copies (PEFT edits in place)."""
    from transformers import AutoModelForImageTextToText

    loaded: dict[str, torch.nn.Module] = {}

    def get(family: str) -> torch.nn.Module:
        if family not in loaded:
            loaded[family] = AutoModelForImageTextToText.from_pretrained(tiny_models(family))
        return copy.deepcopy(loaded[family])

    return get


def linears(model, parts) -> set[str]:
    return {name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and part_of(name) in parts}


def wrapped(peft_model) -> dict[str, torch.nn.Module]:
    """Name in the base model -> the layer a LoRA adapter wraps."""
    return {name.removeprefix("base_model.model."): module.get_base_layer()
            for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)}


def lora(model, components=("language",), method="lora"):
    return apply_lora(model, method=method, r=4, alpha=8, dropout=0.0,
                      components=list(components))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_default_targets_wrap_only_language_linears(base_models, family):
    model = base_models(family)
    expected = linears(model, {"language"})
    layers = wrapped(lora(model))
    assert expected and set(layers) == expected
    assert {part_of(name) for name in layers} == {"language"}
    assert all(type(layer) is torch.nn.Linear for layer in layers.values())
    assert not any(name.split(".")[-1] == "lm_head" for name in layers)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_all_parts_add_vision_and_projector_but_no_conv_or_head(base_models, family):
    model = base_models(family)
    every_linear = {name for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear)}
    convs = {name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d)}
    patch_name, patch_type = PATCH_EMBED[family]
    assert type(dict(model.named_modules())[patch_name]) is patch_type
    peft_model = lora(model, ALL_PARTS)
    layers = wrapped(peft_model)
    assert set(layers) == every_linear - {"lm_head"}
    assert {part_of(name) for name in layers} == wrappable(family, ALL_PARTS)
    assert not convs & set(layers)
    assert all(isinstance(layer, torch.nn.Linear) for layer in layers.values())
    # The patch embedding and the output head are untouched modules of the wrapped model.
    modules = dict(peft_model.base_model.model.named_modules())
    assert type(modules[patch_name]) is patch_type
    assert type(modules["lm_head"]) is torch.nn.Linear


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("components", [["language"], ["vision"], ["projector"], ALL_PARTS])
def test_select_targets_given_to_peft_wraps_exactly_those_layers(base_models, family,
                                                                 components):
    model = base_models(family)
    if not wrappable(family, components):
        with pytest.raises(ConfigError, match=r"no Linear layers found in \['vision'\]"):
            select_targets(model, components)
        return
    targets = select_targets(model, components)
    expected = linears(model, set(components))
    if isinstance(targets, str):
        matched = {name for name, _ in model.named_modules() if re.fullmatch(targets, name)}
        assert matched == expected
    else:
        assert sorted(targets) == sorted(expected)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    assert set(wrapped(peft_model)) == expected


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("components", [["language"], ALL_PARTS])
def test_parameter_report_matches_a_manual_count(base_models, family, components):
    peft_model = lora(base_models(family), components)
    manual: dict[str, list[int]] = {}
    for name, param in peft_model.named_parameters():
        row = manual.setdefault(part_of(name), [0, 0])
        row[0] += param.numel() if param.requires_grad else 0
        row[1] += param.numel()
    report = parameter_report(peft_model)
    assert report.rows == {part: tuple(row) for part, row in manual.items()}
    adapter = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert report.trainable == adapter > 0
    assert report.total == sum(p.numel() for p in peft_model.parameters())
    for part in ALL_PARTS:
        trainable = report.rows[part][0]
        assert (trainable > 0) == (part in wrappable(family, components)), part


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize(("method", "dora"), [("lora", False), ("dora", True)])
def test_dora_adds_magnitude_vectors(base_models, family, method, dora):
    peft_model = lora(base_models(family), method=method)
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    assert layers
    assert all(("default" in m.lora_magnitude_vector) is dora for m in layers)
    magnitudes = [n for n, p in peft_model.named_parameters()
                  if "lora_magnitude_vector" in n and p.requires_grad]
    assert len(magnitudes) == (len(layers) if dora else 0)
    assert peft_model.peft_config["default"].use_dora is dora


class NoKnownParts(torch.nn.Module):
    """Linear layers under names no VLM uses."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
        self.decoder = torch.nn.Linear(4, 4)
        self.lm_head = torch.nn.Linear(4, 2)


@pytest.mark.parametrize(("components", "unknown_model"), [
    ([], False),
    (["vison"], False),
    (["language"], True),
    (ALL_PARTS, True),
])
def test_nothing_to_wrap_is_a_config_error(base_models, components, unknown_model):
    model = NoKnownParts() if unknown_model else base_models("llava")
    with pytest.raises(ConfigError, match=r"no Linear layers found in .*language_model"):
        select_targets(model, components)
    with pytest.raises(ConfigError, match="no Linear layers found"):
        lora(model, components)


def test_a_part_trained_fully_is_wholly_trainable_and_counted_once(base_models):
    model = base_models("fast-vlm")
    projector = sum(p.numel() for n, p in model.named_parameters() if part_of(n) == "projector")
    peft_model = apply_lora(model, method="lora", r=4, alpha=8, dropout=0.0,
                            components=["language"], fully=["projector"])
    assert parameter_report(peft_model).rows["projector"] == (projector, projector)
    assert not any(isinstance(m, LoraLayer) and part_of(n) == "projector"
                   for n, m in peft_model.named_modules())


@pytest.mark.parametrize(("family", "tower"), [("qwen2-vl", "model.visual"),
                                               ("fast-vlm", "model.vision_tower")])
def test_untrained_parts_stay_in_eval_mode_and_a_nested_projector_trains(base_models, family,
                                                                          tower):
    # Qwen keeps its projector (the merger) inside the vision tower: LoRA on the projector
    # must train it while the rest of the tower stays frozen and in eval mode.
    from domainvlm.train.lora import train_mode, untrained_modules

    peft_model = lora(base_models(family), ["language", "projector"])
    train_mode(peft_model, untrained_modules(peft_model))
    modules = dict(peft_model.base_model.model.named_modules())
    assert not modules[tower].training
    projector = [m for n, m in modules.items() if part_of(n) == "projector"]
    assert projector and all(m.training for m in projector)
    language = [m for n, m in modules.items() if part_of(n) == "language"]
    assert all(m.training for m in language)
    trainable = {part_of(n) for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {"language", "projector"}
