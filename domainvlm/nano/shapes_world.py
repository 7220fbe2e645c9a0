"""A generic synthetic world: scenes of coloured shapes with captions and questions.

It gives the engine data to learn from without any download: the nano base model is pretrained
on it, the tests fine-tune on it, and its answers are checkable facts of each scene. Questions
cover existence, colour, shape, size, count and position, plus questions whose premise is false
("What colour is the triangle?" with no triangle), answered "There is none.": a model that
learns here to say so has the habit before it ever sees a scan. Deterministic by seed.

Two worlds: `plain` (one or two small or large shapes on a flat background: the tests' data)
and `cluttered`, which the nano base model learns from: also tiny shapes, scenes with no shape,
shapes lying on large muted regions, and pixel noise. Finding a small target against the
region it sits in, through noise, is the looking a scan asks for.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220),
           "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")
SIZES = {"tiny": 1 / 40, "small": 1 / 14, "large": 1 / 6}  # radius / image side
BACKGROUNDS = ((128, 128, 128), (20, 20, 20), (235, 235, 235))
REGION_COLOURS = ((70, 70, 70), (185, 185, 185), (160, 130, 100), (60, 60, 90))
COUNT_WORDS = ("zero", "one", "two", "three", "four")
ABSENT = "There is none."


@dataclass(frozen=True)
class World:
    """How varied the scenes are; see the module docstring."""

    sizes: tuple[str, ...] = ("small", "large")
    allow_empty: bool = False  # scenes with no shape at all
    region_chance: float = 0.0  # chance that each half lies on a large muted region
    noise: float = 0.0  # standard deviation of the pixel noise, in 8-bit levels
    balanced: bool = False  # questions from balanced_questions, else scene_questions


WORLDS = {"plain": World(),
          "cluttered": World(tuple(SIZES), allow_empty=True, region_chance=0.6, noise=10.0,
                             balanced=True)}


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    side: str  # "left" or "right" half of the image
    size: str = "large"  # "small" or "large"


def draw_scene(shapes: list[Shape], size: int, rng: random.Random,
               background: tuple[int, int, int] = BACKGROUNDS[0], world: World = WORLDS["plain"]):
    """An RGB PIL image with each shape drawn in its half of the canvas.

    In a world with regions, each half may first get a large ellipse of a muted colour that
    the shape then lies on; the world's noise is added last.
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for centre in (size // 4, 3 * size // 4):
        if world.region_chance and rng.random() < world.region_chance:
            rx = round(size * rng.uniform(0.17, 0.23))
            ry = round(size * rng.uniform(0.28, 0.4))
            draw.ellipse((centre - rx, size // 2 - ry, centre + rx, size // 2 + ry),
                         fill=rng.choice(REGION_COLOURS))
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
    if world.noise:
        import numpy as np

        noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, world.noise,
                                                                  (size, size, 3))
        pixels = np.clip(np.asarray(image, np.float32) + noise, 0, 255)
        image = Image.fromarray(pixels.round().astype(np.uint8))
    return image


def random_scene(rng: random.Random, world: World = WORLDS["plain"]) -> list[Shape]:
    """One or two shapes (none too, if the world allows) of distinct kinds, one per half, so
    every question has one answer."""
    kinds = rng.sample(SHAPES, rng.choice((0, 1, 1, 2, 2) if world.allow_empty else (1, 2)))
    sides = rng.sample(("left", "right"), len(kinds))
    return [Shape(rng.choice(list(COLOURS)), kind, side, rng.choice(world.sizes))
            for kind, side in zip(kinds, sides, strict=True)]


def caption(shapes: list[Shape]) -> str:
    if not shapes:
        return "There are no shapes."
    parts = [f"a {s.size} {s.colour} {s.shape} on the {s.side}" for s in shapes]
    return (" and ".join(parts) + ".").capitalize()


def scene_questions(shapes: list[Shape], rng: random.Random) -> list[dict]:
    """Question/answer rows whose answers follow from the scene (one per kind of question)."""
    present = {s.shape: s for s in shapes}
    item = rng.choice(shapes) if shapes else None
    absent_kind = rng.choice([k for k in SHAPES if k not in present] or [None])
    other = rng.choice([c for c in COLOURS if c not in {s.colour for s in shapes}])
    rows = [
        (f"Is there a {item.colour} {item.shape}?", "yes", "closed", True),
        (f"Is there a {other} shape?", "no", "closed", True),
        (f"What colour is the {item.shape}?", item.colour, "open", True),
        (f"Which side is the {item.shape} on?", item.side, "closed", True),
        (f"How large is the {item.shape}?", item.size, "closed", True),
    ] if item else [(f"Is there a {other} shape?", "no", "closed", True)]
    rows += [
        ("How many shapes are there?", COUNT_WORDS[len(shapes)], "open", True),
        ("Describe the image.", caption(shapes), "open", True),
    ]
    if absent_kind:
        rows += [(f"Is there a {absent_kind}?", "no", "closed", True),
                 (f"What colour is the {absent_kind}?", ABSENT, "open", False),
                 (f"Which side is the {absent_kind} on?", ABSENT, "open", False)]
    return [{"question": q, "answer": a, "question_type": t, "answerable": ok}
            for q, a, t, ok in rows]


def balanced_questions(shapes: list[Shape], rng: random.Random) -> list[dict]:
    """Rows whose wording never gives the answer away: the shape asked about is present or
    absent by a coin flip (its colour right or wrong likewise), so only looking answers them.

    `scene_questions` asks about shapes it knows are there, so a model can learn its answers
    from the templates alone; a base model pretrained that way never learns to look.
    """
    present = {s.shape: s for s in shapes}
    absent = [k for k in SHAPES if k not in present]

    def kind() -> str:
        if shapes and (not absent or rng.random() < 0.6):
            return rng.choice(shapes).shape
        return rng.choice(absent)

    def some_colour(truth: str | None) -> str:
        return truth if truth and rng.random() < 0.8 else rng.choice(list(COLOURS))

    asked = kind()
    colour = some_colour(present[asked].colour if asked in present else None)
    rows = [(f"Is there a {colour} {asked}?",
             "yes" if asked in present and present[asked].colour == colour else "no", "closed",
             True)]
    colour = some_colour(rng.choice(shapes).colour if shapes else None)
    rows.append((f"Is there a {colour} shape?",
                 "yes" if colour in {s.colour for s in shapes} else "no", "closed", True))
    asked = kind()
    rows.append((f"Is there a {asked}?", "yes" if asked in present else "no", "closed", True))
    for template, attribute, question_type in (("What colour is the {}?", "colour", "open"),
                                               ("Which side is the {} on?", "side", "closed"),
                                               ("How large is the {}?", "size", "closed")):
        asked = kind()
        found = present.get(asked)
        rows.append((template.format(asked), getattr(found, attribute) if found else ABSENT,
                     question_type if found else "open", found is not None))
    rows += [("How many shapes are there?", COUNT_WORDS[len(shapes)], "open", True),
             ("Describe the image.", caption(shapes), "open", True)]
    return [{"question": q, "answer": a, "question_type": t, "answerable": ok}
            for q, a, t, ok in rows]


def write_shapes_dataset(output: Path | str, n_images: int = 32, seed: int = 0,
                         image_size: int = 64, eval_fraction: float = 0.25,
                         world: str = "plain") -> dict[str, Path]:
    """Write images plus train.jsonl / eval.jsonl (split by image) in `output`."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; valid worlds: {', '.join(WORLDS)}")
    scene_world = WORLDS[world]
    ask = balanced_questions if scene_world.balanced else scene_questions
    rng = random.Random(seed)
    output = Path(output)
    (output / "images").mkdir(parents=True, exist_ok=True)
    n_eval = round(n_images * eval_fraction)
    rows: dict[str, list[dict]] = {"train": [], "eval": []}
    for index in range(n_images):
        shapes = random_scene(rng, scene_world)
        name = f"images/scene_{index:05d}.png"
        draw_scene(shapes, image_size, rng, rng.choice(BACKGROUNDS), scene_world).save(
            output / name)
        split = "eval" if index < n_eval else "train"
        rows[split] += [{"image": name, **qa} for qa in ask(shapes, rng)]
    paths = {}
    for split, items in rows.items():
        paths[split] = output / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    return paths
