"""Surface Dice at a tolerance (NSD), computed the way DeepMind's surface-distance code does, but fast.

Same numbers as ``compute_surface_distances`` + ``compute_surface_dice_at_tolerance``: surfels on
the 2x2x2 corner grid weighted by their marching-cubes area, Euclidean distances in mm from each
surfel corner to the nearest surfel corner of the other mask, and ``distance <= tolerance``.
What differs is only how: codes by slicing (no correlate), corners that lie on both borders
count at distance 0 without a search, a KD-tree limited to the tolerance
instead of a distance transform of the whole crop, no sorting. Distances that the tree finds within
the tolerance are recomputed in the distance transform's own float arithmetic, so the comparison
with the tolerance is decided exactly as the official code decides it.

All arrays are in one consistent axis order; ``spacing`` (mm) is given in that order and
``sum_order`` says in which axis order squared components are added (the official code sums in
its own array order, nibabel's (i, j, k); for our (k, j, i) arrays that is (2, 1, 0)).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree

from evaluator.surfels import surfel_area_table


@dataclass
class Surface:
    """The corner codes of one mask over a crop of the corner grid, and its border corners.

    ``codes[c]`` is the code of global corner ``origin + c``; corner index c lies between voxels
    c-1 and c along each axis. ``table`` maps a code to its area in mm² (0 for codes 0 and 255).
    An empty mask has ``codes`` of size 0. ``flat`` holds the border corners as flat indices into
    ``codes`` (C order) and ``areas`` their areas.
    """

    codes: np.ndarray
    origin: tuple[int, int, int]
    table: np.ndarray

    def __post_init__(self) -> None:
        flat_codes = self.codes.reshape(-1)
        self.flat = np.flatnonzero(is_border(flat_codes))
        self.areas = self.table[flat_codes[self.flat]]

    @classmethod
    def empty(cls, table: np.ndarray) -> Surface:
        return cls(np.zeros((0, 0, 0), np.uint8), (0, 0, 0), table)

    @property
    def total_area(self) -> float:
        return float(self.areas.sum())

    def points(self, select: np.ndarray | None = None) -> np.ndarray:
        """Global integer corner indices (N, 3) of the border corners (or of ``flat[select]``)."""
        flat = self.flat if select is None else self.flat[select]
        idx = np.unravel_index(flat, self.codes.shape)
        return np.stack(idx, axis=1).astype(np.int64) + np.asarray(self.origin, dtype=np.int64)


def is_border(codes: np.ndarray) -> np.ndarray:
    """Codes other than 0 and 255, in one uint8 pass: (code + 1) wraps 255 to 0."""
    return (codes + np.uint8(1)) > 1


def corner_codes(mask: np.ndarray) -> np.ndarray:
    """uint8 codes of every corner of a boolean mask, shape ``mask.shape + 1``; outside the mask counts as 0.

    The same codes as correlating with [[[128, 64], [32, 16]], [[8, 4], [2, 1]]] (the voxel before
    the corner has the high weight), built in three separable shift-and-or passes.
    """
    padded = np.zeros(tuple(n + 2 for n in mask.shape), dtype=np.uint8)
    padded[1:-1, 1:-1, 1:-1] = mask
    code = (padded[:, :, :-1] << 1) | padded[:, :, 1:]
    code = (code[:, :-1, :] << 2) | code[:, 1:, :]
    return (code[:-1] << 4) | code[1:]


def extract_surface(mask: np.ndarray, offset: tuple[int, int, int], area_table: np.ndarray) -> Surface:
    """The surface of ``mask``, a crop whose first voxel is at ``offset`` in the full array."""
    return Surface(corner_codes(mask), (int(offset[0]), int(offset[1]), int(offset[2])), area_table)


def exact_distances(delta: np.ndarray, spacing: tuple[float, float, float],
                    sum_order: tuple[int, int, int]) -> np.ndarray:
    """Euclidean length in mm of integer corner offsets (N, 3), in scipy EDT's float arithmetic."""
    parts = [(delta[:, a].astype(np.float64) * float(spacing[a])) ** 2 for a in sum_order]
    return np.sqrt(parts[0] + parts[1] + parts[2])


def shared_corners(a: Surface, b: Surface) -> tuple[np.ndarray, np.ndarray] | None:
    """For each border corner of ``a``, and of ``b``: is the same global corner on the other's border?"""
    if a.flat.size == 0 or b.flat.size == 0:
        return None
    slices_a: list[slice] = []
    slices_b: list[slice] = []
    for oa, ob, na, nb in zip(a.origin, b.origin, a.codes.shape, b.codes.shape, strict=True):
        start, stop = max(oa, ob), min(oa + na, ob + nb)
        if start >= stop:
            return None
        slices_a.append(slice(start - oa, stop - oa))
        slices_b.append(slice(start - ob, stop - ob))
    in_a, in_b = tuple(slices_a), tuple(slices_b)
    both = is_border(a.codes[in_a]) & is_border(b.codes[in_b])
    flags = []
    for surface, region in ((a, in_a), (b, in_b)):
        full = np.zeros(surface.codes.shape, bool)
        full[region] = both
        flags.append(full.reshape(-1)[surface.flat])
    return flags[0], flags[1]


