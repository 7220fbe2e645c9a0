"""The parts of a VLM (vision tower, projector, language model), found by the attribute names
transformers models use, so a new model whose parts carry the usual names needs no entry.

Training picks LoRA targets and frozen parts by them; evaluation and the vision cache hook the
language model and memoise the tower by them.
"""

from __future__ import annotations

from typing import Any

# Attribute names under which VLMs keep each part; the projector is checked first because
# Qwen-VL keeps its merger inside the vision tower.
COMPONENT_NAMES: dict[str, tuple[str, ...]] = {
    "projector": ("multi_modal_projector", "connector", "merger", "mm_projector"),
    "vision": ("vision_tower", "visual", "vision_model", "vision_encoder"),
    "language": ("language_model", "text_model"),
}


def component_of(module_name: str) -> str | None:
    """Which component a module belongs to, by the first known part name in its path."""
    parts = module_name.split(".")
    for component, names in COMPONENT_NAMES.items():
        if any(name in parts for name in names):
            return component
    return None


def part_of(model: Any, component: str) -> Any:
    """The first module named like `component` (the decoder that receives the merged text and
    image embeddings, the vision tower, ...)."""
    return model.get_submodule(part_name(model, component))


def part_name(model: Any, component: str) -> str:
    """The module path of `part_of(model, component)`."""
    for name, _ in model.named_modules():
        if name.split(".")[-1] in COMPONENT_NAMES[component]:
            return name
    raise ValueError(f"{type(model).__name__} has no {component} part named "
                     f"{' / '.join(COMPONENT_NAMES[component])}")
