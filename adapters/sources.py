"""What the store reads from a source before it keeps an adapter: the adapter folder inside it,
the base it was trained on, the data it was trained on, its evaluation metrics, and whether
PEFT can answer it in one batch with other adapters."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from domainvlm.adapters.errors import AdapterError
from domainvlm.base_identity import RECORD, read_record
from domainvlm.train.run_dir import RUN_FILE, read_run

ADAPTER_CONFIG = "adapter_config.json"
CARD = "card.json"  # the store's own file in a stored adapter folder
WEIGHTS = "adapter_model.safetensors"
LORA_PARTS = frozenset({"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"})


def open_source(source: Path) -> tuple[Path, dict[str, Any] | None]:
    """The adapter folder of `source` (a finetune run folder, or an adapter folder) and the
    run record it came from (None when there is none)."""
    if (source / ADAPTER_CONFIG).is_file():
        in_run = source.name in ("adapter", "best") and (source.parent / RUN_FILE).is_file()
        return source, read_run(source.parent) if in_run else None
    if (source / RUN_FILE).is_file():
        run = read_run(source) or {}
        if (run.get("config") or {}).get("method") == "full":
            raise AdapterError(f"{source} is a full fine-tune: it wrote a whole model, not an "
                               "adapter; the store keeps LoRA/DoRA/QLoRA adapters")
        if not (source / "adapter" / ADAPTER_CONFIG).is_file():
            raise AdapterError(f"run folder {source} holds no adapter yet (status: "
                               f"{run.get('status', 'unknown')}); add it once the run finishes")
        return source / "adapter", run
    what = "does not exist" if not source.exists() else "is neither"
    raise AdapterError(f"{source} {what} a finetune run folder (run.json and adapter/) nor an "
                       "adapter folder (adapter_config.json)")


def adapter_files(folder: Path) -> list[Path]:
    """Every file of an adapter folder (relative paths, sorted), without a store card."""
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    return [p for p in files if p.as_posix() != CARD]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_of(folder: Path) -> dict[str, Any]:
    """The recorded base identity (base_model.json), which every load is checked against."""
    identity = read_record(folder)
    if identity is None:
        raise AdapterError(
            f"adapter {folder} does not record the base model it was trained on ({RECORD}), so "
            "the store could not refuse it on another base; train it with `domainvlm finetune`, "
            "which records it, or record it with domainvlm.base_identity.write_record(folder, "
            "identify(BASE)) where BASE is the model it was trained on")
    return {**asdict(identity), "architectures": list(identity.architectures)}


def data_of(run: dict[str, Any] | None) -> dict[str, Any] | None:
    """The training data's fingerprint: sha256 of the data file's bytes and its record count.
    None without a run record; a fingerprint of None (with a note) where the file is gone or
    is not one file."""
    recorded = ((run or {}).get("config") or {}).get("data")
    if recorded is None:
        return None
    path = Path(recorded)
    if not path.is_file():
        note = ("a folder or hub data set: not fingerprinted" if path.is_dir() or not path.suffix
                else "not found when the adapter was added")
        return {"fingerprint": None, "path": recorded, "records": None, "note": note}
    return {"fingerprint": sha256_file(path), "path": recorded, "records": _records(path)}


def _records(path: Path) -> int | None:
    """Records in a .jsonl (non-blank lines) or LLaVA-style .json (list entries) file."""
    if path.suffix == ".jsonl":
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None
        return len(rows) if isinstance(rows, list) else None
    return None


def metrics_of(path: Path | str | None, adapter: Path) -> dict[str, Any] | None:
    """The metrics of `domainvlm eval` on `adapter`: OUTPUT/metrics.json, given the folder or
    the file. Metrics of another adapter (other weights) are refused: a card must not claim
    scores its adapter never got."""
    if path is None:
        return None
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise AdapterError(f"{path}: no metrics.json there; give the output folder of "
                           "`domainvlm eval` or its metrics.json")
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{file}: not JSON ({exc.__class__.__name__})") from None
    if not isinstance(metrics, dict):
        raise AdapterError(f"{file}: not a metrics object (a JSON object)")
    evaluated = Path(str(metrics.get("model", ""))) / WEIGHTS
    if evaluated.is_file() and (adapter / WEIGHTS).is_file() and \
            sha256_file(evaluated) != sha256_file(adapter / WEIGHTS):
        raise AdapterError(f"{file}: these metrics are of {evaluated.parent}, whose weights "
                           f"differ from those of {adapter}; evaluate this adapter "
                           "(`domainvlm eval`) and give that output")
    return metrics


def mixing_blocker(folder: Path, config: dict[str, Any]) -> str | None:
    """Why PEFT cannot answer this adapter in one batch with others (`adapter_names`), or None.

    PEFT batches plain LoRA weights only: it refuses DoRA ("Cannot pass adapter_names when
    DoRA is enabled") and fully trained parts it cannot split by row, and a fully trained part
    (modules_to_save) loaded beside adapters that lack it fails their mixed batches too
    (FACTS.md "One base, several LoRA adapters"). So: LoRA, no DoRA, no modules_to_save or
    trainable tokens, and every saved tensor a LoRA A/B weight."""
    if config.get("peft_type") != "LORA":
        return f"a {config.get('peft_type')} adapter (only LoRA adapters share a batch)"
    if config.get("use_dora"):
        return "a DoRA adapter (PEFT cannot batch DoRA with other adapters)"
    if config.get("modules_to_save"):
        return f"it trains {', '.join(config['modules_to_save'])} in full (modules_to_save)"
    if config.get("trainable_token_indices"):
        return "it trains token embeddings (trainable_token_indices)"
    for name in tensor_names(folder):
        if not LORA_PARTS & set(name.split(".")):
            return f"it saves {name}, which is not a LoRA weight"
    return None


def tensor_names(folder: Path) -> list[str]:
    """Names of the tensors saved in an adapter folder (read lazily from safetensors)."""
    safetensors, pickled = folder / WEIGHTS, folder / "adapter_model.bin"
    if safetensors.is_file():
        from safetensors import safe_open

        with safe_open(str(safetensors), framework="pt") as handle:
            return list(handle.keys())  # noqa: SIM118 (a safe_open handle is no dict)
    if pickled.is_file():
        import torch

        return list(torch.load(pickled, map_location="cpu", weights_only=True))
    raise AdapterError(f"adapter {folder} holds no weights (adapter_model.safetensors)")
