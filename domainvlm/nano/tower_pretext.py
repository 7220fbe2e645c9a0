"""Dense spot detection: the pretext that teaches a convolutional vision tower to see findings.

A VLM's language stage only tells the tower, through a few answer tokens, whether an image
holds something; that signal is too weak to grow detectors of 1-2 px spots. Here every cell of
the tower's last feature map learns, through a 1x1 convolution head, whether it holds a spot of
the generic findings world (`domainvlm.nano.findings_world`), and where in the image it is: a
convolutional tower has no position embedding, and the language model sees one token per cell,
so which side a finding lies on must be in the features. (Measured in README, "What the demo
measures today": presence transfers to CT; side is not read yet, with or without this target.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domainvlm.progress import Reporter

POSITIVE_WEIGHT = 4.0  # most cells hold no spot


@dataclass(frozen=True)
class PretextResult:
    spot_losses: list[float]  # one per step
    position_losses: list[float]  # one per step; empty with position_weight 0


def pretrain_tower(tower: Any, image_processor: Any, *, steps: int, batch_size: int,
                   learning_rate: float, seed: int, image_size: int,
                   position_weight: float = 1.0,
                   reporter: Reporter | None = None) -> PretextResult:
    """Train `tower` (a transformers TimmWrapperModel: images -> (B, C, h, w)) in place.

    Loss: spot BCE per cell + `position_weight` x the squared error of each cell's predicted
    (x, y) centre in [-1, 1]. AdamW with a one-cycle schedule (5 % warm-up); each step draws
    `batch_size` new scenes, so the tower never sees a scene twice. The head is thrown away.
    """
    import numpy as np
    import torch

    from domainvlm.nano.findings_world import findings_scene

    reporter = reporter or Reporter()
    rng = np.random.default_rng([seed, 2])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Conv2d(tower.timm_model.num_features, 3, kernel_size=1)
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate,
                                                   total_steps=steps, pct_start=0.05)
    weight = torch.tensor(POSITIVE_WEIGHT)
    tower.train()
    spot_losses: list[float] = []
    position_losses: list[float] = []
    with reporter.task("pretraining the vision tower (spot detection)", total=steps) as advance:
        for _ in range(steps):
            scenes = [findings_scene(rng, image_size) for _ in range(batch_size)]
            pixels = image_processor([s.image for s in scenes], return_tensors="pt")
            features = tower(pixel_values=pixels["pixel_values"]).last_hidden_state
            masks = torch.from_numpy(np.stack([s.mask for s in scenes])).float()[:, None]
            target = torch.nn.functional.adaptive_max_pool2d(masks, features.shape[-2:])
            out = head(features)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                out[:, :1], target, pos_weight=weight)
            spot_losses.append(loss.item())
            if position_weight:
                where = _cell_centres(*features.shape[-2:]).expand_as(out[:, 1:])
                position = torch.nn.functional.mse_loss(out[:, 1:], where)
                position_losses.append(position.item())
                loss = loss + position_weight * position
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            advance(1, spot_loss=sum(spot_losses[-20:]) / len(spot_losses[-20:]))
    tower.eval()
    return PretextResult(spot_losses, position_losses)


def _cell_centres(rows: int, cols: int) -> Any:
    """(1, 2, rows, cols): x then y of each cell's centre, from -1 (left / top) to 1."""
    import torch

    ys = (torch.arange(rows) + 0.5) / rows * 2 - 1
    xs = (torch.arange(cols) + 0.5) / cols * 2 - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"))[None]
