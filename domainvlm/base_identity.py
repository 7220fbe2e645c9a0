"""Which base model an adapter belongs to: recorded at training time, checked at load time.

A LoRA adapter only means something on the weights it was trained on. PEFT loads it onto any
model whose layer names happen to match (silently, when the weights differ) and fails deep
inside otherwise, so training writes `base_model.json` beside the adapter and every load
compares it with the base it is given.

The weights fingerprint is read from the checkpoint files on disk, lazily, with
`safetensors.safe_open`: every tensor's name, shape and stored dtype plus a few rows of its
values. It costs a few megabytes of reads even for a 7B model, ignores how the files are
sharded, and does not change with the dtype or 4-bit quantisation a model is loaded with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from domainvlm.errors import BaseMismatchError

RECORD = "base_model.json"
_SAMPLE = 1024  # values per sampled row: three rows per tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseIdentity:
    source: str  # hub id or folder, as given to training
    model_type: str
    architectures: tuple[str, ...]
    weights: str | None  # sha256 of the checkpoint files' tensors; None: none found

    def describe(self) -> str:
        digest = f"weights {self.weights[:12]}" if self.weights else "weights not fingerprinted"
        return f"{self.source} ({self.model_type}, {digest})"


def identify(source: str) -> BaseIdentity:
    """The identity of the model at `source` (a folder, or a hub id in the local cache)."""
    from domainvlm.loading import load_config

    resolved, config = load_config(source)
    folder = model_folder(resolved)
    return BaseIdentity(source=resolved, model_type=config.model_type,
                        architectures=tuple(getattr(config, "architectures", None) or ()),
                        weights=weights_fingerprint(folder) if folder else None)


def weights_fingerprint(folder: Path) -> str | None:
    """sha256 over every tensor's name, shape, stored dtype and three sampled rows, read
    lazily from the `*.safetensors` files; for pickled `*.bin` checkpoints, names, sizes and
    the bytes at both ends of each file. None where the folder holds neither."""
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return _pickled_fingerprint(sorted(Path(folder).glob("*.bin")))
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(path), framework="pt")) for path in files]
        where = {name: handle for handle in handles
                 for name in handle.keys()}  # noqa: SIM118 (a safe_open handle is no dict)
        for name in sorted(where):  # by tensor, not by file: sharding does not count
            part = where[name].get_slice(name)
            shape, dtype = part.get_shape(), part.get_dtype()
            digest.update(f"{name}|{shape}|{dtype}|".encode())
            for values in _sampled(where[name], part, name, shape):
                digest.update(values.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _sampled(handle, part, name: str, shape: list[int]):
    """The whole of a small tensor; else its first, middle and last row (first values)."""
    count = 1
    for size in shape:
        count *= size
    if count <= 3 * _SAMPLE:
        return [handle.get_tensor(name)]
    rows = sorted({0, shape[0] // 2, shape[0] - 1})
    if len(shape) == 1:
        return [part[start:start + _SAMPLE] for start in
                sorted({0, shape[0] // 2, shape[0] - _SAMPLE})]
    inner = (slice(0, 1),) * (len(shape) - 2) + (slice(0, min(shape[-1], _SAMPLE)),)
    return [part[(slice(row, row + 1), *inner)] for row in rows]


def _pickled_fingerprint(files: list[Path]) -> str | None:
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}|{size}|".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(65536))
            handle.seek(max(size - 65536, 0))
            digest.update(handle.read(65536))
    return digest.hexdigest()


def model_folder(resolved: str) -> Path | None:
    """A local folder as it is; a hub id as its snapshot in the local cache (None if absent)."""
    path = Path(resolved)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved, local_files_only=True))
    except Exception:  # not cached: loading it will say so
        return None


def write_record(folder: Path, identity: BaseIdentity) -> None:
    """Write `base_model.json` into an adapter folder being built (the folder is published
    atomically as a whole by its writer)."""
    (Path(folder) / RECORD).write_text(json.dumps(asdict(identity), indent=2) + "\n",
                                       encoding="utf-8")


def read_record(adapter: Path) -> BaseIdentity | None:
    path = Path(adapter) / RECORD
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return BaseIdentity(source=data["source"], model_type=data["model_type"],
                        architectures=tuple(data.get("architectures") or ()),
                        weights=data.get("weights"))


def mismatch(recorded: BaseIdentity, actual: BaseIdentity) -> str | None:
    """How `actual` differs from the base an adapter recorded, in words; None if it is that
    base (or the difference cannot be told: a fingerprint is missing)."""
    if recorded.model_type != actual.model_type or (
            recorded.architectures and actual.architectures
            and recorded.architectures != actual.architectures):
        return "another architecture"
    if recorded.weights and actual.weights and recorded.weights != actual.weights:
        return "the same architecture with other weights"
    return None


def check_base(adapter: Path, base: str, *, ignore_mismatch: bool = False) -> None:
    """Refuse to open `adapter` on `base` unless it is the model the adapter was trained on
    (same architecture, same weights); with `ignore_mismatch`, warn and go on. Adapters
    written before the record existed load with a warning."""
    recorded = read_record(adapter)
    if recorded is None:
        log.warning("warning: adapter %s records no fingerprint of its base (it predates the "
                    "check), so it cannot be checked that %s is the model it was trained on",
                    adapter, base)
        return
    actual = identify(base)
    what = mismatch(recorded, actual)
    if what is None:
        return
    message = (f"adapter {adapter} was trained on {recorded.describe()}, but the base given "
               f"is {actual.describe()}: {what}")
    if ignore_mismatch:
        log.warning("warning: %s; loading it anyway (--ignore-base-mismatch)", message)
        return
    raise BaseMismatchError(f"{message}. Pass the base it was trained on (--base "
                            f"{recorded.source}), or --ignore-base-mismatch if you know the "
                            "adapter fits this base")
