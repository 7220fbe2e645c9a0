"""Detections drawn on their image: a box, the prompt and the score, one colour per prompt."""

from __future__ import annotations

import colorsys
import zlib

from PIL import Image, ImageDraw

from domainvlm.detection.types import Detections


def label_colour(label: str) -> tuple[int, int, int]:
    """A bright colour fixed by the label's text, so a category keeps its colour across
    images and runs."""
    hue = (zlib.crc32(label.encode()) % 360) / 360
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Image.Image, detections: Detections, *,
                    truth: list[tuple[str, tuple[float, float, float, float]]] = ()) -> Image.Image:
    """A copy of `image` with `detections` drawn (and `truth` boxes dashed in white)."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 160))
    for _, box in truth:
        x1, y1, x2, y2 = box
        for i in range(int(x1), int(x2), 6):
            draw.line([(i, y1), (min(i + 3, x2), y1)], fill="white")
            draw.line([(i, y2), (min(i + 3, x2), y2)], fill="white")
        for i in range(int(y1), int(y2), 6):
            draw.line([(x1, i), (x1, min(i + 3, y2))], fill="white")
            draw.line([(x2, i), (x2, min(i + 3, y2))], fill="white")
    for box, score, label in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                 detections.labels, strict=True):
        colour = label_colour(label)
        draw.rectangle(box, outline=colour, width=width)
        text = f"{label} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text)
        lift = bottom - top + 2
        draw.rectangle((left, top - lift, right + 2, bottom - lift), fill=colour)
        draw.text((box[0] + 1, box[1] - lift), text, fill="black")
    return canvas
