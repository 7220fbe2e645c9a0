"""The nano base model: a small FastVLM that this project pretrains itself, so the main job
runs with no hub and no GPU.

The recipe is `recipe.yaml` beside this module (read into a `NanoRecipe`): a random `small`
FastVLM (`domainvlm.models.random_init`: timm FastViT convolutional tower + Llama language
model, 7.7 M parameters) whose tower first learns to find spots in a generic findings world
(`tower_pretext`), then whose projector and language model our own engine fine-tunes on the
generic synthetic worlds (`shapes_world` and `findings_world`: existence, colour, shape, size,
count, side, captions, "There is none." for false premises). The default recipe's result ships
in the package (`domainvlm/assets/nano`, float16 on disk); any other recipe, or `domainvlm nano
pretrain --force`, is built and cached under `$DOMAINVLM_CACHE/nano/<recipe hash>` (the tower
stage apart, under its own key, as it is the long one). Either loads with plain
`AutoModelForImageTextToText.from_pretrained`. Users pass `--model <hub id>` instead.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from domainvlm.atomic import new_folder, publish, temp_dir_for
from domainvlm.progress import Reporter


@dataclass(frozen=True)
class NanoRecipe:
    """Everything that decides the nano model's weights: same recipe, same model. The values
    of the shipped model, each with why, are in `recipe.yaml` beside this module."""

    family: str
    size: str
    image_size: int
    tower_steps: int
    tower_batch_size: int
    tower_learning_rate: float
    tower_position_weight: float
    world: str
    scenes: int
    findings_scenes: int
    epochs: float
    learning_rate: float
    batch_size: int
    seed: int

    def key(self) -> str:
        return _digest(asdict(self))

    def tower_key(self) -> str:
        """What decides the model after the tower stage (cached apart: it is the long one)."""
        names = ("family", "size", "image_size", "tower_steps", "tower_batch_size",
                 "tower_learning_rate", "tower_position_weight", "seed")
        return _digest({name: getattr(self, name) for name in names})


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


RECIPE_FILE = Path(__file__).with_name("recipe.yaml")


def load_recipe(path: Path) -> NanoRecipe:
    """A NanoRecipe from a JSON or YAML file of its fields; the keys it leaves out keep the
    shipped recipe's values. Errors name the key and the bad value."""
    import dataclasses

    return dataclasses.replace(DEFAULT_RECIPE, **_recipe_values(path))


def _recipe_values(path: Path) -> dict:
    """The checked fields of a recipe file: known keys, finite values of the field's type."""
    import dataclasses
    import math

    import yaml

    from domainvlm.errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}  # JSON is YAML
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe file {path} is neither JSON nor YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"recipe file {path}: must hold a mapping of recipe keys to values")
    kinds = {f.name: {"str": str, "int": int, "float": float}[f.type]
             for f in dataclasses.fields(NanoRecipe)}
    for key, value in values.items():
        if key not in kinds:
            raise ConfigError(f"recipe file {path}: unknown key `{key}`; valid keys: "
                              f"{', '.join(kinds)}")
        kind = kinds[key]
        fits = (isinstance(value, kind) and not isinstance(value, bool)) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not fits or (kind is float and not math.isfinite(value)):
            raise ConfigError(f"recipe file {path}: `{key}` must be a finite {kind.__name__}, "
                              f"got {value!r}")
        if kind in (int, float) and value < 0:
            raise ConfigError(f"recipe file {path}: `{key}` cannot be negative, got {value!r}")
    return {k: float(v) if kinds[k] is float else v for k, v in values.items()}


def _shipped_recipe() -> NanoRecipe:
    """The recipe in `recipe.yaml`, which must name every field: it is the one home of the
    default values."""
    import dataclasses

    from domainvlm.errors import ConfigError

    values = _recipe_values(RECIPE_FILE)
    missing = [f.name for f in dataclasses.fields(NanoRecipe) if f.name not in values]
    if missing:
        raise ConfigError(f"recipe file {RECIPE_FILE}: missing {', '.join(missing)}")
    return NanoRecipe(**values)


DEFAULT_RECIPE = _shipped_recipe()




def nano_cache_root() -> Path:
    from domainvlm.data.cache import cache_root

    return cache_root() / "nano"


def nano_path(recipe: NanoRecipe = DEFAULT_RECIPE) -> Path:
    """Where the model of `recipe` lives once built (it may not exist yet)."""
    return nano_cache_root() / f"{recipe.family}-{recipe.key()}"


SHIPPED = Path(__file__).parents[1] / "assets" / "nano"


