"""Load any image-text-to-text model and its processor through the transformers Auto classes.

A hub id and a local folder take the same path. What goes wrong (no such folder, offline with an
unknown id, a text-only model) becomes one `ModelLoadError` that says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainvlm.errors import ConfigError, ModelLoadError
from domainvlm.families import Family, family_for


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel for image-text-to-text
    processor: Any  # its ProcessorMixin
    family: Family
    source: str  # the hub id or folder it came from


def pick_device(requested: str | None = None) -> str:
    """The device to run on: the requested one, else CUDA, else Apple MPS, else CPU."""
    import torch

    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(requested: str, device: str):
    """float32 on CPU (bf16 matmuls are slower there), bf16 on GPUs that have it, else fp16."""
    import torch

    if requested != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
                requested
            ]
        except KeyError:
            raise ConfigError(
                f"`--dtype` must be auto, float32, bfloat16 or float16, not {requested!r}"
            ) from None
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_source(source: str) -> str:
    """A local folder as an absolute path, or the hub id unchanged; a missing folder is an error."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model folder {source} has no config.json; pass a folder written by "
                "save_pretrained (or `domainvlm tiny-model`) or a Hugging Face hub id"
            )
        return str(path.resolve())
    # Hub ids are "name" or "org/name"; anything else that is missing was meant as a folder.
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelLoadError(
            f"model folder {source} does not exist; check the path or pass a hub id like "
            "llava-hf/llava-1.5-7b-hf"
        )
    return source


def load_config(source: str):
    """The model's config, checked to be an image-text-to-text architecture."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    resolved = resolve_source(source)
    try:
        config = AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: only cached or local models load)" if offline else ""
        raise ModelLoadError(f"cannot load model {source!r}{hint}: {exc}") from exc
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ModelLoadError(
            f"{source!r} is a {config.model_type!r} model, not an image-text-to-text "
            "(vision-language) model; pass a VLM such as llava-hf/llava-1.5-7b-hf or "
            "Qwen/Qwen2-VL-2B-Instruct"
        )
    return resolved, config


def load_processor(source: str, family: Family, resolution: dict[str, int] | None = None):
    """The model's processor, with resolution knobs (e.g. Qwen's max_pixels) applied."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(
            f"cannot load the processor of {source}: {exc}. A model folder needs the processor "
            "files too (processor.save_pretrained(folder))"
        ) from exc
    for knob, value in (resolution or {}).items():
        key = family.resolution_keys.get(knob)
        if key is None:
            raise ConfigError(
                f"`{knob}` does not apply to the {family.name} family; it applies to: "
                + (", ".join(sorted(family.resolution_keys)) or "no resolution knobs")
            )
        processor.image_processor.size = {**dict(processor.image_processor.size), key: value}
    return processor


def load_model(
    source: str | Path,
    *,
    dtype: str = "auto",
    device: str | None = None,
    quantization: str | None = None,
    resolution: dict[str, int] | None = None,
) -> LoadedModel:
    """Load model + processor from a hub id or folder (a base model, or one written by
    `merge`); `load_with_adapter` also takes adapter folders.

    `quantization="4bit"` loads the weights with bitsandbytes NF4 for QLoRA; it needs a CUDA GPU.

    Example::

        from domainvlm import answer, load_model

        loaded = load_model("llava-hf/llava-1.5-7b-hf")   # LoadedModel(model, processor, ...)
        print(loaded.family.name, type(loaded.model).__name__)
        print(answer(loaded, "scan.png", "What is shown?"))
    """
    from transformers import AutoModelForImageTextToText

    source = str(source)
    resolved, config = load_config(source)
    family = family_for(config.model_type)
    device = pick_device(device)
    kwargs: dict[str, Any] = {"dtype": pick_dtype(dtype, device)}
    if quantization == "4bit":
        kwargs["quantization_config"] = _four_bit_config(device, kwargs["dtype"])
        kwargs["device_map"] = {"": device}
    elif quantization is not None:
        raise ConfigError(f"`quantization` must be None or '4bit', not {quantization!r}")
    processor = load_processor(resolved, family, resolution)
    model = AutoModelForImageTextToText.from_pretrained(resolved, **kwargs)
    if quantization is None:
        model.to(device)
    return LoadedModel(model=model, processor=processor, family=family, source=source)


def _four_bit_config(device: str, compute_dtype):
    if not device.startswith("cuda"):
        raise ConfigError(
            "QLoRA (`--method qlora`) needs a CUDA GPU for bitsandbytes 4-bit weights, and this "
            f"run is on {device}; use `--method lora` or `--method dora` here"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "QLoRA needs bitsandbytes: pip install 'domainvlm[qlora]'"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
