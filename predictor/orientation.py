"""Exact, invertible reorientation of a (k, j, i) array to a canonical axis order, by transposes and flips.

Canonical array axes are (S, P, L)-ward: axis 0 runs inferior->superior, axis 1 anterior->posterior,
axis 2 right->left (LPS world, the same frame as SimpleITK). Each voxel axis is matched to the world
axis it is closest to (an oblique grid keeps its residual rotation of up to 45 degrees: the network
sees it as it is). No interpolation: the inverse restores the input grid voxel for voxel.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reorientation:
    """``perm``: canonical axis c takes array axis perm[c]; ``flip``: canonical axes then reversed."""

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @classmethod
    def from_direction(cls, direction: tuple[float, ...] | np.ndarray) -> Reorientation:
        """From SimpleITK's row-major 3x3 direction (columns = voxel axes i, j, k in LPS world)."""
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        # world axis w (0=x/L, 1=y/P, 2=z/S) <- voxel axis best[w]: the assignment with the largest |cosines|.
        best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[w, p[w]]) for w in range(3)))
        # canonical array axis c holds world axis 2 - c; voxel axis a is array axis 2 - a.
        p0, p1, p2 = (2 - best[2 - c] for c in range(3))
        f0, f1, f2 = (bool(d[2 - c, best[2 - c]] < 0) for c in range(3))
        return cls((p0, p1, p2), (f0, f1, f2))

    def spacing(self, spacing_kji: tuple[float, float, float]) -> tuple[float, float, float]:
        """Array-order spacing (mm) -> canonical-order spacing (mm)."""
        a, b, c = self.perm
        return float(spacing_kji[a]), float(spacing_kji[b]), float(spacing_kji[c])

    def shape(self, shape_kji: tuple[int, ...]) -> tuple[int, int, int]:
        a, b, c = self.perm
        return int(shape_kji[a]), int(shape_kji[b]), int(shape_kji[c])

    def forward(self, array):
        """(k, j, i) array (numpy or torch) -> canonical view/copy."""
        out = array.transpose(*self.perm) if isinstance(array, np.ndarray) else array.permute(*self.perm)
        axes = [c for c in range(3) if self.flip[c]]
        if not axes:
            return out
        return np.flip(out, axes) if isinstance(out, np.ndarray) else out.flip(axes)

    def inverse(self, array):
        """Canonical array -> (k, j, i) order of the original grid."""
        axes = [c for c in range(3) if self.flip[c]]
        if axes:
            array = np.flip(array, axes) if isinstance(array, np.ndarray) else array.flip(axes)
        inv = tuple(int(np.argsort(self.perm)[a]) for a in range(3))
        return array.transpose(*inv) if isinstance(array, np.ndarray) else array.permute(*inv)
