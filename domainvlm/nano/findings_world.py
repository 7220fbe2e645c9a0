"""A generic "findings" world: small spots in a windowed scalar field, with questions about them.

A scan is one number per pixel (tissue density) shown through display windows; a finding is a
small blob brighter or darker than the tissue around it, sometimes a pixel or two across and
faint. This world has that structure and nothing of anatomy: a field of random ellipses with
smooth texture and noise, 0-3 discs of 1-6 px radius (faint or strong, brighter or darker, with
a partial-volume edge), shown as RGB through three random windows. Each scene carries a pixel
mask of its spots, for dense pretraining of a vision tower (`domainvlm.nano.tower_pretext`), and
questions (is there a spot, which side, how many, how large; "There is none." when the premise
is false) for the nano model's language stage. Deterministic by seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domainvlm.nano.shapes_world import ABSENT, COUNT_WORDS

SPOT_COUNTS = (0, 0, 1, 1, 2, 3)  # drawn uniformly: a third of scenes have no spot
SPOT_RADIUS_PX = (1.0, 6.0)  # at the 192 px scale; scaled with the image size
LARGE_FROM_PX = 4.0  # radius (at 192 px) from which a spot is "large", else "small"


@dataclass(frozen=True)
class Spot:
    x: float  # centre, pixels
    y: float
    radius: float  # pixels


@dataclass
class FindingsScene:
    image: np.ndarray  # uint8 (size, size, 3)
    mask: np.ndarray  # bool (size, size): pixels more than half inside a spot
    spots: list[Spot]


def findings_scene(rng: np.random.Generator, size: int = 192) -> FindingsScene:
    """One scene: regions, texture, spots and noise in one field, seen through 3 windows."""
    from PIL import Image

    scale = size / 192
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    field = np.full((size, size), rng.uniform(-1, 1), np.float32)
    for _ in range(int(rng.integers(1, 6))):  # regions, some inside others
        cx, cy = rng.uniform(0, size, 2)
        ax, ay = rng.uniform(15 * scale, 80 * scale, 2)
        field[((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1] = rng.uniform(-1, 1)
    texture = rng.normal(0, 1, (12, 12)).astype(np.float32)
    field += 0.15 * np.asarray(Image.fromarray(texture).resize((size, size), Image.BICUBIC))
    mask = np.zeros((size, size), bool)
    spots = []
    margin = 6 * scale
    for _ in range(int(rng.choice(SPOT_COUNTS))):
        cx, cy = rng.uniform(margin, size - margin, 2)
        radius = max(rng.uniform(*SPOT_RADIUS_PX) * scale, 1.0)  # a pixel at least: visible
        brighter = bool(rng.random() < 0.75)
        amplitude = rng.uniform(0.2, 1.2) * (1 if brighter else -1)
        profile = np.clip(radius + 0.5 - np.hypot(xx - cx, yy - cy), 0, 1)  # partial volume
        field += amplitude * profile
        mask |= profile > 0.5
        spots.append(Spot(float(cx), float(cy), float(radius)))
    field += rng.normal(0, rng.uniform(0.0, 0.08), field.shape).astype(np.float32)
    channels = [np.clip((field - rng.uniform(-1, 1)) / rng.uniform(0.3, 2.5) + 0.5, 0, 1)
                for _ in range(3)]
    image = (np.stack(channels, -1) * 255).astype(np.uint8)
    return FindingsScene(image, mask, spots)


def findings_questions(scene: FindingsScene, size: int) -> list[dict]:
    """Rows (question, answer, question_type, answerable) whose answers follow from the scene.

    Sides are the image's; size is that of the largest spot.
    """
    spots = scene.spots
    rows = [("Is there a spot?", "yes" if spots else "no", "closed", True),
            ("How many spots are there?", COUNT_WORDS[len(spots)], "open", True)]
    if spots:
        sides = {"left" if s.x < size / 2 else "right" for s in spots}
        largest = max(s.radius for s in spots) * 192 / size
        rows += [("Which side is the spot on?", "both" if len(sides) == 2 else sides.pop(),
                  "closed", True),
                 ("How large is the spot?", "large" if largest >= LARGE_FROM_PX else "small",
                  "closed", True)]
    else:
        rows += [("Which side is the spot on?", ABSENT, "open", False),
                 ("How large is the spot?", ABSENT, "open", False)]
    return [{"question": q, "answer": a, "question_type": t, "answerable": ok}
            for q, a, t, ok in rows]


def write_findings_dataset(output: Path | str, n_images: int, seed: int = 0,
                           image_size: int = 192) -> Path:
    """Write images plus train.jsonl (question rows) in `output`; returns the jsonl path."""
    from PIL import Image

    output = Path(output)
    (output / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    rows = []
    for index in range(n_images):
        scene = findings_scene(rng, image_size)
        name = f"images/spots_{index:05d}.png"
        Image.fromarray(scene.image).save(output / name)
        rows += [{"image": name, **qa} for qa in findings_questions(scene, image_size)]
    path = output / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
