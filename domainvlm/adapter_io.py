"""Open a base model with a saved PEFT adapter, and merge the two into a plain model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from domainvlm.base_identity import check_base
from domainvlm.errors import ModelLoadError, OutputExistsError
from domainvlm.loading import LoadedModel, load_model
from domainvlm.train.checkpoint import publish, temp_dir_for


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(adapter: Path) -> str:
    """The base model an adapter was trained on, as PEFT recorded it."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"adapter {adapter} does not name its base model; pass --base")
    return base


def load_with_adapter(source: str, *, base: str | None = None, dtype: str = "auto",
                      device: str | None = None,
                      ignore_base_mismatch: bool = False) -> LoadedModel:
    """A model ready for inference: `source` is a model, or an adapter folder on its base.

    The base must be the model the adapter was trained on (BaseMismatchError otherwise,
    unless `ignore_base_mismatch`). The processor comes from the adapter folder when it has
    one (training saves it there).
    """
    if not is_adapter_folder(source):
        return load_model(source, dtype=dtype, device=device)
    from peft import PeftModel
    from transformers import AutoProcessor

    adapter = Path(source)
    base = base or adapter_base(adapter)
    check_base(adapter, base, ignore_mismatch=ignore_base_mismatch)
    loaded = load_model(base, dtype=dtype, device=device)
    loaded.model = PeftModel.from_pretrained(loaded.model, str(adapter))
    if (adapter / "processor_config.json").is_file():
        loaded.processor = AutoProcessor.from_pretrained(str(adapter))
    loaded.source = str(adapter)
    return loaded


def merge_adapter(adapter: str | Path, output: str | Path, *, base: str | None = None,
                  overwrite: bool = False, ignore_base_mismatch: bool = False) -> Path:
    """Write base + adapter as one plain transformers model with all processor files."""
    adapter, output = Path(adapter), Path(output)
    if not is_adapter_folder(adapter):
        raise ModelLoadError(f"{adapter} is not an adapter folder (no adapter_config.json); "
                             "pass the `adapter` folder of a fine-tuning run")
    if output.is_file():
        raise OutputExistsError(f"output {output} is a file; choose a folder for --output")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {output} is not empty; pass --overwrite to "
                                "replace it or choose another --output")
    loaded = load_with_adapter(str(adapter), base=base, dtype="float32", device="cpu",
                               ignore_base_mismatch=ignore_base_mismatch)
    merged: Any = loaded.model.merge_and_unload()
    temp = temp_dir_for(output)
    shutil.rmtree(temp, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(temp)
    loaded.processor.save_pretrained(temp)
    publish(temp, output)
    return output
