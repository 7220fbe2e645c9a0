"""A generic synthetic world: scenes of coloured shapes with captions and questions.

It gives the engine data to learn from without any download: the nano base model is pretrained
on it, the tests fine-tune on it, and its answers are checkable facts of each scene. Questions
cover existence, colour, shape, size, count and position, plus questions whose premise is false
("What colour is the triangle?" with no triangle), answered "There is none.": a model that
learns here to say so has the habit before it ever sees a scan. Deterministic by seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220),
           "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")
SIZES = {"small": 1 / 14, "large": 1 / 6}  # radius as a fraction of the image side
BACKGROUNDS = ((128, 128, 128), (20, 20, 20), (235, 235, 235))
COUNT_WORDS = ("zero", "one", "two", "three", "four")
ABSENT = "There is none."


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    side: str  # "left" or "right" half of the image
    size: str = "large"  # "small" or "large"


def draw_scene(shapes: list[Shape], size: int, rng: random.Random,
               background: tuple[int, int, int] = BACKGROUNDS[0]):
    """An RGB PIL image with each shape drawn in its half of a plain canvas."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for item in shapes:
        radius = max(2, round(size * SIZES[item.size]))
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


def random_scene(rng: random.Random) -> list[Shape]:
    """One or two shapes (distinct kinds, one per half), so every question has one answer."""
    kinds = rng.sample(SHAPES, rng.choice((1, 2)))
    sides = rng.sample(("left", "right"), len(kinds))
    return [Shape(rng.choice(list(COLOURS)), kind, side, rng.choice(list(SIZES)))
            for kind, side in zip(kinds, sides, strict=True)]


def caption(shapes: list[Shape]) -> str:
    parts = [f"a {s.size} {s.colour} {s.shape} on the {s.side}" for s in shapes]
    return (" and ".join(parts) + ".").capitalize()


def scene_questions(shapes: list[Shape], rng: random.Random) -> list[dict]:
    """Question/answer rows whose answers follow from the scene (one per kind of question)."""
    present = {s.shape: s for s in shapes}
    item = rng.choice(shapes)
    absent_kind = rng.choice([k for k in SHAPES if k not in present] or [None])
    other = rng.choice([c for c in COLOURS if c not in {s.colour for s in shapes}])
    rows = [
        (f"Is there a {item.colour} {item.shape}?", "yes", "closed", True),
        (f"Is there a {other} shape?", "no", "closed", True),
        (f"What colour is the {item.shape}?", item.colour, "open", True),
        (f"Which side is the {item.shape} on?", item.side, "closed", True),
        (f"How large is the {item.shape}?", item.size, "closed", True),
        ("How many shapes are there?", COUNT_WORDS[len(shapes)], "open", True),
        ("Describe the image.", caption(shapes), "open", True),
    ]
    if absent_kind:
        rows += [(f"Is there a {absent_kind}?", "no", "closed", True),
                 (f"What colour is the {absent_kind}?", ABSENT, "open", False),
                 (f"Which side is the {absent_kind} on?", ABSENT, "open", False)]
    return [{"question": q, "answer": a, "question_type": t, "answerable": ok}
            for q, a, t, ok in rows]


def write_shapes_dataset(output: Path | str, n_images: int = 32, seed: int = 0,
                         image_size: int = 64, eval_fraction: float = 0.25) -> dict[str, Path]:
    """Write images plus train.jsonl / eval.jsonl (split by image) in `output`."""
    rng = random.Random(seed)
    output = Path(output)
    (output / "images").mkdir(parents=True, exist_ok=True)
    n_eval = round(n_images * eval_fraction)
    rows: dict[str, list[dict]] = {"train": [], "eval": []}
    for index in range(n_images):
        shapes = random_scene(rng)
        name = f"images/scene_{index:05d}.png"
        draw_scene(shapes, image_size, rng, rng.choice(BACKGROUNDS)).save(output / name)
        split = "eval" if index < n_eval else "train"
        rows[split] += [{"image": name, **qa} for qa in scene_questions(shapes, rng)]
    paths = {}
    for split, items in rows.items():
        paths[split] = output / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    return paths
