"""A robot's tabletop camera: objects named by kind and attribute, with boxes, in COCO format.

The open-vocabulary detector learns and is measured here without any download. A category is
an attribute and a kind ("red mug", "metal can"); a split holds some combinations out as novel
while each of their words appears in base categories, so finding "wooden ball" after training
on "wooden box" and "red ball" is compositional generalisation, measured rather than assumed.
Novel objects are in the training images too, unlabelled, as in ViLD's setting.

Scenes have table textures, clutter that is not an object (flat blobs, stripes), lighting
(brightness, a gradient, shadows), partial occlusion and pixel noise. Deterministic by seed;
the layout lives in relative coordinates, so a scene at 640x480 is the 320x240 one scaled 2x.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from domainvlm.detection.coco import CategorySplit
from domainvlm.errors import ConfigError

ATTRIBUTES = ("red", "green", "blue", "yellow", "metal", "wooden")
KINDS = ("mug", "box", "can", "bottle", "ball")
VOCABULARY: tuple[str, ...] = tuple(f"{a} {k}" for a in ATTRIBUTES for k in KINDS)

COLOURS = {"red": (205, 38, 34), "green": (46, 160, 64), "blue": (42, 78, 205),
           "yellow": (236, 198, 36), "metal": (168, 172, 180), "wooden": (150, 98, 52)}


def _split(name: str, novel: tuple[str, ...]) -> CategorySplit:
    return CategorySplit(name, tuple(c for c in VOCABULARY if c not in novel), novel)


SPLITS: dict[str, CategorySplit] = {
    # a diagonal: each kind once, five attributes, so each novel word keeps most partners
    "easy": _split("easy", ("red mug", "green box", "blue can", "metal bottle", "wooden ball")),
    # two per attribute: each novel attribute keeps 3 of 5 kinds, each novel kind 3 or 4 of 6
    "hard": _split("hard", ("red mug", "red box", "green can", "green bottle", "blue ball",
                            "blue mug", "yellow box", "yellow can", "metal bottle", "metal ball",
                            "wooden mug", "wooden can")),
}
NOVEL_SHARE = 0.3  # chance that an object is of a novel category: enough of each to measure
OBJECTS = (3, 7)  # objects per scene
HEIGHTS = (1 / 12, 1 / 4)  # object height / image height
ASPECT = {"mug": 1.2, "box": 1.3, "can": 0.62, "bottle": 0.36, "ball": 1.0}  # width / height
MAX_HIDDEN = 0.3  # most of an object's box that other objects may cover
TABLES = ((196, 190, 176), (120, 132, 140), (70, 98, 82), (214, 214, 206), (92, 88, 102),
          (176, 160, 150))
WALLS = ((226, 224, 216), (178, 186, 196), (150, 142, 130))
MIN_SIDE = 32  # pixels: smaller frames cannot show an object's kind
NOISE = (2.0, 5.0)  # pixel noise standard deviation, 8-bit levels


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: its category and box (xyxy pixels, its full extent)."""

    category: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class _Placed:
    """An object in relative coordinates (x by width, y and sizes by height)."""

    attribute: str
    kind: str
    x0: float
    y0: float
    width: float  # in image heights
    height: float
    jitter: tuple[float, float, float]  # per-channel colour scale
    detail: float  # a shape parameter in [0, 1] (box depth, wood grain phase, ...)


