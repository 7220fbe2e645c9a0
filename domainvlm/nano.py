"""The nano base model: a tiny LLaVA that this project pretrains itself, so the main job runs
with no hub and no GPU.

The recipe is code (`NanoRecipe`): a `small` LLaVA from `domainvlm.tiny` (CLIP vision tower +
Llama language model, ~5 M parameters, random init) is fully fine-tuned by our own engine on
the generic synthetic world of `domainvlm.synth` (shapes: existence, colour, shape, size, count,
side, captions, "There is none." for false premises). The default recipe's result ships in the
package (`domainvlm/assets/nano`, 20 MB: pretraining takes ~4 min on 2 CPU cores, longer than
the demo itself); any other recipe, or `domainvlm nano pretrain --force`, is built and cached
under `$DOMAINVLM_CACHE/nano/<recipe hash>`. Either loads with plain
`AutoModelForImageTextToText.from_pretrained`. Users pass `--model <hub id>` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from domainvlm.atomic import new_folder
from domainvlm.progress import Reporter


@dataclass(frozen=True)
class NanoRecipe:
    """Everything that decides the nano model's weights: same recipe, same model."""

    family: str = "llava"
    size: str = "small"
    image_size: int = 192  # 8x8 patches of 24 px: 64 image tokens
    world: str = "plain"  # see domainvlm.synth.WORLDS
    scenes: int = 900
    epochs: float = 1.0
    learning_rate: float = 1e-3
    batch_size: int = 16
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


DEFAULT_RECIPE = NanoRecipe()


def nano_cache_root() -> Path:
    root = os.environ.get("DOMAINVLM_CACHE") or Path.home() / ".cache" / "domainvlm"
    return Path(root) / "nano"


def nano_path(recipe: NanoRecipe = DEFAULT_RECIPE) -> Path:
    """Where the model of `recipe` lives once built (it may not exist yet)."""
    return nano_cache_root() / f"{recipe.family}-{recipe.key()}"


SHIPPED = Path(__file__).parent / "assets" / "nano"


def shipped_nano(recipe: NanoRecipe = DEFAULT_RECIPE) -> Path | None:
    """The packaged model when it was built from exactly `recipe`."""
    info = SHIPPED / "recipe.json"
    if info.is_file() and json.loads(info.read_text()) == asdict(recipe):
        return SHIPPED
    return None


def ensure_nano(recipe: NanoRecipe = DEFAULT_RECIPE, reporter: Reporter | None = None) -> Path:
    """The nano model of `recipe`: rebuilt in the cache if there, else shipped, else built."""
    path = nano_path(recipe)
    if (path / "config.json").is_file():
        return path
    return shipped_nano(recipe) or pretrain_nano(path, recipe, reporter)


def pretrain_nano(output: Path, recipe: NanoRecipe = DEFAULT_RECIPE,
                  reporter: Reporter | None = None) -> Path:
    """Build, pretrain and publish the nano model at `output` (absent or empty) atomically."""
    import tempfile

    from domainvlm.synth import write_shapes_dataset
    from domainvlm.tiny import build_tiny_model
    from domainvlm.train.config import FinetuneConfig
    from domainvlm.train.loop import finetune

    reporter = reporter or Reporter()
    with tempfile.TemporaryDirectory(prefix="nano-") as work, new_folder(output) as partial:
        work = Path(work)
        reporter.line(f"pretraining the nano base model ({recipe.scenes} synthetic scenes, "
                      f"recipe {recipe.key()}); it is cached for later runs")
        base = build_tiny_model(recipe.family, work / "random", seed=recipe.seed,
                                image_size=recipe.image_size, size=recipe.size)
        data = write_shapes_dataset(work / "data", recipe.scenes, seed=recipe.seed,
                                    image_size=recipe.image_size, eval_fraction=0.05,
                                    world=recipe.world)
        result = finetune(FinetuneConfig(
            model=str(base), data=str(data["train"]), output=work / "run", method="full",
            epochs=recipe.epochs, learning_rate=recipe.learning_rate,
            batch_size=recipe.batch_size, warmup_ratio=0.05, seed=recipe.seed,
            cache_dir=work / "cache"), reporter)
        for item in result.adapter.iterdir():
            shutil.copy2(item, partial / item.name)
        (partial / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
        (partial / "README.md").write_text(_card(recipe, result.final_loss, result.seconds))
    return output


def _card(recipe: NanoRecipe, loss: float | None, seconds: float) -> str:
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [domainvlm, nano, synthetic]
---
# domainvlm nano ({recipe.family}, recipe {recipe.key()})

**What it is.** A ~5 M-parameter LLaVA (CLIP vision tower, Llama language model, a byte-level
BPE tokenizer of 1,500 tokens) initialised at random and then fully fine-tuned by domainvlm for
{recipe.epochs:g} epoch(s) on {recipe.scenes} synthetic scenes of coloured shapes
(`domainvlm.synth`, {recipe.world} world, seed {recipe.seed}, {recipe.image_size} px):
questions on existence, colour, shape, size, count and side, one-line captions, and
"There is none." for questions about shapes that are absent. Final training loss
{loss if loss is None else round(loss, 3)}, {seconds:.0f} s on the machine that built it.
Recipe: `recipe.json`; rebuild with `domainvlm nano pretrain`.

**What it is not.** It has never seen a photograph, a scan or real language. It knows a few
hundred words and answers in the short forms of its training data. It exists so that the
pipeline (adapt, evaluate, report) runs end to end on a laptop CPU; what it learns in
`domainvlm demo` says that adaptation works, not that it is fit for any clinical use. Real
users pass `--model <hub id>` (e.g. a LLaVA, Qwen2.5-VL or SmolVLM checkpoint).
"""
