"""A generic synthetic world: scenes of coloured shapes with questions about them.

It gives the engine data to learn from without any download: the main job and the tests
fine-tune on it, and its answers are checkable facts of each scene. Deterministic by seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220),
           "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    side: str  # "left" or "right" half of the image


def draw_scene(shapes: list[Shape], size: int, rng: random.Random):
    """An RGB PIL image with each shape drawn in its half of a grey canvas."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for item in shapes:
        radius = size // 6
        x0 = size // 4 if item.side == "left" else 3 * size // 4
        cx = x0 + rng.randint(-size // 16, size // 16)
        cy = size // 2 + rng.randint(-size // 4, size // 4)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = COLOURS[item.colour]
        if item.shape == "square":
            draw.rectangle(box, fill=fill)
        elif item.shape == "circle":
            draw.ellipse(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius),
                          (cx + radius, cy + radius)], fill=fill)
    return image


def scene_questions(shape: Shape, rng: random.Random) -> list[dict]:
    """Question/answer pairs whose answers follow from the scene."""
    other = rng.choice([c for c in COLOURS if c != shape.colour])
    return [
        {"question": f"What colour is the {shape.shape}?", "answer": shape.colour,
         "question_type": "open"},
        {"question": "What shape is in the image?", "answer": shape.shape,
         "question_type": "open"},
        {"question": f"Is the {shape.shape} on the left or the right?", "answer": shape.side,
         "question_type": "open"},
        {"question": f"Is there a {other} shape?", "answer": "no", "question_type": "closed"},
        {"question": f"Is there a {shape.colour} shape?", "answer": "yes",
         "question_type": "closed"},
    ]


def write_shapes_dataset(output: Path | str, n_images: int = 32, seed: int = 0,
                         image_size: int = 64, eval_fraction: float = 0.25) -> dict[str, Path]:
    """Write images plus train.jsonl / eval.jsonl (split by image) in `output`."""
    rng = random.Random(seed)
    output = Path(output)
    (output / "images").mkdir(parents=True, exist_ok=True)
    n_eval = round(n_images * eval_fraction)
    rows: dict[str, list[dict]] = {"train": [], "eval": []}
    for index in range(n_images):
        shape = Shape(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(("left", "right")))
        name = f"images/scene_{index:05d}.png"
        draw_scene([shape], image_size, rng).save(output / name)
        split = "eval" if index < n_eval else "train"
        rows[split] += [{"image": name, **qa} for qa in scene_questions(shape, rng)]
    paths = {}
    for split, items in rows.items():
        paths[split] = output / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    return paths