def scene_seed(seed: int, index: int) -> int:
    """The seed of image `index` of a data set written with `seed`: sets with different seeds
    never share a scene."""
    digest = hashlib.sha256(f"tabletop:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def render_scene(seed: int, *, size: tuple[int, int] = (320, 240),
                 split: str = "easy") -> tuple[Image.Image, list[SceneObject]]:
    """One camera image (RGB, `size` = (width, height)) and its objects in drawing order:
    an object may hide part of those before it, never of those after.

    `split` sets how often novel categories appear (`NOVEL_SHARE` of the objects).
    """
    _check_split(split)
    width, height = size
    if min(width, height) < MIN_SIDE:
        raise ConfigError(f"tabletop images must be at least {MIN_SIDE} pixels a side, not "
                          f"{width}x{height}")
    rng = np.random.default_rng(seed)
    aspect = width / height
    horizon = float(rng.uniform(0.1, 0.3)) if rng.random() < 0.5 else 0.0
    placed = _layout(rng, SPLITS[split], aspect, horizon)
    canvas = _table(rng, width, height, horizon)
    _clutter(canvas, rng, width, height, horizon)
    shadow_layer = _shadows(placed, rng, width, height)
    light = float(rng.uniform(-0.7, 0.7))
    pixels = np.asarray(canvas, np.float32) * (1 - 0.45 * shadow_layer)[..., None]
    placed.sort(key=lambda p: p.y0 + p.height)  # back to front: nearer objects stand lower
    for item in placed:
        _paste(pixels, item, light, height)
    pixels *= _lighting(rng, width, height)[..., None]
    noise_rng = np.random.default_rng([seed, width, height])  # pixel noise only: layout kept
    noise = noise_rng.random(pixels.shape, dtype=np.float32)  # uniform: 5x faster to draw
    noise -= 0.5
    noise *= float(rng.uniform(*NOISE)) * math.sqrt(12)  # that standard deviation
    pixels += noise
    np.clip(pixels, 0, 255, out=pixels)
    image = Image.fromarray(pixels.astype(np.uint8))
    objects = [SceneObject(f"{p.attribute} {p.kind}",
                           (p.x0 * height, p.y0 * height, (p.x0 + p.width) * height,
                            (p.y0 + p.height) * height)) for p in placed]
    return image, objects


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown tabletop split {split!r}: choose one of "
                          f"{', '.join(SPLITS)}")


def _layout(rng: np.random.Generator, split: CategorySplit, aspect: float,
            horizon: float) -> list[_Placed]:
    """Objects standing on the table, each box covered at most MAX_HIDDEN by the others."""
    placed: list[_Placed] = []
    hidden: list[float] = []
    for _ in range(int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))):
        group = split.novel if rng.random() < NOVEL_SHARE else split.base
        attribute, kind = group[int(rng.integers(len(group)))].split(" ")
        jitter = tuple(float(v) for v in rng.uniform(0.9, 1.1, 3))
        if attribute == "metal":  # grey stays grey
            jitter = (jitter[0],) * 3
        detail = float(rng.random())
        for _attempt in range(40):
            h = float(rng.uniform(*HEIGHTS))
            w = h * ASPECT[kind] * float(rng.uniform(0.9, 1.1))
            if w >= aspect:  # a frame too narrow for this one
                continue
            # margins keep float rounding from pushing a box past the frame
            x0 = float(rng.uniform(0, aspect - w - 1e-6))
            bottom = float(rng.uniform(max(h, horizon + 0.3 * h), 1.0 - 1e-6))
            candidate = _Placed(attribute, kind, x0, bottom - h, w, h, jitter, detail)
            covers = [_overlap(candidate, other) for other in placed]
            own = sum(covers) / (w * h)
            if own <= MAX_HIDDEN and all(
                    hidden[i] + c / (o.width * o.height) <= MAX_HIDDEN
                    for i, (c, o) in enumerate(zip(covers, placed, strict=True))):
                hidden = [hidden[i] + c / (o.width * o.height)
                          for i, (c, o) in enumerate(zip(covers, placed, strict=True))]
                placed.append(candidate)
                hidden.append(own)
                break
    return placed


def _overlap(a: _Placed, b: _Placed) -> float:
    dx = min(a.x0 + a.width, b.x0 + b.width) - max(a.x0, b.x0)
    dy = min(a.y0 + a.height, b.y0 + b.height) - max(a.y0, b.y0)
    return max(dx, 0.0) * max(dy, 0.0)


