"""Open a base model with a saved PEFT adapter, and merge the two into a plain model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domainvlm.base_identity import check_base
from domainvlm.compat import peft_wrapping
from domainvlm.data.views import copy_views
from domainvlm.errors import ModelLoadError
from domainvlm.loading import LoadedModel, load_model
from domainvlm.outputs import check_folder, new_output


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(adapter: Path) -> str:
    """The base model an adapter was trained on, as PEFT recorded it."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"adapter {adapter} does not name its base model; pass --base")
    return base


def load_with_adapter(source: str | Path, *, base: str | Path | None = None,
                      dtype: str = "auto", device: str | None = None,
                      ignore_base_mismatch: bool = False) -> LoadedModel:
    """A model ready for inference: `source` is a model, or an adapter folder on its base.

    The base must be the model the adapter was trained on (BaseMismatchError otherwise,
    unless `ignore_base_mismatch`). The processor comes from the adapter folder when it has
    one (training saves it there). Load once and pass the result to `answer` to ask many
    questions.

    Example::

        from domainvlm import answer, load_with_adapter

        loaded = load_with_adapter("runs/chest/adapter")  # base: the one it was trained on
        for scan in ["a.png", "b.png"]:
            print(answer(loaded, scan, "Is there a nodule?"))
    """
    if not is_adapter_folder(source):
        return load_model(source, dtype=dtype, device=device)
    from peft import PeftModel
    from transformers import AutoProcessor

    adapter = Path(source)
    base = str(base or adapter_base(adapter))
    check_base(adapter, base, ignore_mismatch=ignore_base_mismatch)
    loaded = load_model(base, dtype=dtype, device=device)
    with peft_wrapping():
        loaded.model = PeftModel.from_pretrained(loaded.model, str(adapter))
    if (adapter / "processor_config.json").is_file():
        loaded.processor = AutoProcessor.from_pretrained(str(adapter))
    loaded.source = str(adapter)
    return loaded


def merge_adapter(adapter: str | Path, output: str | Path, *, base: str | Path | None = None,
                  overwrite: bool = False, ignore_base_mismatch: bool = False) -> Path:
    """Write base + adapter as one plain transformers model with all processor files (and the
    view its training images were rendered with, when the adapter recorded one); returns the
    folder, which loads like any model (`load_model`, `AutoModelForImageTextToText`).

    Example::

        from domainvlm import load_model, merge

        merged = merge("runs/chest/adapter", "runs/chest-merged")
        loaded = load_model(merged)
    """
    adapter, output = Path(adapter), Path(output)
    base = str(base) if base is not None else None
    if not is_adapter_folder(adapter):
        raise ModelLoadError(f"{adapter} is not an adapter folder (no adapter_config.json); "
                             "pass the `adapter` folder of a fine-tuning run")
    inputs = [adapter, base or adapter_base(adapter)]
    check_folder(output, "merge", inputs=inputs, overwrite=overwrite)
    loaded = load_with_adapter(str(adapter), base=base, dtype="float32", device="cpu",
                               ignore_base_mismatch=ignore_base_mismatch)
    merged: Any = loaded.model.merge_and_unload()
    with new_output(output, "merge", inputs=inputs, overwrite=overwrite) as partial:
        merged.save_pretrained(partial)
        loaded.processor.save_pretrained(partial)
        copy_views(adapter, partial)
    return output
