"""The teacher of ViLD distillation: a CLIP-like dual encoder that names image regions.

Any transformers dual encoder with `get_text_features` / `get_image_features` (CLIP, SigLIP,
OWL-ViT / OWLv2, VisionTextDualEncoder) serves, by hub id or folder; with no source, the nano
CLIP this project trains offline (`domainvlm.nano.clip`). Category names become prompt-ensemble
text embeddings; a region becomes the mean of its crop embeddings at 1x and 1.5x the box (ViLD's
recipe: the wider crop adds context). `classify_regions` is crop-and-classify, the baseline
the student is measured against; `region_embeddings` is what the student distils from,
computed once and kept on disk because it is the costly part of training.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from domainvlm.detection.types import DetectionInputError, RegionScores, as_rgb, check_prompts
from domainvlm.errors import ModelLoadError
from domainvlm.progress import Reporter

PROMPT_TEMPLATES = ("a photo of a {}.", "a {} on a table.", "a close-up photo of the {}.",
                    "a picture of a {}.")
BACKGROUND_PROMPT = "an empty table top"
REGION_SCALES = (1.0, 1.5)
_BATCH = 256  # crops per forward pass: large enough to keep the CPU busy, small in memory
_TEXT_MEMO = 16  # prompt sets whose embeddings a teacher keeps in memory
_CACHE_FORMAT = 1
_KEY_DISTRIBUTIONS = ("torch", "transformers", "pillow")


class Teacher:
    """A dual encoder ready to embed names and image regions (all on `device`, eval mode).

    `name`: the source as given ("nano-clip" for the default); `fingerprint`: sha256 of its
    weights and processor files (what the region cache keys on); `dim`: embedding size;
    `max_text_tokens`: the text tower's length; `logit_scale`: its learned softmax scale.
    """

    def __init__(self, model, processor, *, name: str, fingerprint: str,
                 device: str = "cpu", source: str | None = None) -> None:
        self.model = model.to(device).eval()
        self.source = source  # what `load` was given (None: the nano CLIP), to load it again
        self.processor = processor
        self.device = device
        self.name = name
        self.fingerprint = fingerprint
        tokenizer = processor.tokenizer
        limits = [getattr(model.config, "text_config", model.config).max_position_embeddings]
        if 0 < (tokenizer.model_max_length or 0) < 10**6:  # "unset" is a huge number
            limits.append(tokenizer.model_max_length)
        self.max_text_tokens = int(min(limits))
        # SigLIP was trained on text padded to its full length, and only reads it that way.
        self._padding = "max_length" if "siglip" in model.config.model_type else True
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.detach().exp()) if scale is not None else 100.0
        self.side = _input_side(processor.image_processor)  # crops are resized to this square
        self.fill = tuple(round(255 * m) for m in processor.image_processor.image_mean)
        self._text_memo: dict[tuple, torch.Tensor] = {}
        self.dim = int(self._encode_texts(["object"]).shape[1])

    @classmethod
    def load(cls, source: str | Path | None = None, device: str = "cpu") -> Teacher:
        """The dual encoder at `source` (hub id or folder); None: the shipped nano CLIP.
        ModelLoadError if it cannot be loaded or is not a dual encoder."""
        from transformers import AutoConfig, AutoModel, AutoProcessor

        from domainvlm.base_identity import model_folder, weights_fingerprint
        from domainvlm.data.cache import processor_fingerprint
        from domainvlm.loading import resolve_source

        if source is None:
            from domainvlm.nano.clip import nano_clip_path

            name, resolved = "nano-clip", str(nano_clip_path())
        else:
            name, resolved = str(source), resolve_source(str(source))
        try:
            config = AutoConfig.from_pretrained(resolved)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load teacher {name!r}: {exc}") from None
        _check_dual_encoder(config, name)
        try:
            model = AutoModel.from_pretrained(resolved)
            processor = AutoProcessor.from_pretrained(resolved)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"cannot load teacher {name!r}: {exc}") from None
        if not (hasattr(processor, "tokenizer") and hasattr(processor, "image_processor")):
            raise ModelLoadError(f"teacher {name!r} has a {type(processor).__name__}, not a "
                                 "processor with both a tokenizer and an image processor: save "
                                 "the dual encoder's processor beside its weights")
        folder = model_folder(resolved)
        weights = weights_fingerprint(folder) if folder else None
        digest = hashlib.sha256(f"{weights or _state_digest(model)}|"
                                f"{processor_fingerprint(processor)}".encode()).hexdigest()
        return cls(model, processor, name=name, fingerprint=digest, device=device,
                   source=None if source is None else str(source))

    def count_tokens(self, text: str) -> int:
        """Tokens the text tower reads for `text`, special tokens included."""
        return len(self.processor.tokenizer(text)["input_ids"])

    @torch.inference_mode()
    def embed_text(self, names: Sequence[str],
                   templates: Sequence[str] = PROMPT_TEMPLATES) -> torch.Tensor:
        """(N, D) unit vectors: per name, the normalised mean of its normalised template
        embeddings (a prompt ensemble). DetectionInputError for an empty, blank, repeated or
        (once templated) overlong name."""
        templates = tuple(templates)
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise DetectionInputError(f"prompt templates {templates!r}: give at least one, "
                                      "each with one {} where the name goes")
        names = check_prompts(names, max_tokens=self.max_text_tokens, count_tokens=lambda n: max(
            self.count_tokens(t.format(n)) for t in templates))
        key = (tuple(names), templates)
        if key not in self._text_memo:
            texts = [t.format(n) for n in names for t in templates]
            each = self._encode_texts(texts).view(len(names), len(templates), -1)
            if len(self._text_memo) >= _TEXT_MEMO:  # prompt sets change: keep the recent ones
                self._text_memo.pop(next(iter(self._text_memo)))
            self._text_memo[key] = _unit(each.mean(dim=1))
        return self._text_memo[key].clone()

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """(N, D) unit vectors, one per text as written."""
        parts = []
        for start in range(0, len(texts), _BATCH):
            tokens = self.processor.tokenizer(
                texts[start:start + _BATCH], padding=self._padding, return_tensors="pt",
                max_length=self.max_text_tokens if self._padding == "max_length" else None)
            inputs = {k: v.to(self.device) for k, v in tokens.items()
                      if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                parts.append(_pooled(self.model.get_text_features(**inputs)).float().cpu())
        return _unit(torch.cat(parts))

    @torch.inference_mode()
    def embed_crops(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) unit vectors of image crops, each padded to a square with the processor's
        mean colour first (a centre crop would cut off the ends of long objects)."""
        crops = [as_rgb(c, name=f"crop {i + 1}") for i, c in enumerate(crops)]
        return self._embed_squares([square_crop(c, (0, 0, *c.size), 1.0, side=self.side,
                                                fill=self.fill) for c in crops])

    @torch.inference_mode()
    def embed_regions(self, image: Image.Image, boxes: torch.Tensor,
                      scales: Sequence[float] = REGION_SCALES) -> torch.Tensor:
        """(K, D) unit vectors of `boxes` (K, 4) xyxy pixels: each box cropped at every scale
        around its centre (clamped to the image), embedded, averaged and renormalised."""
        image = as_rgb(image)
        boxes = _checked_boxes(boxes)
        if not scales or any(s <= 0 for s in scales):
            raise DetectionInputError(f"crop scales {tuple(scales)!r} must be positive numbers")
        if not len(boxes):
            return torch.zeros(0, self.dim)
        squares = [square_crop(image, box, s, side=self.side, fill=self.fill)
                   for s in scales for box in boxes.tolist()]
        each = self._embed_squares(squares).view(len(scales), len(boxes), -1)
        return _unit(each.mean(dim=0))

    def classify_regions(self, image: Image.Image, boxes: torch.Tensor, names: Sequence[str], *,
                         temperature: float | None = None) -> RegionScores:
        """Crop-and-classify: per box, a softmax over `names` plus BACKGROUND_PROMPT of cosine
        similarity times `logit_scale` (or divided by `temperature`); the background column is
        dropped, so a box that looks like bare table has low scores everywhere."""
        names = check_prompts(names)
        if BACKGROUND_PROMPT.lower() in (n.lower() for n in names):
            raise DetectionInputError(f"{BACKGROUND_PROMPT!r} is the background prompt: leave "
                                      "it out of the category names")
        if temperature is not None and not temperature > 0:
            raise DetectionInputError(f"temperature must be positive, got {temperature}")
        text = self.embed_text([*names, BACKGROUND_PROMPT])
        regions = self.embed_regions(image, boxes)
        scale = 1.0 / temperature if temperature else self.logit_scale
        probs = torch.softmax(regions @ text.T * scale, dim=-1)[:, :-1]
        return RegionScores(boxes=_checked_boxes(boxes).float(), probs=probs,
                            vocabulary=list(names))

    def _pixels(self, squares: list[Image.Image]) -> torch.Tensor:
        """The image processor's input for `side`-pixel squares, given as one uint8 batch (the
        same values as a list of PIL images, in a fraction of the time)."""
        batch = torch.from_numpy(np.stack([np.asarray(s) for s in squares])).permute(0, 3, 1, 2)
        return self.processor.image_processor(images=batch, return_tensors="pt")["pixel_values"]

    def _embed_squares(self, squares: list[Image.Image]) -> torch.Tensor:
        parts = []
        for start in range(0, len(squares), _BATCH):
            pixels = self._pixels(squares[start:start + _BATCH])
            with torch.inference_mode():
                features = self.model.get_image_features(pixel_values=pixels.to(self.device))
            parts.append(_pooled(features).float().cpu())
        return _unit(torch.cat(parts)) if parts else torch.zeros(0, self.dim)


