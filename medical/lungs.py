"""The lungs of a CT volume, found from its HU values alone, and the volume seen through them.

A slab MIP shows a solid nodule only if nothing in its slab is denser at the same place, and at
the lung bases the chest wall or the dome of the liver is. Shown through the lungs alone (every
other voxel set to air before projecting), a nodule stands out against lung whatever its slab
holds. The mask needs no model: the body is what is denser than `BODY_HU` with its holes
filled, the lungs are the air inside it, and their holes (nodules, vessels) are filled again.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from domainvlm.medical.series import Volume
from domainvlm.medical.views import BODY_HU

AIR_HU = -1000.0
LUNG_HU = -400.0  # inside the body and below this: air in the lungs, partial volume included


def lung_mask(values: np.ndarray) -> np.ndarray:
    """bool (slices, rows, columns): the lungs with what they enclose, slice by slice."""
    body = fill_holes(values > BODY_HU)
    return fill_holes(body & (values < LUNG_HU))


def lungs_only(volume: Volume) -> Volume:
    """`volume` with every voxel outside its lungs set to air."""
    values = np.where(lung_mask(volume.values), volume.values, np.float32(AIR_HU))
    return replace(volume, values=values.astype(volume.values.dtype))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` (slices, rows, columns) plus, in each slice, the background that does not reach
    the slice's border (4-connected): grown from the border one pixel a pass."""
    background = ~mask
    reached = np.zeros_like(mask)
    for side in (0, -1):
        reached[:, side, :] = background[:, side, :]
        reached[:, :, side] = background[:, :, side]
    while True:
        grown = reached.copy()
        grown[:, 1:, :] |= reached[:, :-1, :]
        grown[:, :-1, :] |= reached[:, 1:, :]
        grown[:, :, 1:] |= reached[:, :, :-1]
        grown[:, :, :-1] |= reached[:, :, 1:]
        grown &= background
        if np.array_equal(grown, reached):
            return ~reached
        reached = grown
