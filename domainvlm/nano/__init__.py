"""The nano base model and the synthetic worlds it learns from.

`model`: the recipe, its two-stage pretraining, the shipped result and the cache;
`tower_pretext`: the vision tower's spot-finding pretext task; `shapes_world` and
`findings_world`: generic synthetic scenes with questions and answers; `tabletop_world`: a
robot's camera scenes with boxes (COCO) for open-vocabulary detection. `clip` and
`clip_training`: the nano CLIP, the offline teacher of open-vocabulary detection, trained on
`tabletop_world`. Nothing else in the core imports a world except the command line
(`domainvlm synth-data`); the demos do.
"""

from domainvlm.nano.model import (
    DEFAULT_RECIPE,
    RECIPE_FILE,
    SHIPPED,
    NanoRecipe,
    ensure_nano,
    load_recipe,
    nano_cache_root,
    nano_path,
    pretrain_nano,
    rebuild_nano,
    shipped_nano,
    tower_path,
    with_input_size,
)

__all__ = ["DEFAULT_RECIPE", "RECIPE_FILE", "SHIPPED", "NanoRecipe", "ensure_nano", "load_recipe",
           "nano_cache_root", "nano_path", "pretrain_nano", "rebuild_nano", "shipped_nano",
           "tower_path", "with_input_size"]
