"""The canonical drawing grid and the shape rasterisers (deformed ellipsoids, swept tubes).

The canvas is an axis-aligned grid in the *body frame*: X = patient left, Y = posterior,
Z = superior (LPS axes), in mm, with the body centred at X = Y = 0. Voxel (i, j, k) has body
coordinates (x[i], y[j], z[k]); arrays are (k, j, i). Shapes are computed inside their own
bounding boxes only, never over the whole volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import make_interp_spline

Box = tuple[slice, slice, slice]  # (k, j, i) slices


@dataclass
class Canvas:
    """Body-frame coordinates of the voxel centres and the maps being painted (all (k, j, i))."""

    x: np.ndarray  # (nx,) mm
    y: np.ndarray  # (ny,) mm
    z: np.ndarray  # (nz,) mm
    labels: np.ndarray  # uint8 organ ids
    tissue: np.ndarray  # uint8 tissue ids (phantoms.domains)
    cavity: np.ndarray  # bool: the abdominal cavity (inside the muscle wall, below the diaphragm)
    trunk: np.ndarray  # bool: the cavity plus the thorax above the diaphragm (for the tubes)

    @classmethod
    def empty(cls, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> Canvas:
        shape = (len(z), len(y), len(x))
        return cls(x, y, z, np.zeros(shape, np.uint8), np.zeros(shape, np.uint8), np.zeros(shape, bool),
                   np.zeros(shape, bool))

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
        """Voxel slices covering the body-frame box [lo, hi] (X, Y, Z mm); None if it misses the grid."""
        out = []
        for axis, a, b in zip((self.z, self.y, self.x), lo[::-1], hi[::-1], strict=True):
            step = axis[1] - axis[0] if len(axis) > 1 else 1.0
            first = max(int(np.ceil((a - axis[0]) / step)), 0)
            last = min(int(np.floor((b - axis[0]) / step)) + 1, len(axis))
            if last <= first:
                return None
            out.append(slice(first, last))
        return out[0], out[1], out[2]

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (X, Y, Z) mm arrays of a box: shapes (1,1,ni), (1,nj,1), (nk,1,1)."""
        return (self.x[box[2]][None, None, :].astype(np.float32),
                self.y[box[1]][None, :, None].astype(np.float32),
                self.z[box[0]][:, None, None].astype(np.float32))

    def paint(self, box: Box | None, mask: np.ndarray | None, label: int, tissue: int, thorax: bool = False) -> int:
        """Set label and tissue where ``mask`` (box-shaped) and the cavity (or, with ``thorax``, the
        trunk) hold; returns the number of voxels painted."""
        if box is None or mask is None:
            return 0
        mask = mask & (self.trunk if thorax else self.cavity)[box]
        self.labels[box][mask] = label
        self.tissue[box][mask] = tissue
        return int(mask.sum())


def rotation(rz: float = 0.0, ry: float = 0.0, rx: float = 0.0) -> np.ndarray:
    """3x3 rotation (degrees) applied as Rz @ Ry @ Rx; columns are the local axes in the body frame."""
    a, b, c = np.radians([rz, ry, rx])
    z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    x = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return z @ y @ x


@dataclass(frozen=True)
class Ellipsoid:
    """A deformed ellipsoid: centre and semi-axes in mm, rotation (local axes as columns) and
    ``deform``: 6 coefficients of (u, v, w, uv, vw, uw) that bend the unit surface (|c| ~ 0.1)."""

    center: np.ndarray
    semi: np.ndarray
    rot: np.ndarray
    deform: np.ndarray

    def rasterise(self, canvas: Canvas) -> tuple[Box | None, np.ndarray | None, np.ndarray | None]:
        """(box, mask, q): the inside mask in its box and the normalised radius q (0 at the centre)."""
        grow = 1.0 + float(np.abs(self.deform).sum())  # bound on how far the bend pushes the surface
        reach = grow * np.sqrt(((self.rot * self.semi[None, :]) ** 2).sum(axis=1))  # per-axis half extent
        box = canvas.box(self.center - reach, self.center + reach)
        if box is None:
            return None, None, None
        x, y, z = canvas.coords(box)
        d = (x - np.float32(self.center[0]), y - np.float32(self.center[1]), z - np.float32(self.center[2]))
        r = (self.rot / self.semi[None, :]).astype(np.float32)
        u, v, w = (r[0, a] * d[0] + r[1, a] * d[1] + r[2, a] * d[2] for a in range(3))
        c = self.deform.astype(np.float32)
        bend = 1.0 + c[0] * u + c[1] * v + c[2] * w + u * (c[3] * v + c[5] * w) + c[4] * v * w
        q = u * u
        q += v * v
        q += w * w
        bend *= bend
        q /= bend
        return box, q < 1.0, q


def sweep(canvas: Canvas, points: np.ndarray, radii: np.ndarray, flatten: tuple[float, float, float] = (1, 1, 1),
          step: float = 0.3) -> tuple[Box | None, np.ndarray | None]:
    """A curved tube: the union of balls along a smooth curve through ``points`` (N, 3) mm.

    ``radii`` (N,) mm are interpolated along the curve; ``flatten`` scales the ball's (X, Y, Z)
    semi-axes (e.g. (1.3, 0.8, 1) for a flattened vein). Balls are spaced ``step`` x radius apart.
    """
    t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    k = min(3, len(points) - 1)
    curve = make_interp_spline(t, points, k=k)
    # Ball centres every ``step`` local radii: integrate ds / (step * r) along a fine arc grid.
    fine = np.linspace(0.0, t[-1], max(int(np.ceil(t[-1] / 0.5)), 2) + 1)
    travel = np.concatenate([[0.0], np.cumsum(np.diff(fine) / (step * np.interp(fine[1:], t, radii)))])
    picks = np.unique(np.concatenate([np.searchsorted(travel, np.arange(np.ceil(travel[-1]))), [len(fine) - 1]]))
    s = fine[picks]
    centres, rs = curve(s), np.interp(s, t, radii)
    semis = rs[:, None] * np.asarray(flatten, float)[None, :]
    box = canvas.box((centres - semis).min(axis=0), (centres + semis).max(axis=0))
    if box is None:
        return None, None
    mask = np.zeros(tuple(b.stop - b.start for b in box), bool)
    origin = np.array([box[2].start, box[1].start, box[0].start])
    for c, semi in zip(centres, semis, strict=True):
        sub = canvas.box(c - semi, c + semi)
        if sub is None:
            continue
        x, y, z = canvas.coords(sub)
        c32, inv = c.astype(np.float32), (1.0 / semi).astype(np.float32)  # float64 scalars would upcast
        inside = (((x - c32[0]) * inv[0]) ** 2 + ((y - c32[1]) * inv[1]) ** 2 + ((z - c32[2]) * inv[2]) ** 2) < 1.0
        local = tuple(slice(sub[a].start - origin[2 - a], sub[a].stop - origin[2 - a]) for a in range(3))
        mask[local] |= inside
    return box, mask
