"""What the engine must know about each VLM family, in one table.

Everything else (prompt layout, end-of-turn token, module names for LoRA) is read from the
model and its processor at run time, so a model whose family is not listed here still works
through the generic path when it ships a chat template; see `family_for`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    """Family knowledge that cannot be read off a model or processor."""

    name: str
    model_types: tuple[str, ...]
    # "chat": the prompt comes from the processor's chat template.
    # "plain": the processor builds the prompt itself from the question (PaliGemma).
    prompt_style: str = "chat"
    # Per-token keys whose value for answer tokens differs from 0 (PaliGemma's suffix mask).
    answer_token_values: dict[str, int] = field(default_factory=dict)
    # Processor knobs for image resolution: CLI name -> image-processor `size` key.
    resolution_keys: dict[str, str] = field(default_factory=dict)
    # Whether several images may share one prompt.
    multi_image: bool = True
    # How the model takes precomputed image features (`mm_encoder_outputs`): "list" of
    # tensors, one "tensor", or None when unknown (then features are never cached).
    image_features_as: str | None = "list"
    # Whether the vision tower's outputs hold one row per image (not flattened patches or
    # tiles), so a frozen tower's outputs can be kept per image (`TowerMemo`).
    tower_rows_per_image: bool = False
    # Whether the rows of one image can share one sequence (`domainvlm.data.packing`): the
    # prompt puts the image first, positions are 1-D and attention is causal throughout.
    packs_questions: bool = False


_QWEN_RESOLUTION = {"min_pixels": "shortest_edge", "max_pixels": "longest_edge"}

FAMILIES: tuple[Family, ...] = (
    Family("llava", ("llava",), tower_rows_per_image=True, packs_questions=True),
    Family("llava-next", ("llava_next",)),
    # The projector output reaches the model as one tensor (FastVlmModel calls .to() on it).
    Family("fast-vlm", ("fast_vlm",), image_features_as="tensor", tower_rows_per_image=True,
           packs_questions=True),
    Family("qwen2-vl", ("qwen2_vl",), resolution_keys=_QWEN_RESOLUTION),
    Family("qwen2.5-vl", ("qwen2_5_vl",), resolution_keys=_QWEN_RESOLUTION),
    Family("idefics3", ("idefics3", "smolvlm"), image_features_as="tensor"),
    Family(
        "paligemma",
        ("paligemma",),
        prompt_style="plain",
        answer_token_values={"token_type_ids": 1},
        multi_image=False,
        image_features_as="tensor",
        tower_rows_per_image=True,
    ),
)

GENERIC = Family("generic", (), image_features_as=None)

# Families that need no entry above: they run the generic path (`GENERIC`). A random model of
# each is built (`domainvlm.models.random_init`) so the generic path stays tested on a real
# architecture (Mllama: images reach the text model by cross-attention, not image tokens).
GENERIC_PATH_FAMILIES: tuple[str, ...] = ("mllama",)


def family_for(model_type: str) -> Family:
    """The registry entry for a transformers `model_type`, or the generic entry."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return GENERIC


def family_names() -> list[str]:
    """The families with an entry in the table."""
    return [f.name for f in FAMILIES]


def known_family_names() -> list[str]:
    """Every family the project builds and tests: the table's, then the generic path's."""
    return family_names() + list(GENERIC_PATH_FAMILIES)