def shipped_nano(recipe: NanoRecipe = DEFAULT_RECIPE) -> Path | None:
    """The packaged model when it was built from exactly `recipe`."""
    info = SHIPPED / "recipe.json"
    if info.is_file() and json.loads(info.read_text()) == asdict(recipe):
        return SHIPPED
    return None


def ensure_nano(recipe: NanoRecipe = DEFAULT_RECIPE, reporter: Reporter | None = None) -> Path:
    """The nano model of `recipe`: the cached build if there, else shipped, else built."""
    path = nano_path(recipe)
    if (path / "config.json").is_file():
        return path
    return shipped_nano(recipe) or pretrain_nano(path, recipe, reporter)


def rebuild_nano(recipe: NanoRecipe = DEFAULT_RECIPE, reporter: Reporter | None = None) -> Path:
    """Pretrain `recipe` from scratch, both stages, into the cache, whatever is cached or
    shipped; the cached model is replaced only once the new one is complete."""
    shutil.rmtree(tower_path(recipe), ignore_errors=True)  # the tower stage is cached apart
    path = nano_path(recipe)
    temp = temp_dir_for(path)
    shutil.rmtree(temp, ignore_errors=True)
    pretrain_nano(temp, recipe, reporter)
    publish(temp, path)
    return path


def pretrain_nano(output: Path, recipe: NanoRecipe = DEFAULT_RECIPE,
                  reporter: Reporter | None = None) -> Path:
    """Build, pretrain and publish the nano model at `output` (absent or empty) atomically.

    Two stages: the vision tower learns to find spots (`tower_pretext`, cached on its own),
    then, with that tower frozen, the projector and language model learn to answer questions
    about shapes and spots with our fine-tuning engine.
    """
    import tempfile

    from domainvlm.train.config import FinetuneConfig
    from domainvlm.train.loop import finetune

    reporter = reporter or Reporter()
    with tempfile.TemporaryDirectory(prefix="nano-") as work, new_folder(output) as partial:
        work = Path(work)
        reporter.line(f"pretraining the nano base model (recipe {recipe.key()}); it is cached "
                      "for later runs")
        base = _tower_stage(recipe, work, reporter)
        data = _language_data(work / "data", recipe)
        result = finetune(FinetuneConfig(
            model=str(base), data=str(data), output=work / "run", method="full",
            frozen=["vision"] if recipe.tower_steps else [], epochs=recipe.epochs,
            learning_rate=recipe.learning_rate, batch_size=recipe.batch_size,
            warmup_ratio=0.05, seed=recipe.seed, cache_dir=work / "cache"), reporter)
        _save_half(result.adapter, partial)
        (partial / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
        (partial / "README.md").write_text(_card(recipe, result.final_loss, result.seconds))
    return output


def _tower_stage(recipe: NanoRecipe, work: Path, reporter: Reporter) -> Path:
    """The recipe's random model, its vision tower pretrained on spots (cached by tower key)."""
    from domainvlm.models.random_init import write_random_model

    def build(folder: Path) -> Path:
        write_random_model(recipe.family, folder, seed=recipe.seed,
                           image_size=recipe.image_size, size=recipe.size)
        return folder

    if not recipe.tower_steps:
        return build(work / "random")
    path = tower_path(recipe)
    if (path / "config.json").is_file():
        return path
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from domainvlm.nano.tower_pretext import pretrain_tower

    random_init = build(work / "random")
    model = AutoModelForImageTextToText.from_pretrained(random_init)
    processor = AutoProcessor.from_pretrained(random_init)
    tower = model.model.vision_tower
    if not hasattr(tower, "timm_model"):
        raise ValueError(f"tower_steps needs a convolutional (timm) vision tower; the "
                         f"{recipe.family} family has {type(tower).__name__}: set tower_steps=0")
    pretrain_tower(tower, processor.image_processor, steps=recipe.tower_steps,
                   batch_size=recipe.tower_batch_size,
                   learning_rate=recipe.tower_learning_rate, seed=recipe.seed,
                   image_size=recipe.image_size,
                   position_weight=recipe.tower_position_weight, reporter=reporter)
    if (path / "config.json").is_file():  # another process published it meanwhile
        return path
    with new_folder(path) as partial:
        model.save_pretrained(partial)
        processor.save_pretrained(partial)
    return path


def with_input_size(model_dir: Path, size: int, output: Path) -> Path:
    """A copy of the FastVLM at `model_dir` that takes `size` px images, at `output`.

    Its FastViT tower is convolutional, so the weights stay as they are: only the processor's
    size and the number of image tokens (one per 32 px cell) change. A larger input shows small
    findings on more pixels, at the cost of more image tokens.
    """
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(model_dir)
    if getattr(config, "model_type", None) != "fast_vlm":
        raise ValueError(f"{model_dir} is a {config.model_type}, not a FastVLM: only a "
                         "convolutional tower takes another input size with the same weights")
    processor = AutoProcessor.from_pretrained(model_dir)
    if size < processor.patch_size or size % processor.patch_size:
        raise ValueError(f"size must be a positive multiple of {processor.patch_size} px (one "
                         f"image token per cell); got {size}")
    with new_folder(output) as partial:
        for item in Path(model_dir).iterdir():
            if item.is_file():
                shutil.copy2(item, partial / item.name)
        config.image_seq_length = (size // processor.patch_size) ** 2
        config.save_pretrained(partial)
        processor.image_processor.size = {"shortest_edge": size}
        processor.image_processor.crop_size = {"height": size, "width": size}
        processor.save_pretrained(partial)
    return output


def tower_path(recipe: NanoRecipe = DEFAULT_RECIPE) -> Path:
    """Where the recipe's model after the tower stage is cached."""
    return nano_cache_root() / f"tower-{recipe.tower_key()}"


def _language_data(folder: Path, recipe: NanoRecipe) -> Path:
    """Shapes and spots questions in one training file (image paths relative to it)."""
    from domainvlm.nano.findings_world import write_findings_dataset
    from domainvlm.nano.shapes_world import write_shapes_dataset

    shapes = write_shapes_dataset(folder / "shapes", recipe.scenes, seed=recipe.seed,
                                  image_size=recipe.image_size, eval_fraction=0.0,
                                  world=recipe.world)["train"]
    parts = [("shapes", shapes)]
    if recipe.findings_scenes:
        parts.append(("spots", write_findings_dataset(
            folder / "spots", recipe.findings_scenes, seed=recipe.seed,
            image_size=recipe.image_size)))
    lines = []
    for name, path in parts:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            row["image"] = f"{name}/{row['image']}"
            lines.append(json.dumps(row) + "\n")
    mixed = folder / "train.jsonl"
    mixed.write_text("".join(lines), encoding="utf-8")
    return mixed


def _save_half(model_dir: Path, dest: Path) -> None:
    """The model with float16 weights (half the bytes: the package ships them) that load as
    float32, plus its processor files."""
    import torch
    from transformers import AutoModelForImageTextToText

    for item in model_dir.iterdir():
        if item.is_file() and ".safetensors" not in item.name:  # weights (and any index)
            shutil.copy2(item, dest / item.name)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    model.to(torch.float16).save_pretrained(dest)
    config = json.loads((dest / "config.json").read_text())
    for part in (config, config.get("text_config", {}), config.get("vision_config", {})):
        if "dtype" in part:
            part["dtype"] = "float32"
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _card(recipe: NanoRecipe, loss: float | None, seconds: float) -> str:
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [domainvlm, nano, synthetic]
---
# domainvlm nano ({recipe.family}, recipe {recipe.key()})

**What it is.** A {recipe.size} {recipe.family} (a timm FastViT convolutional
vision tower, a Llama language model, a byte-level BPE tokenizer of 1,500 tokens; weights stored
as float16, loaded as float32) initialised at random and pretrained by domainvlm in two stages.
First the vision tower learns, for {recipe.tower_steps} steps of {recipe.tower_batch_size} new
scenes, which 32 px cells of a generic "findings" world hold a spot
(`domainvlm.nano.findings_world`: discs of 1-6 px radius, faint or strong, in a field of regions
and texture seen through three random windows; no anatomy) and where each cell lies (the tower
has no position embedding). Then, with the tower frozen, the projector and language model are
fully fine-tuned for {recipe.epochs:g} epoch(s) on {recipe.scenes} scenes of coloured shapes
(`domainvlm.nano.shapes_world`, {recipe.world} world) and {recipe.findings_scenes} spot scenes,
seed {recipe.seed}, {recipe.image_size} px: questions on existence, colour, shape, size, count and
side, captions, and "There is none." for questions about things that are absent. Final
training loss {loss if loss is None else round(loss, 3)}, {seconds:.0f} s for the language stage
on the machine that built it. Recipe: `recipe.json`; rebuild with `domainvlm nano pretrain`.

**What it is not.** It has never seen a photograph, a scan or real language. It knows a few
hundred words and answers in the short forms of its training data. It exists so that the
pipeline (adapt, evaluate, report) runs end to end on a laptop CPU; what it learns in
`domainvlm demo` says that adaptation works, not that it is fit for any clinical use. Real
users pass `--model <hub id>` (e.g. a LLaVA, Qwen2.5-VL or SmolVLM checkpoint).
"""
