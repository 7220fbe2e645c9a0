"""One synthetic CT patient: a Hounsfield-unit volume and the facts of what is in it.

Anatomy is defined in millimetres in DICOM patient coordinates (LPS: +x toward the patient's
LEFT, +y posterior, +z toward the head), so any grid shows the same patient. With the
orientation (1,0,0, 0,1,0) that the cohort writes, column index grows toward the patient's
left: the patient's right (liver) appears on the image's left, as radiologists view it.
Slice 0 is the most inferior. Lesions are spheres snapped to a voxel centre and drawn with
partial-volume (supersampled) edges so that even a small one shows on its centre slice.
Pure numpy; deterministic by seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

HU = {"air": -1000.0, "fat": -100.0, "soft_tissue": 40.0, "lung": -850.0, "liver": 60.0,
      "bone": 700.0}
LESION_HU = {"lung": 30.0, "liver": 160.0}  # solid nodule; hyperdense liver lesion (+100 HU)
SMALL_BELOW_MM, LARGE_ABOVE_MM = 10.0, 20.0  # small < 10 <= medium <= 20 < large
DIAMETER_RANGES_MM = {"small": (6.0, 9.0), "medium": (11.0, 19.0), "large": (22.0, 32.0)}
DEFAULT_SHAPE = (32, 64, 64)  # (slices, rows, columns)
FIELD_OF_VIEW_MM = (192.0, 320.0, 320.0)  # (z, y, x) extent the default spacing spreads over
NOISE_HU = 10.0
MAX_LESIONS = 3
_SIDE_MARGIN_MM = 5.0  # a lesion's nearest edge keeps this far from the midline: one side only
_EDGE_MARGIN_VOXELS = 2.0  # and this many voxels (4-8 mm) inside their organ, so that the
# tissue around them on every slice is the organ's


@dataclass(frozen=True)
class Lesion:
    """A spherical lesion. Voxel indices are (slice, row, column), like the volume array."""

    organ: str  # "lung" or "liver"
    side: str  # "left" or "right" of the PATIENT
    diameter_mm: float
    size_class: str  # "small" | "medium" | "large", see size_class()
    hu: float
    centre_mm: tuple[float, float, float]  # (x, y, z) patient coordinates
    centre_voxel: tuple[int, int, int]  # (slice, row, column)
    slice_range: tuple[int, int]  # first and last slice (inclusive) where the lesion covers
    # at least half as much of its centre voxel as on its centre slice: where it shows


@dataclass
class PatientTruth:
    """What a patient's volume contains; organs map to their (first, last) slice."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (slice, row, column) mm
    origin: tuple[float, float, float]  # (x, y, z) mm of voxel (0, 0, 0)
    lesions: list[Lesion] = field(default_factory=list)
    organs: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> PatientTruth:
        lesions = [Lesion(**{k: tuple(v) if isinstance(v, list) else v for k, v in item.items()})
                   for item in data["lesions"]]
        return cls(shape=tuple(data["shape"]), spacing=tuple(data["spacing"]),
                   origin=tuple(data["origin"]), lesions=lesions,
                   organs={k: tuple(v) for k, v in data["organs"].items()})


@dataclass(frozen=True)
class _Ellipsoid:
    centre: tuple[float, float, float]  # (x, y, z) mm
    radii: tuple[float, float, float]

    def inside(self, x, y, z, shrink: float = 0.0):
        """Boolean grid (or scalar): points inside the ellipsoid with radii reduced by shrink."""
        rx, ry, rz = (max(r - shrink, 1e-6) for r in self.radii)
        cx, cy, cz = self.centre
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0


def size_class(diameter_mm: float) -> str:
    """small below 10 mm, medium 10-20 mm (inclusive), large above 20 mm."""
    if diameter_mm < SMALL_BELOW_MM:
        return "small"
    return "medium" if diameter_mm <= LARGE_ABOVE_MM else "large"


def default_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """(slice, row, column) spacing in mm that spreads `shape` over the default field of view."""
    return tuple(round(fov / n, 4) for fov, n in zip(FIELD_OF_VIEW_MM, shape, strict=True))


