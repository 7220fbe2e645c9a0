"""Where LoRA goes: linear layers of the chosen components, never Conv layers or the LM head.

Components are found by the attribute names transformers VLMs use (`domainvlm.models.parts`),
so a new model whose parts carry the usual names needs no registry entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from domainvlm.compat import peft_wrapping
from domainvlm.errors import ConfigError
from domainvlm.models.parts import COMPONENT_NAMES, component_of, part_name


def linear_modules(model: Any) -> dict[str, str]:
    """Module name -> component, for every Linear layer inside a known component."""
    import torch

    found = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            component = component_of(name)
            if component is not None:
                found[name] = component
    return found


def select_targets(model: Any, components: list[str]) -> str | list[str]:
    """PEFT `target_modules` for the Linear layers of `components`.

    A compact regex when it matches exactly those layers (it keeps adapter_config.json short),
    else the explicit list of module names.
    """
    chosen = sorted(n for n, c in linear_modules(model).items() if c in components)
    if not chosen:
        raise ConfigError(
            f"no Linear layers found in {components}; this model's parts are not named like "
            f"known VLMs ({', '.join(n for names in COMPONENT_NAMES.values() for n in names)})"
        )
    leaves = sorted({n.rsplit(".", 1)[-1] for n in chosen})
    prefixes = sorted({_component_prefix(n) for n in chosen})
    pattern = (f"(?:{'|'.join(map(re.escape, prefixes))})\\.(?:.*\\.)?"
               f"(?:{'|'.join(map(re.escape, leaves))})")
    all_names = [name for name, _ in model.named_modules()]
    if sorted(n for n in all_names if re.fullmatch(pattern, n)) == chosen:
        return pattern
    return chosen


def _component_prefix(name: str) -> str:
    parts = name.split(".")
    known = {n for names in COMPONENT_NAMES.values() for n in names}
    last = max(i for i, part in enumerate(parts) if part in known)
    return ".".join(parts[: last + 1])


@dataclass
class ParameterReport:
    """Trainable and total parameters per component, for the start-of-run table."""

    rows: dict[str, tuple[int, int]]  # component -> (trainable, total)

    @property
    def trainable(self) -> int:
        return sum(t for t, _ in self.rows.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.rows.values())


def parameter_report(model: Any) -> ParameterReport:
    """Trainable and total parameters per part. A part trained in full beside LoRA is counted
    once: PEFT keeps its frozen original (`original_module`) next to the trained copy."""
    rows: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        if ".original_module." in name:
            continue
        component = component_of(name) or "other"
        row = rows.setdefault(component, [0, 0])
        row[0] += param.numel() if param.requires_grad else 0
        row[1] += param.numel()
    return ParameterReport({k: (v[0], v[1]) for k, v in rows.items()})


def apply_lora(model: Any, *, method: str, r: int, alpha: int, dropout: float,
               components: list[str], fully: list[str] = ()) -> Any:
    """Wrap `model` with a PEFT LoRA/DoRA adapter; QLoRA models are prepared for k-bit first.

    The parts in `fully` train in full beside it and are saved in the adapter
    (`modules_to_save`)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=select_targets(model, components),
        use_dora=method == "dora",
        bias="none",
        modules_to_save=[part_name(model, part) for part in fully] or None,
    )
    with peft_wrapping():
        return get_peft_model(model, config)


def freeze_components(model: Any, components: list[str]) -> None:
    """Turn gradients off for the parameters of `components` (decided per parameter: Qwen keeps
    its projector inside the vision tower)."""
    for name, param in model.named_parameters():
        if component_of(name) in components:
            param.requires_grad_(False)


def may_leave_trainables_unused(model: Any) -> bool:
    """Whether some trainable parameter may get no gradient in a step, so DDP must look for
    unused parameters (it fails on the second step otherwise).

    Decided from what trains, whatever made it trainable (LoRA, `train_fully`, full training):
    a vision tower or projector holds layers a forward never reaches (LLaVA reads the
    second-to-last CLIP layer and never uses CLIP's pooled head), and parts outside the known
    components may be used only by some inputs. A trained language model and its LM head are
    reached by every step, and there the search (a graph walk per step) is skipped.
    """
    for name, param in model.named_parameters():
        if param.requires_grad and component_of(name) != "language" and \
                "lm_head" not in name.split("."):
            return True
    return False


def untrained_modules(model: Any) -> list[Any]:
    """Modules of the parts in which no parameter trains, for train_mode to keep in eval."""
    training = {component_of(name) for name, p in model.named_parameters() if p.requires_grad}
    idle = set(COMPONENT_NAMES) - training
    return [module for name, module in model.named_modules()
            if name and component_of(name) in idle]


def train_mode(model: Any, untrained: list[Any]) -> None:
    """Training mode, except untrained parts: their batch-norm statistics stay pretraining's.
    Set module by module, as a part may hold another (Qwen's merger in its vision tower)."""
    model.train()
    for module in untrained:
        module.training = False