NEAR_OFFSETS = 128  # corner offsets tried by direct lookup before the KD-tree takes the rest


@lru_cache(maxsize=64)
def near_offsets(tolerance: float, spacing: tuple[float, float, float], sum_order: tuple[int, int, int],
                 limit: int) -> np.ndarray:
    """The ``limit`` nearest integer corner offsets (M, 3) whose exact length is within ``tolerance`` mm."""
    reach = [int(tolerance // s) for s in spacing]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    deltas = np.stack([g.ravel() for g in grids], axis=1)
    lengths = exact_distances(deltas, spacing, sum_order)
    keep = lengths <= tolerance
    order = np.argsort(lengths[keep], kind="stable")
    return deltas[keep][order][:limit]


def _near_hits(points: np.ndarray, target_points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """For each point: is a target corner at one of ``offsets`` from it? (dense lookups, no search)."""
    reach = np.abs(offsets).max(axis=0)
    lo = np.minimum(points.min(axis=0), target_points.min(axis=0)) - reach
    shape = tuple(int(n) for n in np.maximum(points.max(axis=0), target_points.max(axis=0)) + reach - lo + 1)
    dense = np.zeros(int(np.prod(shape)), bool)
    dense[np.ravel_multi_index(tuple((target_points - lo).T), shape)] = True
    flat = np.ravel_multi_index(tuple((points - lo).T), shape)
    steps = offsets @ np.array([shape[1] * shape[2], shape[2], 1])
    hits = np.zeros(len(points), bool)
    todo = np.arange(len(points))
    for step in steps:
        found = dense[flat + step]
        if found.any():
            hits[todo[found]] = True
            todo, flat = todo[~found], flat[~found]
            if todo.size == 0:
                break
    return hits


def overlap_area(source: Surface, target_points: np.ndarray, shared: np.ndarray | None, tolerance: float,
                 spacing: tuple[float, float, float], sum_order: tuple[int, int, int], threads: int = 1) -> float:
    """Area of ``source`` surfels whose nearest target corner is at most ``tolerance`` mm away.

    ``target_points``: the target's border corners (N, 3). Corners flagged in ``shared`` lie on the
    target border itself (distance 0) and count without a search; then the nearest few offsets
    within the tolerance are looked up directly; a KD-tree answers for the corners left.
    """
    if len(target_points) == 0 or source.flat.size == 0:
        return 0.0
    query = np.ones(source.flat.size, bool) if shared is None else ~shared
    area = 0.0 if shared is None else float(source.areas[shared].sum())
    points, areas = source.points(query), source.areas[query]
    if len(points) == 0:
        return area
    offsets = near_offsets(float(tolerance), tuple(float(s) for s in spacing), tuple(sum_order), NEAR_OFFSETS)
    if len(offsets):
        near = _near_hits(points, target_points, offsets)
        area += float(areas[near].sum())
        points, areas = points[~near], areas[~near]
        if len(points) == 0:
            return area
    scale = np.asarray(spacing, dtype=np.float64)
    tree = cKDTree(target_points * scale, balanced_tree=False, compact_nodes=False)
    bound = tolerance * (1 + 1e-9) + 1e-9  # the tree's own rounding may differ by an ulp: decide exactly below
    dist, nearest = tree.query(points * scale, k=1, distance_upper_bound=bound, workers=threads)
    found = np.isfinite(dist)
    delta = points[found] - target_points[nearest[found]]
    within = exact_distances(delta, spacing, sum_order) <= tolerance
    return area + float(areas[found][within].sum())


def surface_dice(gt: Surface, pred: Surface, tolerance: float, spacing: tuple[float, float, float],
                 sum_order: tuple[int, int, int] = (0, 1, 2), threads: int = 1) -> float:
    """NSD at ``tolerance`` mm: (area of each surface within the tolerance of the other) / (total area).

    Both surfaces empty gives NaN (0/0), as DeepMind's code does; callers apply the FLARE22 empty-mask
    rules first. One empty surface gives 0.
    """
    total = gt.total_area + pred.total_area
    if total == 0:
        return float("nan")
    flags = shared_corners(gt, pred)
    gt_shared, pred_shared = flags if flags is not None else (None, None)
    overlap = overlap_area(gt, pred.points(), gt_shared, tolerance, spacing, sum_order, threads)
    overlap += overlap_area(pred, gt.points(), pred_shared, tolerance, spacing, sum_order, threads)
    return overlap / total


__all__ = ["Surface", "corner_codes", "extract_surface", "exact_distances", "surface_dice", "surfel_area_table"]
