"""The nano CLIP: the shipped tensors assemble into a folder plain transformers loads, it names
held-out tabletop objects (oracle: the world's own labels), its text space keeps the meaning
of words it was never trained on, and its training path is the loaded model's."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torchvision.ops import box_iou
from transformers import AutoProcessor, VisionTextDualEncoderModel

from domainvlm.detection.teacher import BACKGROUND_PROMPT, Teacher
from domainvlm.nano.clip import (
    DEFAULT_CLIP_RECIPE,
    SHIPPED_CLIP,
    TENSORS,
    NanoClipRecipe,
    nano_clip_path,
    retrain_nano_clip,
    text_tower_path,
)
from domainvlm.nano.clip_training import (
    TRAIN_TEMPLATES,
    background_boxes,
    caption_states,
    contrastive_loss,
)
from domainvlm.nano.tabletop_world import SPLITS, VOCABULARY, render_scene, scene_seed
from domainvlm.progress import Reporter

HELD_OUT = 424_242  # a seed no training used (training scenes come from the recipe's seed)


@pytest.fixture(scope="module")
def folder():
    return nano_clip_path()


@pytest.fixture(scope="module")
def teacher(folder) -> Teacher:
    return Teacher.load()


def test_the_shipped_tensors_assemble_into_a_folder_plain_transformers_loads(folder):
    assert sorted(p.name for p in SHIPPED_CLIP.iterdir()) == ["README.md", "recipe.json",
                                                              TENSORS]
    assert (SHIPPED_CLIP / TENSORS).stat().st_size <= 10_000_000
    # the shipped tensors are the default recipe's (else the first use would train anew)
    assert json.loads((SHIPPED_CLIP / "recipe.json").read_text()) == asdict(DEFAULT_CLIP_RECIPE)
    model = VisionTextDualEncoderModel.from_pretrained(folder)
    assert AutoProcessor.from_pretrained(folder).image_processor.crop_size["height"] == \
        json.loads((SHIPPED_CLIP / "recipe.json").read_text())["image_size"]
    state = model.state_dict()
    shipped = load_file(SHIPPED_CLIP / TENSORS)
    for name, value in shipped.items():
        assert value.dtype == torch.float16 and torch.equal(state[name], value.float()), name
    frozen = {f"text_model.{k}": v for k, v in load_file(
        text_tower_path() / "model.safetensors").items()
        if not k.startswith("pooler.") and not k.endswith("position_ids")}  # a buffer, not saved
    assert frozen and all(torch.equal(state[k], v) for k, v in frozen.items())
    assert set(state) == set(shipped) | set(frozen)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert nano_clip_path() == folder  # assembled once
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_the_shipped_teacher_names_held_out_tabletop_objects(teacher):
    assert teacher.name == "nano-clip"
    names, regions, empty = [], [], []
    for index in range(16):
        image, objects = render_scene(scene_seed(HELD_OUT, index), split="hard")
        boxes = torch.tensor([o.box for o in objects])
        names += [o.category for o in objects]
        regions.append(teacher.embed_regions(image, boxes))
        bare = torch.tensor(background_boxes([o.box for o in objects], image.size,
                                             np.random.default_rng(index), 2))
        assert (box_iou(bare, boxes) < 0.3).all()  # truly bare: no object under them
        empty.append(teacher.classify_regions(image, bare, list(VOCABULARY)).probs)
    text = teacher.embed_text(list(VOCABULARY))
    guess = [VOCABULARY[i] for i in (torch.cat(regions) @ text.T).argmax(dim=1)]
    right = [g == n for g, n in zip(guess, names, strict=True)]
    novel = [r for r, n in zip(right, names, strict=True) if n in SPLITS["hard"].novel]
    assert len(names) >= 60 and len(novel) >= 15
    assert sum(right) / len(right) >= 0.85  # chance: 1 in 30
    assert sum(novel) / len(novel) >= 0.8
    # the background column took most of the probability of bare table crops
    assert (torch.cat(empty).sum(dim=1) < 0.5).float().mean() >= 0.6


@pytest.mark.parametrize(("said", "meant", "wrong"), [
    ("crimson mug", "red mug", "blue mug"), ("steel can", "metal can", "wooden can"),
    ("navy box", "blue box", "yellow box"), ("blue sphere", "blue ball", "blue box")])
def test_words_never_trained_on_land_near_their_meaning(teacher, said, meant, wrong):
    vectors = teacher.embed_text([said, meant, wrong])
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_training_reads_text_as_the_loaded_model_does(teacher):
    """Training feeds the frozen tower's [CLS] states to the pooler and projection; the loaded
    model must compute the same embedding from the caption, alone or padded in a batch."""
    states = caption_states(teacher.model, teacher.processor)  # (31, T, hidden)
    with torch.no_grad():
        trained = teacher.model.text_projection(teacher.model.text_model.pooler(states[:, :1, :]))
    names = [*VOCABULARY, BACKGROUND_PROMPT]
    loaded = teacher.embed_text(names, templates=(TRAIN_TEMPLATES[0],))
    torch.testing.assert_close(loaded, torch.nn.functional.normalize(trained, dim=-1),
                               atol=1e-4, rtol=1e-4)
    alone = teacher.embed_text(["red mug"], templates=(TRAIN_TEMPLATES[0],))
    torch.testing.assert_close(alone[0], loaded[0], atol=1e-5, rtol=1e-4)


def test_the_contrastive_loss_on_hand_worked_batches():
    scale = torch.tensor(0.0)  # exp(0) = 1: logits are the cosines
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # one label: both captions are positives of both crops, logits equal: ln 2 per row
    assert float(contrastive_loss(same, same, torch.tensor([0, 0]), scale)) == pytest.approx(
        math.log(2))
    eye = torch.eye(2)
    # one label, two different crops: each row's targets (1/2, 1/2) over logits (1, 0) or
    # (0, 1): -(1/2) ln(e / (e + 1)) - (1/2) ln(1 / (e + 1)) = ln(e + 1) - 1/2
    assert float(contrastive_loss(eye, eye, torch.tensor([0, 0]), scale)) == pytest.approx(
        math.log(math.e + 1) - 0.5)
    # two labels, orthogonal: each row -log(e / (e + 1))
    assert float(contrastive_loss(eye, eye, torch.tensor([0, 1]), scale)) == pytest.approx(
        math.log(1 + math.exp(-1)))
    three = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # rows 1-2: targets (1/2, 1/2, 0) over logits (1, 1, 0); row 3: target 1 on logits (0, 0, 1)
    expected = (2 * math.log(2 + math.exp(-1)) + math.log(1 + 2 * math.exp(-1))) / 3
    assert float(contrastive_loss(three, three, torch.tensor([0, 0, 1]), scale)) == \
        pytest.approx(expected)


def test_retraining_a_recipe_writes_tensors_that_assemble(tmp_path):
    recipe = NanoClipRecipe(image_size=16, patch_size=8, hidden_size=16, layers=1, heads=2,
                            projection_dim=8, scenes=3, background_per_scene=1, steps=2,
                            batch_size=8, eval_scenes=2)
    trained = retrain_nano_clip(recipe, Reporter(enabled=False))
    assert sorted(p.name for p in trained.iterdir()) == ["README.md", "recipe.json", TENSORS]
    assert json.loads((trained / "recipe.json").read_text()) == asdict(recipe)
    assert "top1_all" in (trained / "README.md").read_text()
    path = nano_clip_path(recipe)
    model = VisionTextDualEncoderModel.from_pretrained(path)
    assert model.config.projection_dim == 8 and model.config.vision_config.image_size == 16
    for name, value in load_file(trained / TENSORS).items():
        assert torch.equal(model.state_dict()[name], value.float()), name