def region_embeddings(teacher: Teacher, items: Sequence[tuple[Path, torch.Tensor]], *,
                      cache_dir: Path | None, scales: Sequence[float] = REGION_SCALES,
                      reporter: Reporter | None = None) -> list[torch.Tensor]:
    """The teacher's region embeddings ((K_i, D) each) of many images' boxes, computed once and
    kept on disk: one file per call under `cache_dir` (default `$DOMAINVLM_CACHE/regions`),
    keyed by all that shapes the values (teacher fingerprint, image bytes, boxes, scales,
    this module's code, the torch / transformers / Pillow versions), so a hit is always safe."""
    from domainvlm.atomic import atomic_file
    from domainvlm.data.cache import cache_root

    items = [(Path(path), _checked_boxes(boxes)) for path, boxes in items]
    key = _regions_key(teacher, items, tuple(float(s) for s in scales))
    path = (cache_dir or cache_root() / "regions") / f"{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError):
            path.unlink(missing_ok=True)  # a damaged entry: computed again below
    result = []
    with (reporter or Reporter()).task("teacher region embeddings", total=len(items)) as advance:
        for image_path, boxes in items:
            with Image.open(image_path) as image:
                result.append(teacher.embed_regions(image, boxes, scales))
            advance()
    with atomic_file(path) as handle:
        torch.save(result, handle)
    return result


