"""Split by patient: no patient's scans in two splits, so test scores measure new patients."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from domainvlm.errors import ConfigError

DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def split_patients(patients: Iterable[str], fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                   seed: int = 0) -> dict[str, str]:
    """Patient id -> split name, deterministic by seed and independent of input order.

    Patients are ordered by a seeded hash and cut by the fractions (largest remainder), so a
    split with a positive fraction gets at least one patient whenever there are enough.
    """
    if not fractions or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ConfigError(f"split fractions must be non-negative and not all 0, got {fractions}")
    unique = sorted(set(patients), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).digest())
    total = sum(fractions.values())
    counts = _counts(len(unique), [f / total for f in fractions.values()])
    assignment, start = {}, 0
    for name, count in zip(fractions, counts, strict=True):
        for patient in unique[start:start + count]:
            assignment[patient] = name
        start += count
    return assignment


def _counts(n: int, shares: list[float]) -> list[int]:
    counts = [int(n * s) for s in shares]
    # Non-empty splits first, then the largest remainders, until every patient is placed.
    for i in sorted(range(len(shares)), key=lambda i: (counts[i] > 0 or shares[i] == 0,
                                                       -(n * shares[i] - counts[i]))):
        if sum(counts) >= n:
            break
        counts[i] += 1
    return counts