def _table(rng: np.random.Generator, width: int, height: int, horizon: float) -> Image.Image:
    """The table top (plain, tiled, woven or streaked) and, above a horizon, a wall."""
    base = np.array(TABLES[int(rng.integers(len(TABLES)))], np.float32)
    base *= rng.uniform(0.9, 1.1, 3).astype(np.float32)
    pattern = int(rng.integers(4))
    period = float(rng.uniform(0.08, 0.16))  # in image heights
    ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None] / height
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :] / height
    if pattern == 1:  # tiles: grout lines
        line = 0.012
        shade = 1 - 0.22 * np.maximum((xs % period) < line, (ys % period) < line)
    elif pattern == 2:  # woven cloth: a fine checker
        shade = 1 + 0.05 * np.sign(np.sin(xs * 2 * math.pi / 0.02)) \
            * np.sign(np.sin(ys * 2 * math.pi / 0.02))
    elif pattern == 3:  # laminate: faint streaks
        shade = 1 + 0.04 * np.sin(ys * 2 * math.pi / period * 3) + 0.02 * np.sin(xs * 7)
    else:  # plain, with a slow variation
        shade = 1 + 0.03 * np.sin(xs * 3) + 0.03 * np.sin(ys * 2)
    pixels = base[None, None, :] * shade[..., None]
    if horizon:
        wall = np.array(WALLS[int(rng.integers(len(WALLS)))], np.float32)
        top = int(round(horizon * height))
        pixels[:top] = wall
        pixels[top:top + max(1, height // 120)] *= 0.6  # the table's edge
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _clutter(canvas: Image.Image, rng: np.random.Generator, width: int, height: int,
             horizon: float) -> None:
    """Flat things on the table that are no object: paper blobs, stains, cables, rulers."""
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 7))):
        colour = tuple(int(v) for v in rng.uniform(60, 220, 3))
        grey = sum(colour) / 3
        colour = tuple(int(0.5 * c + 0.5 * grey) for c in colour)  # muted: never a category
        cx = float(rng.uniform(0, width / height)) * height
        cy = float(rng.uniform(horizon + 0.05, 1.0)) * height
        if rng.random() < 0.5:  # a flat blob
            radius = float(rng.uniform(0.04, 0.12)) * height
            angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(5, 9))))
            radii = radius * rng.uniform(0.5, 1.0, len(angles))
            points = [(cx + r * math.cos(a), cy + 0.6 * r * math.sin(a))
                      for a, r in zip(angles, radii, strict=True)]
            draw.polygon(points, fill=colour)
        else:  # a stripe
            length = float(rng.uniform(0.15, 0.5)) * height
            angle = float(rng.uniform(0, math.pi))
            thickness = max(1, round(float(rng.uniform(0.006, 0.03)) * height))
            dx, dy = 0.5 * length * math.cos(angle), 0.5 * length * math.sin(angle)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=thickness)


def _shadows(placed: list[_Placed], rng: np.random.Generator, width: int,
             height: int) -> np.ndarray:
    """Soft contact shadows (one per object, cast away from the light), as (H, W) in [0, 1]."""
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    offset = float(rng.uniform(-0.5, 0.5))
    for p in placed:
        x0 = (p.x0 + 0.4 * offset * p.width) * height
        x1 = (p.x0 + (1.15 + 0.4 * offset) * p.width) * height
        y1 = (p.y0 + p.height) * height
        draw.ellipse((x0, y1 - 0.18 * p.height * height, x1, y1 + 0.08 * p.height * height),
                     fill=255)
    layer = layer.filter(ImageFilter.BoxBlur(max(1, round(height / 120))))
    return np.asarray(layer, np.float32) / 255


