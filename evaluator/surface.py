"""Surface Dice at a tolerance (NSD), computed the way DeepMind's surface-distance code does, but fast.

Same numbers as ``compute_surface_distances`` + ``compute_surface_dice_at_tolerance``: surfels on
the 2x2x2 corner grid weighted by their marching-cubes area, Euclidean distances in mm from each
surfel corner to the nearest surfel corner of the other mask, and ``distance <= tolerance``.
What differs is only how:

- both masks lie on one voxel grid (the union of their boxes, padded by the tolerance's reach in
  corners), so that a border corner is a flat index and a corner offset a flat step; their corner
  codes come from three contiguous multiply-add passes over it (:func:`grid_codes`);
- for each border corner the other mask's border is looked up at the integer offsets whose length is
  within the tolerance, fewest voxel steps first (offset 0, a corner on both borders, first), for all
  the corners left at once, in groups of 1, 2, 4, ... offsets (:func:`near_hits`); a corner found
  is dropped. An offset is kept when its length, computed in the distance transform's own float
  arithmetic, is within the tolerance, so each comparison is decided exactly as the official code
  decides it. No distance transform, no sorting;
- only where the corners left times the offsets left would cost more than a KD-tree, or the tolerance
  holds more than :data:`NEAR_OFFSETS` offsets (a large tolerance on a fine grid), does a KD-tree
  limited to the tolerance answer for the corners left (far false positives, mostly).

All arrays are in one consistent axis order; ``spacing`` (mm) is given in that order and
``sum_order`` says in which axis order squared components are added (the official code sums in
its own array order, nibabel's (i, j, k); for our (k, j, i) arrays that is (2, 1, 0)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree

from evaluator.surfels import surfel_area_table

NEAR_OFFSETS = 4096  # offsets tried by direct lookup, nearest first, before a KD-tree takes the corners left
LOOKUP_BLOCK = 1 << 16  # at most this many lookups (corners left x offsets) go into one vectorized gather
TREE_LOOKUPS = 256  # lookups that cost about as much as one point in a KD-tree (build and query)
LOOKUP_FIRST = 64  # offsets always looked up directly (most corners meet the other surface within them)
_U2, _U4, _U16 = np.uint8(2), np.uint8(4), np.uint8(16)

Pad = tuple[int, int, int]


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


class Scratch:
    """Flat uint8 buffers reused from one grid to the next: a fresh page costs about a microsecond on first
    touch, as much as several passes over it, so the per-organ grids of a case live in the same memory."""

    def __init__(self) -> None:
        self._buffers: dict[int, np.ndarray] = {}

    def get(self, slot: int, size: int) -> np.ndarray:
        """``size`` bytes of buffer ``slot`` (contents undefined), grown when too small."""
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[slot] = np.empty(size, np.uint8)
        return buffer[:size]


@dataclass
class Border:
    """The border corners of one mask on a corner grid: ``flags`` (bool, the grid raveled in C order),
    ``flat`` (their flat indices, ascending) and ``areas`` (mm², same order)."""

    flags: np.ndarray
    flat: np.ndarray
    areas: np.ndarray

    @classmethod
    def of(cls, codes: np.ndarray, table: np.ndarray, flags: np.ndarray | None = None) -> Border:
        """The border of a C-contiguous code array, with areas from ``table`` (256 entries, mm²); ``flags``:
        its :func:`is_border` flags, raveled, if already computed."""
        flat_codes = codes.reshape(-1)
        flags = is_border(flat_codes) if flags is None else flags
        flat = np.flatnonzero(flags)
        return cls(flags, flat, np.take(table, np.take(flat_codes, flat).astype(np.intp)))  # intp: 2x faster

    @property
    def total_area(self) -> float:
        return float(self.areas.sum())


def is_border(codes: np.ndarray) -> np.ndarray:
    """Codes other than 0 and 255, in one uint8 pass: (code + 1) wraps 255 to 0."""
    return (codes + np.uint8(1)) > 1


def voxel_grid(shape: tuple[int, ...], pad: Pad = (0, 0, 0),
               buffer: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A zero uint8 grid for a mask of ``shape`` with ``1 + pad`` empty voxels on both sides of each axis, and
    a boolean view of its interior, where the mask goes (write it with ``np.equal(..., out=interior)``).
    ``buffer``: flat uint8 memory of exactly the grid's size to use (see :class:`Scratch`), zeroed here."""
    n0, n1, n2 = shape
    p0, p1, p2 = pad
    size = (n0 + 2 + 2 * p0, n1 + 2 + 2 * p1, n2 + 2 + 2 * p2)
    if buffer is None:
        voxels = np.zeros(size, np.uint8)
    else:
        voxels = buffer.reshape(size)
        voxels.fill(0)  # one contiguous pass: cheaper than zeroing only the six slabs around the interior
    interior = voxels[1 + p0:1 + p0 + n0, 1 + p1:1 + p1 + n1, 1 + p2:1 + p2 + n2]
    return voxels, interior.view(bool)


