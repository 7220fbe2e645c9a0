"""Which samples go into which step, on which process: a pure function of (seed, epoch).

Every process computes the same global plan, so a resumed run replays exactly the batches the
interrupted one would have seen, and the loss can be normalised by the global count of answer
tokens without any communication.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

# Length grouping sorts within windows of this many global batches, so batches have little
# padding while the order across the epoch stays random.
GROUP_WINDOW = 50


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True) -> list[list[int]]:
    """Global batches (lists of sample indices) for one epoch; the last may be smaller."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * GROUP_WINDOW
        order = [i for start in range(0, len(order), window)
                 for i in sorted(order[start:start + window], key=lambda i: -lengths[i])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def repeated(repeats: Sequence[int]) -> list[int]:
    """Sample indices with each one `repeats[i]` times, copies side by side: the samples an
    epoch is planned over when some rows are to be seen more than once."""
    return [i for i, times in enumerate(repeats) for _ in range(times)]


def split_batch(batch: Sequence[int], n_chunks: int) -> list[list[int]]:
    """Split a global batch into `n_chunks` near-equal micro-batches.

    A batch smaller than `n_chunks` (an epoch's last) leaves the last chunks empty: every
    sample is still trained on, and the caller decides what an empty share does.
    """
    size, extra = divmod(len(batch), n_chunks)
    chunks, start = [], 0
    for k in range(n_chunks):
        end = start + size + (1 if k < extra else 0)
        chunks.append(list(batch[start:end]))
        start = end
    return chunks


def micro_batches(batch: Sequence[int], world_size: int, rank: int,
                  accumulation: int) -> list[list[int]]:
    """This process's `accumulation` micro-batches of a global batch (some may be empty)."""
    chunks = split_batch(batch, world_size * accumulation)
    return [chunks[k * world_size + rank] for k in range(accumulation)]
