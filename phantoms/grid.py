"""The voxel grid of one case: shape, spacing, field of view, orientation, obliquity and origin.

Anatomy is drawn on an axis-aligned *canvas* whose voxel axes (i, j, k) run along the body
frame's (X = left, Y = posterior, Z = superior); the patient is axis-aligned in world, which is
LPS mm (SimpleITK's frame): ``world = shift + body``. The output grid is the canvas with some axes
reversed (RAS voxel order reverses i and j) or, when oblique, a grid rotated in world onto which
the canvas is resampled (nearest neighbour), so the anatomy stays where it is in world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import affine_transform

from challenge.nifti import Geometry

from .canvas import rotation

REFERENCE_HALF_WIDTH_MM = 165.0  # the reference adult the layout in anatomy.py is drawn for
FOV_MM = (330.0, 450.0)  # in-plane field of view drawn when no spacing is given
Z_EXTENT_MM = (150.0, 300.0)  # z extent drawn when no slice spacing is given
DEFAULT_INPLANE = 512
DEFAULT_SLICES = (60, 120)
ORIENTATIONS = ("LPS", "RAS")
_FLIPS = {"LPS": (1, 1, 1), "RAS": (-1, -1, 1)}


@dataclass(frozen=True)
class Habitus:
    """Body size: ``scale`` multiplies every reference-layout length; the rest are mm."""

    scale: float
    half_width: float
    half_ant: float
    half_post: float
    fat: float
    muscle: float


@dataclass(frozen=True)
class CaseGrid:
    """One case's grids. ``x, y, z``: body-frame mm of the axis-aligned *canvas* voxel centres
    (where anatomy is drawn). The output grid has ``size`` (i, j, k) voxels of ``spacing`` mm;
    its voxel v sits at body point ``origin_body + rot @ diag(flips) @ diag(spacing) @ v`` and at
    world (LPS) point ``shift + body``: the patient is axis-aligned in world, an oblique grid is not.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    size: tuple[int, int, int]  # output (i, j, k)
    spacing: tuple[float, float, float]  # (i, j, k) mm, canvas and output alike
    orientation: str
    rot: np.ndarray  # 3x3 rotation of the output grid in world (identity: not oblique)
    shift: np.ndarray  # (3,) world - body translation, mm
    origin_body: np.ndarray  # (3,) body-frame mm of output voxel (0, 0, 0)
    habitus: Habitus
    top: float  # body-frame Z (mm) above every output voxel, the same whatever the obliquity

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output array shape (k, j, i)."""
        return self.size[::-1]

    @property
    def oblique(self) -> bool:
        return not np.allclose(self.rot, np.eye(3))

    def geometry(self) -> Geometry:
        """The output grid (size/spacing/origin in (i, j, k), LPS direction, row-major)."""
        origin = self.shift + self.origin_body
        direction = self.rot @ np.diag(np.array(_FLIPS[self.orientation], float))
        (ni, nj, nk), (si, sj, sk), (oi, oj, ok) = self.size, self.spacing, origin
        return Geometry((int(ni), int(nj), int(nk)), (float(si), float(sj), float(sk)),
                        (float(oi), float(oj), float(ok)), tuple(float(d) for d in direction.ravel()))

    def to_output(self, array: np.ndarray) -> np.ndarray:
        """Canvas (k, j, i) array -> output (k, j, i) array: axes reversed as the orientation says,
        or, for an oblique grid, nearest-neighbour resampled (outside the canvas: 0)."""
        if not self.oblique:
            fi, fj, fk = _FLIPS[self.orientation]
            return np.ascontiguousarray(array[::fk, ::fj, ::fi])
        step = np.asarray(self.spacing)
        # Canvas index u = A v + u0 for output index v, both (i, j, k); affine_transform wants (k, j, i).
        a = np.diag(1 / step) @ self.rot @ np.diag(_FLIPS[self.orientation]) @ np.diag(step)
        u0 = (self.origin_body - np.array([self.x[0], self.y[0], self.z[0]])) / step
        return affine_transform(array, a[::-1, ::-1], offset=u0[::-1], output_shape=self.shape, order=0,
                                mode="constant", cval=0)


def make_grid(rng: np.random.Generator, shape: tuple[int, int, int] | None,
              spacing: tuple[float, float, float] | None, slice_mm: tuple[float, float] | None,
              orientation: str, oblique_deg: float) -> CaseGrid:
    """Draw one case's grid. ``shape``/``spacing`` are (i, j, k); None draws realistic values."""
    nx, ny, nz = shape if shape else (DEFAULT_INPLANE, DEFAULT_INPLANE, None)
    if spacing:
        sx, sy, sz = spacing
        if nz is None:
            nz = int(rng.integers(DEFAULT_SLICES[0], DEFAULT_SLICES[1] + 1))
    else:
        sx = sy = float(rng.uniform(*FOV_MM)) / max(nx, ny)
        extent = float(rng.uniform(*Z_EXTENT_MM))
        if slice_mm:
            sz = float(rng.uniform(*slice_mm))
            nz = nz or int(np.clip(round(extent / sz), 20, 200))
        elif nz is None:
            nz = int(rng.integers(DEFAULT_SLICES[0], DEFAULT_SLICES[1] + 1))
            sz = float(np.clip(extent / nz, 1.5, 5.0))
        else:
            sz = extent / nz
    size, step = np.array([nx, ny, nz]), np.array([sx, sy, sz], float)
    fov = size * step
    habitus = _habitus(rng, fov)
    s = habitus.scale
    # Centre of the FOV in the body frame: body centred in-plane (+-3 %), z window over the abdomen
    # (kidney bottom -85 to dome +100 reference mm), cutting the anatomy when the window is short.
    centre_y = (habitus.half_post - habitus.half_ant) / 2
    slack = (fov[2] - 185.0 * s) / 2
    centre = np.array([rng.uniform(-0.03, 0.03) * fov[0], centre_y + rng.uniform(-0.03, 0.03) * fov[1],
                       7.5 * s + rng.uniform(-1, 1) * abs(slack) * 0.8 + rng.normal(0, 5 * s)])
    if orientation == "random":
        orientation = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    signs = rng.choice([-1.0, 1.0], size=2)
    rot = rotation(rz=signs[0] * oblique_deg, rx=signs[1] * oblique_deg / 2)
    shift = np.array([rng.uniform(-15, 15), rng.uniform(-40, 40), rng.uniform(-800, 200)])

    columns = rot @ np.diag(_FLIPS[orientation]) @ np.diag(step)  # body mm per output index step
    origin_body = centre - columns @ ((size - 1) / 2)
    corners = np.array([origin_body + columns @ ((size - 1) * np.array(c)) for c in np.ndindex(2, 2, 2)])
    low, high = corners.min(axis=0) - step, corners.max(axis=0) + step
    if oblique_deg == 0:  # the canvas is the output grid itself
        low, high = centre - step * (size - 1) / 2, centre + step * (size - 1) / 2
    x, y, z = (lo + np.arange(int(round((hi - lo) / d)) + 1) * d for lo, hi, d in zip(low, high, step, strict=True))
    top = float(centre[2] + np.linalg.norm(fov) / 2)
    return CaseGrid(x, y, z, (int(size[0]), int(size[1]), int(size[2])), (float(sx), float(sy), float(sz)),
                    orientation, rot, shift, origin_body, habitus, top)


def _habitus(rng: np.random.Generator, fov: np.ndarray) -> Habitus:
    """Body size filling 80-92 % of the in-plane FOV; anatomy scales with it."""
    fill = rng.uniform(0.80, 0.92)
    ap_ratio = rng.uniform(0.62, 0.75)  # AP diameter / lateral diameter
    ant_share = rng.uniform(0.52, 0.58)  # the body centre (and spine) sits behind the middle
    half_width = min(fill * fov[0] / 2, fill * fov[1] / 2 / ap_ratio)
    s = half_width / REFERENCE_HALF_WIDTH_MM
    ap = 2 * half_width * ap_ratio
    return Habitus(scale=float(s), half_width=float(half_width), half_ant=float(ap * ant_share),
                   half_post=float(ap * (1 - ant_share)), fat=float(rng.uniform(8, 35) * s),
                   muscle=float(rng.uniform(8, 14) * s))