def grid_size(shape: tuple[int, ...], pad: Pad) -> int:
    """The number of voxels (bytes) of :func:`voxel_grid` for ``shape`` and ``pad``."""
    return int(np.prod([n + 2 + 2 * p for n, p in zip(shape, pad, strict=True)]))


def grid_codes(voxels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The corner codes of a 0/1 uint8 voxel grid from :func:`voxel_grid`, same shape (in ``out``, flat
    memory of the grid's size, if given): the code at index x combines voxels x and x + 1 along each axis
    (the first with the high weight), so that the code of the mask's corner c (between its voxels c-1 and
    c) lies at ``c + pad``; the last index of each axis holds 0. ``voxels`` is overwritten (scratch).

    Three multiply-add passes over the raveled grid, each a shift by one voxel, row or plane: the empty
    border makes the values that wrap from one row or plane into the next 0, so every pass is one
    contiguous loop (uint8 shifts and row-wise loops are several times slower in numpy).
    """
    _, n1, n2 = voxels.shape
    a = voxels.reshape(-1)
    b = np.empty_like(a) if out is None else out.reshape(-1)
    for weight, shift, (src, dst) in ((_U2, 1, (a, b)), (_U4, n2, (b, a)), (_U16, n1 * n2, (a, b))):
        np.multiply(src, weight, out=dst)
        np.add(dst[:-shift], src[shift:], out=dst[:-shift])
    return b.reshape(voxels.shape)


def grid_border(voxels: np.ndarray, table: np.ndarray, codes: np.ndarray | None = None) -> Border:
    """The border of the mask in a :func:`voxel_grid`, on the grid's corners (see :func:`grid_codes`).
    ``voxels`` is overwritten: it ends up holding the border flags. ``codes``: scratch memory of the
    grid's size for the codes, free again on return."""
    codes = grid_codes(voxels, codes).reshape(-1)
    flags = voxels.reshape(-1)
    np.add(codes, np.uint8(1), out=flags)
    np.greater(flags, 1, out=flags.view(bool))
    return Border.of(codes, table, flags.view(bool))


def corner_codes(mask: np.ndarray, pad: Pad = (0, 0, 0)) -> np.ndarray:
    """uint8 codes of every corner of a boolean mask, outside the mask counting as 0, on a grid with
    ``pad`` extra corners (all code 0) on both sides of each axis: shape ``mask.shape + 1 + 2 * pad``,
    the code of corner c (between voxels c-1 and c) at index ``c + pad``. C-contiguous.

    The same codes as correlating with [[[128, 64], [32, 16]], [[8, 4], [2, 1]]] (the voxel before
    the corner has the high weight); see :func:`grid_codes`.
    """
    voxels, interior = voxel_grid(mask.shape, pad)
    interior[...] = mask
    return np.ascontiguousarray(grid_codes(voxels)[:-1, :-1, :-1])


def extract_surface(mask: np.ndarray, offset: tuple[int, int, int], area_table: np.ndarray) -> Surface:
    """The surface of ``mask``, a crop whose first voxel is at ``offset`` in the full array."""
    return Surface(corner_codes(mask), (int(offset[0]), int(offset[1]), int(offset[2])), area_table)


def exact_distances(delta: np.ndarray, spacing: tuple[float, float, float],
                    sum_order: tuple[int, int, int]) -> np.ndarray:
    """Euclidean length in mm of integer corner offsets (N, 3), in scipy EDT's float arithmetic."""
    parts = [(delta[:, a].astype(np.float64) * float(spacing[a])) ** 2 for a in sum_order]
    return np.sqrt(parts[0] + parts[1] + parts[2])


@lru_cache(maxsize=64)
def within_offsets(tolerance: float, spacing: tuple[float, float, float],
                   sum_order: tuple[int, int, int]) -> np.ndarray:
    """Every integer corner offset (M, 3) whose exact length is within ``tolerance`` mm, fewest voxel steps
    first (squared length in index units, then length in mm, then C order of the offset box), so (0, 0, 0)
    first and then the six face neighbours: the order in which two surfaces a voxel or two apart meet
    soonest, whatever the spacing. Read-only."""
    reach = [int(tolerance // s) for s in spacing]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    deltas = np.stack([g.ravel() for g in grids], axis=1)
    lengths = exact_distances(deltas, spacing, sum_order)
    keep = lengths <= tolerance
    deltas, lengths = deltas[keep], lengths[keep]
    offsets = deltas[np.lexsort((lengths, (deltas ** 2).sum(axis=1)))]
    offsets.setflags(write=False)
    return offsets


def lookup_plan(tolerance: float, spacing: tuple[float, float, float],
                sum_order: tuple[int, int, int]) -> tuple[np.ndarray, bool, Pad]:
    """(the offsets to look up directly, whether they are all the offsets within the tolerance, the grid
    padding they need: the largest |offset| per axis)."""
    every = within_offsets(float(tolerance), tuple(float(s) for s in spacing), tuple(sum_order))
    offsets = every[:NEAR_OFFSETS]
    if len(offsets) == 0:
        return offsets, len(every) == 0, (0, 0, 0)
    reach = np.abs(offsets).max(axis=0)
    return offsets, len(offsets) == len(every), (int(reach[0]), int(reach[1]), int(reach[2]))


def near_hits(flat: np.ndarray, target: np.ndarray, steps: np.ndarray, block: int = LOOKUP_BLOCK,
              budget: Callable[[int], float] | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Which grid corners ``flat`` (ascending) have a ``target`` corner at one of the flat ``steps`` from them.

    ``target``: bool flags of the raveled grid; every ``flat + step`` must lie inside it. Steps are tried
    in groups of 1, 2, 4, 8, ... (so at most about twice the lookups of one step at a time, in a few
    vectorized rounds); after each group the corners found are dropped. ``budget(corners left)``: after
    the first :data:`LOOKUP_FIRST` steps, stop early when (corners left) x (steps left) exceeds it.
    Returns (hits: bool per corner, the positions in ``flat`` of the corners not found, ascending; whether
    every step was tried)."""
    left = flat
    done, width = 0, 1
    while done < len(steps) and left.size:
        if budget is not None and done >= LOOKUP_FIRST and left.size * (len(steps) - done) > budget(left.size):
            break
        group = steps[done:done + width]
        done, width = done + len(group), 2 * width
        left = left[~_any_at(left, target, group, block)]
    missed = np.searchsorted(flat, left)  # ``left`` is a subsequence of ``flat``
    hits = np.ones(flat.size, bool)
    hits[missed] = False
    return hits, missed, done == len(steps)


def _any_at(flat: np.ndarray, target: np.ndarray, steps: np.ndarray, block: int) -> np.ndarray:
    """For each corner: is ``target`` set at one of ``steps`` from it? One gather when it is small."""
    if flat.size * len(steps) <= block:
        return np.take(target, np.add.outer(steps, flat)).any(axis=0)
    found = np.take(target, flat + steps[0])
    for step in steps[1:]:
        found |= np.take(target, flat + step)
    return found


def _grid_points(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)


def tree_hits(points: np.ndarray, target_points: np.ndarray, tolerance: float, spacing: tuple[float, float, float],
              sum_order: tuple[int, int, int], threads: int = 1) -> np.ndarray:
    """Which corners ``points`` (N, 3) have a ``target_points`` corner within ``tolerance`` mm: a KD-tree limited
    to the tolerance finds the nearest, whose distance is then recomputed exactly."""
    if len(points) == 0 or len(target_points) == 0:
        return np.zeros(len(points), bool)
    scale = np.asarray(spacing, dtype=np.float64)
    tree = cKDTree(target_points * scale, balanced_tree=False, compact_nodes=False)
    bound = tolerance * (1 + 1e-9) + 1e-9  # the tree's own rounding may differ by an ulp: decide exactly below
    dist, nearest = tree.query(points * scale, k=1, distance_upper_bound=bound, workers=threads)
    found = np.flatnonzero(np.isfinite(dist))
    delta = points[found] - target_points[nearest[found]]
    hits = np.zeros(len(points), bool)
    hits[found[exact_distances(delta, spacing, sum_order) <= tolerance]] = True
    return hits


def overlap_area(source: Border, target: Border, shape: tuple[int, int, int], tolerance: float,
                 spacing: tuple[float, float, float], sum_order: tuple[int, int, int], threads: int = 1) -> float:
    """Area (mm²) of the ``source`` border corners whose nearest ``target`` border corner is at most
    ``tolerance`` mm away, summed in one pass in C order (as the official code sums). Both borders lie on
    one corner grid of ``shape`` padded by at least :func:`lookup_plan`'s padding around every border corner.

    Direct lookups (:func:`near_hits`) until the corners left times the offsets left would cost more than
    a KD-tree over them and the target (:data:`TREE_LOOKUPS` lookups per point), or the offsets run out
    before the tolerance does (:data:`NEAR_OFFSETS`); then the KD-tree answers for the corners left.
    """
    if source.flat.size == 0 or target.flat.size == 0:
        return 0.0
    offsets, complete, _ = lookup_plan(tolerance, spacing, sum_order)
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    hits, left, tried = near_hits(source.flat, target.flags, offsets @ strides,
                                  budget=lambda corners: TREE_LOOKUPS * (corners + target.flat.size))
    if left.size and not (complete and tried):
        points = _grid_points(np.take(source.flat, left), shape)
        far = tree_hits(points, _grid_points(target.flat, shape), tolerance, spacing, sum_order, threads)
        hits[left[far]] = True
    return float(source.areas[hits].sum())


def border_surface_dice(a: Border, b: Border, shape: tuple[int, int, int], tolerance: float,
                        spacing: tuple[float, float, float], sum_order: tuple[int, int, int] = (0, 1, 2),
                        threads: int = 1) -> float:
    """NSD at ``tolerance`` mm of two borders on one corner grid of ``shape`` (see :func:`overlap_area`).
    Both empty gives NaN (0/0)."""
    total = a.total_area + b.total_area
    if total == 0:
        return float("nan")
    overlap = overlap_area(a, b, shape, tolerance, spacing, sum_order, threads)
    overlap += overlap_area(b, a, shape, tolerance, spacing, sum_order, threads)
    return overlap / total


def grid_surface_dice(codes_a: np.ndarray, codes_b: np.ndarray, table: np.ndarray, tolerance: float,
                      spacing: tuple[float, float, float], sum_order: tuple[int, int, int] = (0, 1, 2),
                      threads: int = 1) -> float:
    """NSD at ``tolerance`` mm of two C-contiguous code arrays on one corner grid (see :func:`corner_codes`),
    padded by at least :func:`lookup_plan`'s padding. Both surfaces empty gives NaN (0/0)."""
    shape = (codes_a.shape[0], codes_a.shape[1], codes_a.shape[2])
    return border_surface_dice(Border.of(codes_a, table), Border.of(codes_b, table), shape, tolerance, spacing,
                               sum_order, threads)


def mask_surface_dice(gt: np.ndarray, pred: np.ndarray, table: np.ndarray, tolerance: float,
                      spacing: tuple[float, float, float], sum_order: tuple[int, int, int] = (0, 1, 2),
                      threads: int = 1) -> float:
    """NSD at ``tolerance`` mm of two boolean masks of one shape (one crop of the volume, ``spacing`` in mm
    in its axis order); ``table`` from :func:`surfel_area_table` for that spacing."""
    pad = lookup_plan(tolerance, spacing, sum_order)[2]
    borders = []
    for mask in (gt, pred):
        voxels, interior = voxel_grid(mask.shape, pad)
        interior[...] = mask
        borders.append(grid_border(voxels, table))
    return border_surface_dice(borders[0], borders[1], voxels.shape, tolerance, spacing, sum_order, threads)


def _placed(surface: Surface, lo: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``surface``'s codes on a zero grid of ``shape`` whose first corner is global corner ``lo``."""
    out = np.zeros(shape, np.uint8)
    if surface.codes.size:
        start = np.asarray(surface.origin) - lo
        out[tuple(slice(int(s), int(s) + n) for s, n in zip(start, surface.codes.shape, strict=True))] = surface.codes
    return out


def surface_dice(gt: Surface, pred: Surface, tolerance: float, spacing: tuple[float, float, float],
                 sum_order: tuple[int, int, int] = (0, 1, 2), threads: int = 1) -> float:
    """NSD at ``tolerance`` mm: (area of each surface within the tolerance of the other) / (total area).

    Both surfaces empty gives NaN (0/0), as DeepMind's code does; callers apply the FLARE22 empty-mask
    rules first. One empty surface gives 0. The two code crops go onto one padded grid
    (:func:`grid_surface_dice`).
    """
    if gt.total_area + pred.total_area == 0:
        return float("nan")
    pad = np.asarray(lookup_plan(tolerance, spacing, sum_order)[2])
    present = [s for s in (gt, pred) if s.codes.size]
    lo = np.min([s.origin for s in present], axis=0) - pad
    hi = np.max([np.add(s.origin, s.codes.shape) for s in present], axis=0) + pad
    shape = (int(hi[0] - lo[0]), int(hi[1] - lo[1]), int(hi[2] - lo[2]))
    return grid_surface_dice(_placed(gt, lo, shape), _placed(pred, lo, shape), gt.table, tolerance, spacing,
                             sum_order, threads)


__all__ = ["Border", "Scratch", "Surface", "border_surface_dice", "corner_codes", "exact_distances",
           "extract_surface", "grid_border", "grid_codes", "grid_size", "grid_surface_dice", "lookup_plan",
           "mask_surface_dice", "surface_dice", "surfel_area_table", "voxel_grid"]
