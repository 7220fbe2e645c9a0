"""`domainvlm info`: what a model is to the engine, without loading its weights."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path


def describe(source: str | None) -> list[str]:
    import torch

    from domainvlm.loading import pick_device

    lines = [f"domainvlm {version('domainvlm')}  torch {torch.__version__}  "
             f"transformers {version('transformers')}  peft {version('peft')}",
             f"device: {pick_device()}  threads: {torch.get_num_threads()}"]
    if source is None:
        return lines
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from domainvlm.adapter_io import adapter_base, is_adapter_folder
    from domainvlm.data.encode import image_token_id
    from domainvlm.data.prompting import PromptFormat
    from domainvlm.families import family_for
    from domainvlm.loading import load_config
    from domainvlm.train.lora import parameter_report, select_targets

    if is_adapter_folder(source):
        source = adapter_base(Path(source))
        lines.append(f"adapter of: {source}")
    resolved, config = load_config(source)
    family = family_for(config.model_type)
    with init_empty_weights():
        model = AutoModelForImageTextToText.from_config(config)
    processor = AutoProcessor.from_pretrained(resolved)
    fmt = PromptFormat.from_processor(processor, family)
    tokenizer = processor.tokenizer
    lines += [
        f"model: {source}  type: {config.model_type}  class: {type(model).__name__}",
        f"family: {family.name}" + ("  (generic path: not in the registry)"
                                    if family.name == "generic" else ""),
        f"image token: {image_token_id(processor)}  end of turn: "
        f"{tokenizer.convert_ids_to_tokens(fmt.end_of_turn_id)!r}",
    ]
    for name, (_, total) in sorted(parameter_report(model).rows.items()):
        lines.append(f"  {name:<10} {total:>14,} parameters")
    targets = select_targets(model, ["language"])
    lines.append(f"default LoRA targets: {targets if isinstance(targets, str) else len(targets)}")
    return lines
