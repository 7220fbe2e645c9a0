"""A store stocked with real adapters of every kind on the tiny LLaVA, for the runtime and
batcher tests: three mixable LoRA adapters, a DoRA one and a LoRA + fully trained projector
one (neither mixable). One name holds '.', which PEFT's module names cannot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from factory import make_adapter

KINDS = {"chest.ct": "lora", "brain": "lora", "hand": "lora", "dora": "dora", "proj": "projector"}


@dataclass
class Stocked:
    base: Path
    store: object  # domainvlm.adapters.store.AdapterStore
    sources: dict[str, Path]  # name -> the adapter folder it was added from
    refs: dict[str, str]  # name -> name@version


def stock(root: Path, base: Path) -> Stocked:
    from domainvlm.adapters.store import AdapterStore

    store = AdapterStore(root / "store")
    sources, refs = {}, {}
    for seed, (name, kind) in enumerate(KINDS.items(), start=1):
        sources[name] = make_adapter(base, root / "made" / name, kind=kind, seed=seed)
        refs[name] = store.add(sources[name], name).ref
    return Stocked(base, store, sources, refs)


def images(count: int, seed: int = 0) -> list:
    """`count` different 64x64 noise images (the tiny LLaVA's size)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            for _ in range(count)]
