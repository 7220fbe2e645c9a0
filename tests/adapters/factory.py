"""Real adapters for tests: a tiny base + LoRA weights that change its answers, with
`base_model.json` recorded as `domainvlm finetune` records it.

`make_adapter(base, out, kind=...)` wraps the base the way fine-tuning does
(`domainvlm.train.lora.apply_lora`), then fills every LoRA B matrix (PEFT starts them at zero,
which would leave answers unchanged) and, for `projector`, the fully trained projector copy
with seeded noise. Import it from another test folder with
`sys.path.insert(0, str(Path(__file__).parents[1] / "adapters")); from factory import make_adapter`.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("lora", "dora", "projector")


def make_adapter(base_folder: Path | str, out_folder: Path | str, *, kind: str = "lora",
                 seed: int = 0) -> Path:
    """Write a PEFT adapter of `kind` for the model at `base_folder` into `out_folder`.

    lora: LoRA on the language model (mixable with other LoRA adapters in one batch);
    dora: the same with DoRA (not mixable); projector: LoRA plus the projector trained in
    full (`--train-fully projector`, saved as modules_to_save: not mixable)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from domainvlm.base_identity import identify, write_record
    from domainvlm.train.lora import apply_lora

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {', '.join(KINDS)}")
    base_folder, out_folder = Path(base_folder), Path(out_folder)
    model = AutoModelForImageTextToText.from_pretrained(str(base_folder), dtype=torch.float32)
    model = apply_lora(model, method="dora" if kind == "dora" else "lora", r=4, alpha=8,
                       dropout=0.0, components=["language"],
                       fully=["projector"] if kind == "projector" else [])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or ("modules_to_save" in name and kind == "projector"):
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    out_folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_folder))
    AutoProcessor.from_pretrained(str(base_folder)).save_pretrained(str(out_folder))
    write_record(out_folder, identify(str(base_folder)))
    return out_folder