def _lighting(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The light's gain (H, W): overall brightness, a linear gradient across the frame, and
    sometimes a band of shade cast by something off-camera."""
    angle = float(rng.uniform(0, 2 * math.pi))
    strength = float(rng.uniform(0.0, 0.25))
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    brightness = float(rng.uniform(0.75, 1.15))
    gain = (brightness * strength * math.cos(angle)) * xs \
        + (brightness * strength * math.sin(angle)) * ys + brightness
    if rng.random() < 0.3:
        edge = float(rng.uniform(-0.3, 0.3))
        gain[xs + 0.5 * ys > edge] *= 0.72
    return gain


def _paste(pixels: np.ndarray, item: _Placed, light: float, height: int) -> None:
    """Draw `item` into `pixels` (H, W, 3 float), antialiased by drawing at 2x and averaging."""
    x0, y0 = item.x0 * height, item.y0 * height
    x1, y1 = x0 + item.width * height, y0 + item.height * height
    left, top = int(math.floor(x0)), int(math.floor(y0))
    right, bottom = int(math.ceil(x1)), int(math.ceil(y1))
    scale = 2  # _half's factor
    w, h = (right - left) * scale, (bottom - top) * scale
    # the object's extent inside the patch, in patch pixels at 2x
    box = ((x0 - left) * scale, (y0 - top) * scale, (x1 - left) * scale, (y1 - top) * scale)
    parts = Image.new("L", (w, h), 0)
    _draw_parts(ImageDraw.Draw(parts), item, box)
    labels = np.asarray(parts)
    u = (np.arange(w, dtype=np.float32)[None, :] + 0.5 - box[0]) / (box[2] - box[0])
    v = (np.arange(h, dtype=np.float32)[:, None] + 0.5 - box[1]) / (box[3] - box[1])
    rgb = _surface(item, labels, u, v, light)
    alpha = (labels > 0).astype(np.float32)
    rgb *= alpha[..., None]
    rgb, alpha = _half(rgb), _half(alpha)
    region = pixels[top:bottom, left:right]
    region *= 1 - alpha[..., None]
    region += rgb


def _half(a: np.ndarray) -> np.ndarray:
    """2x2 box average: the 2x drawing back at image resolution."""
    return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * 0.25


BODY, TOP, HANDLE, SIDE, OPENING, CAP = 1, 2, 3, 4, 5, 6  # part labels


def _draw_parts(draw: ImageDraw.ImageDraw, item: _Placed, box: tuple[float, ...]) -> None:
    """The kind's silhouette, each part with its label, touching all four sides of `box`."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if item.kind == "ball":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=BODY)
    elif item.kind == "box":
        depth = (0.18 + 0.15 * item.detail) * min(w, h)
        draw.rectangle((x0, y0 + depth, x1 - depth, y1 - 1), fill=BODY)
        draw.polygon([(x0, y0 + depth), (x0 + depth, y0), (x1 - 1, y0), (x1 - depth, y0 + depth)],
                     fill=TOP)
        draw.polygon([(x1 - depth, y0 + depth), (x1 - 1, y0), (x1 - 1, y1 - depth),
                      (x1 - depth, y1 - 1)], fill=SIDE)
    elif item.kind in ("mug", "can"):
        body_right = x0 + (0.74 * w if item.kind == "mug" else w)
        if item.kind == "mug":  # the handle: a thick ring on the right
            ring = 0.1 * w
            draw.ellipse((body_right - 0.3 * w, y0 + 0.22 * h, x1 - 1, y1 - 0.22 * h),
                         outline=HANDLE, width=max(1, round(ring)))
        rim = 0.14 * (body_right - x0) + 0.06 * h
        draw.rectangle((x0, y0 + rim, body_right - 1, y1 - 1 - rim), fill=BODY)
        draw.ellipse((x0, y1 - 1 - 2 * rim, body_right - 1, y1 - 1), fill=BODY)
        draw.ellipse((x0, y0, body_right - 1, y0 + 2 * rim), fill=TOP)
        inset = 0.08 * (body_right - x0)
        draw.ellipse((x0 + inset, y0 + 0.25 * rim, body_right - 1 - inset, y0 + 1.75 * rim),
                     fill=OPENING if item.kind == "mug" else CAP)
    else:  # bottle: body, shoulder, neck, cap
        cx = (x0 + x1) / 2
        neck, cap = 0.2 * w, 0.24 * w
        draw.rectangle((cx - cap, y0, cx + cap, y0 + 0.1 * h), fill=CAP)
        draw.rectangle((cx - neck, y0 + 0.1 * h, cx + neck, y0 + 0.32 * h), fill=BODY)
        draw.polygon([(cx - neck, y0 + 0.3 * h), (cx + neck, y0 + 0.3 * h),
                      (x1 - 1, y0 + 0.46 * h), (x0, y0 + 0.46 * h)], fill=BODY)
        draw.rectangle((x0, y0 + 0.46 * h, x1 - 1, y1 - 1), fill=BODY)


def _surface(item: _Placed, labels: np.ndarray, u: np.ndarray, v: np.ndarray,
             light: float) -> np.ndarray:
    """Colour (H, W, 3) of every patch pixel: the attribute's material, shaded for the kind."""
    base = np.array(COLOURS[item.attribute], np.float32) * np.array(item.jitter, np.float32)
    metal = item.attribute == "metal"
    body = 0.74 if item.kind == "mug" else 1.0  # the mug's handle is right of its body
    across = np.clip(u / body * 2 - 1, -1, 1)  # -1 .. 1 across the body, (1, W) or (H, W)
    if item.kind == "ball":
        down = np.clip(v * 2 - 1, -1, 1)
        r2 = np.clip(across ** 2 + down ** 2, 0, 1)
        nz = np.sqrt(1 - r2)
        lz = math.sqrt(max(0.0, 1 - light ** 2 - 0.16))
        diffuse = np.clip(light * across - 0.4 * down + lz * nz, 0, 1)
        glint = np.exp(-((across - 0.6 * light) ** 2 + (down + 0.35) ** 2) / 0.03)
    else:
        nz = np.sqrt(1 - across ** 2)
        diffuse = np.clip(light * across + math.sqrt(1 - light ** 2) * nz, 0, 1)
        position = across - light if item.kind != "box" else (u + v) - 0.7 - 0.3 * light
        glint = np.exp(-(position ** 2) / 0.02)
    if item.kind == "box":  # flat faces: front, lighter top, darker side
        face = np.select([labels == TOP, labels == SIDE], [1.2, 0.62], 0.9)
        shade = face * (0.85 + 0.15 * diffuse)
    elif metal:
        shade = 0.3 + 0.95 * diffuse ** 1.5
    else:
        shade = 0.4 + 0.7 * diffuse
    shade = np.where(labels == TOP, np.maximum(shade, 1.05), shade)
    shade = np.where(labels == OPENING, 0.25 + 0.1 * v, shade)
    shade = np.where(labels == HANDLE, 0.8, shade)
    if item.kind == "can":  # a closed lid, lighter than its rim
        shade = np.where(labels == CAP, 1.3, shade)
    colour = base[None, None, :] * shade[..., None]
    if item.attribute == "wooden":  # grain stripes along the object
        phase = 2 * math.pi * item.detail
        grain = np.sin(2 * math.pi * (5 * v + 0.25 * np.sin(3 * u + phase)) + phase)
        colour *= (1 + 0.22 * np.sign(grain) * np.abs(grain) ** 0.5)[..., None]
    sheen = 0.95 if metal else (0.1 if item.attribute == "wooden" else 0.35)
    colour += 255 * sheen * glint[..., None]
    cap = (labels == CAP)[..., None]
    if item.kind == "bottle":
        colour = np.where(cap, np.float32(60), colour)
    return np.clip(colour, 0, 255).astype(np.float32)


def write_tabletop(out: Path, *, split: str = "easy", images: int,
                   size: tuple[int, int] = (320, 240), seed: int = 0,
                   labels: Literal["base", "all"], reporter=None) -> Path:
    """Write `images` scenes as a COCO data set: `out/images/000000.png ...`, `out/instances.json`
    (all 30 categories, ids 1..30 in VOCABULARY order) and `out/split.json`. With
    `labels="base"` only base objects are annotated (novel ones are in the images, unlabelled:
    a training set); `"all"` annotates every object. All or nothing: `out` appears whole."""
    from domainvlm.atomic import new_folder, write_json
    from domainvlm.progress import Reporter

    _check_split(split)
    if labels not in ("base", "all"):
        raise ConfigError(f"labels must be 'base' or 'all', not {labels!r}")
    if images < 1:
        raise ConfigError(f"images must be at least 1, not {images}")
    chosen = SPLITS[split]
    kept = set(chosen.base) if labels == "base" else set(VOCABULARY)
    ids = {name: index + 1 for index, name in enumerate(VOCABULARY)}
    rows, annotations = [], []
    with new_folder(Path(out)) as partial:
        (partial / "images").mkdir()
        reporter = reporter or Reporter(enabled=False)
        with reporter.task(f"tabletop {split} ({labels} labels)", images) as advance:
            for index in range(images):
                image, objects = render_scene(scene_seed(seed, index), size=size, split=split)
                name = f"{index:06d}.png"
                image.save(partial / "images" / name, compress_level=1)
                rows.append({"id": index + 1, "file_name": name, "width": size[0],
                             "height": size[1]})
                for item in objects:
                    if item.category not in kept:
                        continue
                    x0, y0, x1, y1 = item.box
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": index + 1,
                        "category_id": ids[item.category], "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
                advance()
        categories = [{"id": ids[name], "name": name, "supercategory": name.split(" ")[1]}
                      for name in VOCABULARY]
        write_json(partial / "instances.json", {
            "info": {"description": f"domainvlm tabletop world, split {split}, seed {seed}, "
                                    f"{labels} labels"},
            "images": rows, "annotations": annotations, "categories": categories})
        write_json(partial / "split.json", {"name": chosen.name, "base": list(chosen.base),
                                            "novel": list(chosen.novel)})
    return Path(out)

