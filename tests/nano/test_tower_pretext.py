"""The tower pretext really trains a convolutional tower to find spots and to know where each
of its cells lies."""

from __future__ import annotations

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from domainvlm.nano.tower_pretext import _cell_centres, pretrain_tower
from domainvlm.progress import Reporter


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_both_targets_are_learned_and_the_tower_changes(tiny_models):
    folder = tiny_models("fast-vlm")
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    tower = model.model.vision_tower
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    result = pretrain_tower(tower, processor.image_processor, steps=60, batch_size=8,
                            learning_rate=3e-3, seed=0, image_size=64,
                            reporter=Reporter(enabled=False))
    assert len(result.spot_losses) == len(result.position_losses) == 60
    # Where each cell lies is learned from the padding alone. The spot loss only has to fall
    # (new scenes each step: no memorising); that a tower so trained reads CT findings is
    # measured in README, not here.
    assert mean(result.position_losses[-10:]) < 0.2 * mean(result.position_losses[:10])
    assert mean(result.spot_losses[-20:]) < mean(result.spot_losses[:10])
    assert not tower.training
    assert any(not torch.equal(before[k], v) for k, v in tower.state_dict().items())


def test_cell_centres_run_left_to_right_and_top_to_bottom():
    centres = _cell_centres(2, 3)[0]
    assert torch.allclose(centres[0, 0], torch.tensor([-2 / 3, 0.0, 2 / 3]))  # x
    assert torch.allclose(centres[1, :, 0], torch.tensor([-0.5, 0.5]))  # y