def make_patient(seed: int | np.random.Generator,
                 shape: tuple[int, int, int] = DEFAULT_SHAPE,
                 spacing: tuple[float, float, float] | None = None,
                 n_lesions: int | None = None) -> tuple[np.ndarray, PatientTruth]:
    """Build one patient: HU volume float32 (slices, rows, columns) and its ground truth.

    `n_lesions` None draws 0-3 uniformly. Organ sizes and positions vary a little per patient.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be (slices, rows, columns), each >= 4; got {shape}")
    spacing = tuple(float(s) for s in (spacing or default_spacing(shape)))
    nz, ny, nx = shape
    dz, dy, dx = spacing
    z_extent = nz * dz
    table_z = float(rng.integers(-400, -200))  # scanners put the first slice anywhere
    origin = (-(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy, table_z)
    z, y, x = _grid(shape, spacing, origin)

    body_a = 150.0 * rng.uniform(0.92, 1.08)
    body_b = 110.0 * rng.uniform(0.92, 1.08)
    fat = 10.0
    z_mid = origin[2] + (nz - 1) / 2 * dz
    lung_dx = 0.42 * body_a
    lungs = {side: _Ellipsoid((sign * lung_dx + rng.uniform(-4, 4), -5.0 + rng.uniform(-4, 4),
                               z_mid + 0.18 * z_extent + rng.uniform(-4, 4)),
                              (0.30 * body_a * rng.uniform(0.9, 1.05),
                               0.62 * body_b * rng.uniform(0.9, 1.05),
                               0.38 * z_extent))
             for side, sign in (("right", -1.0), ("left", 1.0))}
    liver = _Ellipsoid((-0.37 * body_a + rng.uniform(-4, 4), -10.0 + rng.uniform(-4, 4),
                        z_mid - 0.25 * z_extent + rng.uniform(-4, 4)),
                       (0.47 * body_a * rng.uniform(0.92, 1.05), 0.6 * body_b,
                        0.32 * z_extent * rng.uniform(0.92, 1.05)))
    spine_y, spine_r = 0.68 * body_b, 16.0 * rng.uniform(0.9, 1.1)

    outer = (x / body_a) ** 2 + (y / body_b) ** 2 <= 1.0
    inner = (x / (body_a - fat)) ** 2 + (y / (body_b - fat)) ** 2 <= 1.0
    spine = x ** 2 + (y - spine_y) ** 2 <= spine_r ** 2
    liver_mask = liver.inside(x, y, z) & inner
    lung_masks = {side: e.inside(x, y, z) & inner for side, e in lungs.items()}
    shape_b = np.broadcast_shapes(outer.shape, z.shape)
    hu = np.full(shape_b, HU["air"], np.float32)
    hu[np.broadcast_to(outer, shape_b)] = HU["fat"]
    hu[np.broadcast_to(inner, shape_b)] = HU["soft_tissue"]
    hu[liver_mask] = HU["liver"]
    for mask in lung_masks.values():  # lungs over the liver: the dome of the diaphragm
        hu[mask] = HU["lung"]
    hu[np.broadcast_to(spine, shape_b)] = HU["bone"]

    organs = {"body": (0, nz - 1), "liver": _slice_range(liver_mask),
              "lung_right": _slice_range(lung_masks["right"]),
              "lung_left": _slice_range(lung_masks["left"]), "spine": (0, nz - 1)}
    count = int(rng.integers(0, MAX_LESIONS + 1)) if n_lesions is None else int(n_lesions)
    lesions: list[Lesion] = []
    for _ in range(count):
        lesion = _place_lesion(rng, lesions, lungs, liver, shape, spacing, origin)
        fraction = lesion_fraction(lesion, shape, spacing, origin)
        hu += fraction * (np.float32(lesion.hu) - hu)
        per_slice = fraction.reshape(nz, -1).max(axis=1)
        visible = np.flatnonzero(per_slice >= per_slice.max() / 2)
        lesions.append(_replace_range(lesion, (int(visible[0]), int(visible[-1]))))
    hu += rng.normal(0.0, NOISE_HU, hu.shape).astype(np.float32)
    np.rint(hu, out=hu)  # scanners store whole HU; the written series is then exact
    np.clip(hu, -1024.0, 3071.0, out=hu)
    truth = PatientTruth(shape=shape, spacing=spacing, origin=origin, lesions=lesions,
                         organs={k: v for k, v in organs.items() if v is not None})
    return hu, truth


def _grid(shape, spacing, origin):
    """Broadcastable patient coordinates (z (n,1,1), y (1,n,1), x (1,1,n)) of voxel centres."""
    nz, ny, nx = shape
    dz, dy, dx = spacing
    z = (origin[2] + np.arange(nz) * dz).reshape(nz, 1, 1)
    y = (origin[1] + np.arange(ny) * dy).reshape(1, ny, 1)
    x = (origin[0] + np.arange(nx) * dx).reshape(1, 1, nx)
    return z, y, x


def _slice_range(mask: np.ndarray) -> tuple[int, int] | None:
    slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    return (int(slices[0]), int(slices[-1])) if len(slices) else None


def _place_lesion(rng, placed, lungs, liver, shape, spacing, origin) -> Lesion:
    """Draw organ, size and a centre fully inside that organ, apart from earlier lesions.

    A draw that does not fit (coarse grids, crowded organs) is redrawn a few times.
    """
    for _ in range(10):
        organ = str(rng.choice(["lung", "liver"]))
        size = str(rng.choice(list(DIAMETER_RANGES_MM)))
        diameter = round(float(rng.uniform(*DIAMETER_RANGES_MM[size])), 1)
        side = str(rng.choice(["left", "right"])) if organ == "lung" else "right"
        container = lungs[side] if organ == "lung" else liver
        centre = _find_centre(rng, diameter / 2, side, container,
                              list(lungs.values()) if organ == "liver" else [], placed,
                              shape, spacing, origin)
        if centre is not None:
            (k, j, i), (cx, cy, cz) = centre
            return Lesion(organ=organ, side=side, diameter_mm=diameter,
                          size_class=size_class(diameter), hu=LESION_HU[organ],
                          centre_mm=(round(cx, 3), round(cy, 3), round(cz, 3)),
                          centre_voxel=(k, j, i), slice_range=(k, k))
    raise ValueError(f"cannot fit a {diameter} mm {organ} lesion in a volume of shape {shape} "
                     f"with spacing {spacing} mm; use more slices or a larger spacing")


def _find_centre(rng, radius, side, container, avoid, placed, shape, spacing, origin):
    """A voxel centre ((k, j, i), (x, y, z) mm) where the sphere fits, or None."""
    nz, ny, nx = shape
    dz, dy, dx = spacing
    margin = max(4.0, min(_EDGE_MARGIN_VOXELS * max(dy, dx), 8.0))
    z_low = origin[2] - dz / 2 + radius
    z_high = origin[2] + (nz - 0.5) * dz - radius
    for _ in range(2000):
        point = [c + rng.uniform(-r, r) for c, r in zip(container.centre, container.radii,
                                                        strict=True)]
        k = int(round((point[2] - origin[2]) / dz))
        j = int(round((point[1] - origin[1]) / dy))
        i = int(round((point[0] - origin[0]) / dx))
        if not (0 <= k < nz and 0 <= j < ny and 0 <= i < nx):
            continue
        cx, cy, cz = origin[0] + i * dx, origin[1] + j * dy, origin[2] + k * dz
        if not (z_low <= cz <= z_high) or abs(cx) < radius + _SIDE_MARGIN_MM:
            continue
        if (cx > 0) != (side == "left"):
            continue
        if not container.inside(cx, cy, cz, shrink=radius + margin):
            continue
        if any(other.inside(cx, cy, cz, shrink=-(radius + margin)) for other in avoid):
            continue
        if any(np.linalg.norm(np.subtract((cx, cy, cz), other.centre_mm))
               < radius + other.diameter_mm / 2 + 5.0 for other in placed):
            continue
        return (k, j, i), (cx, cy, cz)
    return None


def lesion_fraction(lesion: Lesion, shape, spacing, origin, sub: int = 4) -> np.ndarray:
    """Fraction (0-1) of each voxel inside the lesion, float32 (slices, rows, columns).

    Supersampled `sub` times per axis: the partial volume a scanner would record.
    """
    fraction = np.zeros(shape, np.float32)
    radius = lesion.diameter_mm / 2
    lo_hi = []
    for n, d, o, c in zip(shape, spacing, origin[::-1], lesion.centre_mm[::-1], strict=True):
        lo = max(int(np.floor((c - radius - o) / d)) - 1, 0)
        hi = min(int(np.ceil((c + radius - o) / d)) + 2, n)
        lo_hi.append((lo, hi))
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    axes = []
    for (lo, hi), d, o, c in zip(lo_hi, spacing, origin[::-1], lesion.centre_mm[::-1],
                                 strict=True):
        centres = o + np.arange(lo, hi) * d
        axes.append(((centres[:, None] + offsets[None, :] * d) - c).reshape(-1))
    zz, yy, xx = np.meshgrid(*axes, indexing="ij", sparse=True)
    inside = (zz ** 2 + yy ** 2 + xx ** 2 <= radius ** 2).astype(np.float32)
    (z0, z1), (y0, y1), (x0, x1) = lo_hi
    inside = inside.reshape(z1 - z0, sub, y1 - y0, sub, x1 - x0, sub).mean(axis=(1, 3, 5))
    fraction[z0:z1, y0:y1, x0:x1] = inside
    return fraction


def _replace_range(lesion: Lesion, slice_range: tuple[int, int]) -> Lesion:
    data = asdict(lesion)
    data["slice_range"] = slice_range
    return Lesion(**data)