def _regions_key(teacher: Teacher, items: list[tuple[Path, torch.Tensor]],
                 scales: tuple[float, ...]) -> str:
    from domainvlm.data.images import image_digest

    digest = hashlib.sha256(json.dumps(
        [_CACHE_FORMAT, teacher.fingerprint, list(scales), _code_fingerprint()]).encode())
    for path, boxes in items:
        digest.update(image_digest(path).encode())
        digest.update(f"{tuple(boxes.shape)}".encode())
        digest.update(boxes.double().contiguous().numpy().tobytes())
    return digest.hexdigest()


@functools.cache
def _code_fingerprint() -> str:
    """This module's source and the versions of the libraries that crop and embed."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for name in _KEY_DISTRIBUTIONS:
        digest.update(f"{name}=={importlib.metadata.version(name)}".encode())
    return digest.hexdigest()


def _check_dual_encoder(config, name: str) -> None:
    """ModelLoadError unless AutoModel builds a class with both feature methods (checked on
    the class, before any weights are read)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    class_name = MODEL_MAPPING_NAMES.get(config.model_type)
    model_class = getattr(transformers, class_name, None) if isinstance(class_name, str) else None
    if model_class is None or not all(hasattr(model_class, m) for m in
                                      ("get_text_features", "get_image_features")):
        raise ModelLoadError(
            f"{name!r} is a {config.model_type!r} model, not a dual encoder: a teacher needs "
            "get_text_features and get_image_features (a CLIP, SigLIP, OWL-ViT/OWLv2 or "
            "VisionTextDualEncoder model, e.g. openai/clip-vit-base-patch32)")


def _input_side(image_processor) -> int:
    """The square side the image tower takes (a size is a dict or a transformers SizeDict)."""
    crop = getattr(image_processor, "crop_size", None)
    size = crop if crop and getattr(image_processor, "do_center_crop", False) else \
        image_processor.size
    for key in ("height", "shortest_edge"):
        side = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if side:
            return int(side)
    raise ModelLoadError(f"the teacher's image processor has no square input size ({size!r})")


def square_crop(image: Image.Image, box: Sequence[float], scale: float, *, side: int,
                fill: tuple[int, ...]) -> Image.Image:
    """The region `box` (xyxy) grown by `scale` about its centre and clamped to the image,
    centred on a square of `fill` colour (a centre crop would cut off the ends of long objects)
    and resized to `side` pixels: what the teacher sees of a region, in training and use."""
    crop = image.crop(_scaled_box(box, scale, image.size))
    length = max(crop.size)
    square = Image.new("RGB", (length, length), fill)
    square.paste(crop, ((length - crop.width) // 2, (length - crop.height) // 2))
    return square.resize((side, side), Image.Resampling.BICUBIC)


def _scaled_box(box: Sequence[float], scale: float, size: tuple[int, int]) -> tuple[int, ...]:
    """`box` grown by `scale` about its centre, clamped to the image, at least a pixel wide."""
    width, height = size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = (box[2] - box[0]) * scale / 2, (box[3] - box[1]) * scale / 2
    x0 = min(max(round(cx - half_w), 0), width - 1)
    y0 = min(max(round(cy - half_h), 0), height - 1)
    x1 = max(min(round(cx + half_w), width), x0 + 1)
    y1 = max(min(round(cy + half_h), height), y0 + 1)
    return x0, y0, x1, y1


def _checked_boxes(boxes: torch.Tensor) -> torch.Tensor:
    boxes = torch.as_tensor(boxes, dtype=torch.float32).cpu()
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DetectionInputError(f"boxes must be a (K, 4) xyxy tensor, got shape "
                                  f"{tuple(boxes.shape)}")
    if len(boxes) and not torch.isfinite(boxes).all():
        raise DetectionInputError("boxes hold a non-finite coordinate (NaN or inf)")
    return boxes


def _pooled(features) -> torch.Tensor:
    """transformers 5 returns a BaseModelOutputWithPooling; older code a tensor."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(vectors, dim=-1)


def _state_digest(model) -> str:
    """The weights' hash when no checkpoint file can be read (a model built in memory)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()

