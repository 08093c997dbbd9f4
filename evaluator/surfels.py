"""Surface elements ("surfels") of a binary mask on the 2x2x2 corner grid, with their areas in mm².

This is the surface model of DeepMind's surface-distance code, which the FLARE22 scorer uses:
every corner of the voxel grid gets an 8-bit code from the 2x2x2 voxels around it, the codes
other than 0 (all outside) and 255 (all inside) are the border, and each code's area is the sum
of the areas of the marching-cubes triangles through that cell, scaled by the voxel spacing.

The 256-entry table is built here from the marching-cubes construction itself (not copied):
- the surface crosses every cell edge whose two corners differ, at the edge midpoint;
- on a face with two diagonal inside corners, the inside corners are kept apart when at most
  four corners of the cell are inside, the outside corners otherwise (the classic table's choice);
- each closed polygon is split into a fan of triangles. Triangles and quadrilaterals need no
  rule; a pentagon is fanned from a neighbour of its one vertex of unique type, a hexagon from a
  vertex whose inside corner has one inside neighbour and whose outside corner has two. This is the
  triangulation of the classic table, which is the one DeepMind's table holds (tests check the
  areas against the `surface-distance` package when it is installed).

Code bit order (array axes a, b, c of the 2x2x2 cell, 0 = lower index): bit weight
``2 ** (7 - (4a + 2b + c))``, i.e. the correlation kernel ``[[[128, 64], [32, 16]], [[8, 4], [2, 1]]]``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_CORNERS = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]


def _inside(code: int, corner: tuple[int, ...]) -> bool:
    """Whether ``corner`` (a 3-tuple of 0/1 cell coordinates) is inside for ``code``."""
    a, b, c = corner
    return bool((code >> (7 - (4 * a + 2 * b + c))) & 1)


def _faces() -> list[list[tuple[int, int, int]]]:
    """The 6 cell faces, each as its 4 corners in cyclic order."""
    faces = []
    for axis in range(3):
        u_axis, v_axis = (x for x in range(3) if x != axis)
        for value in (0, 1):
            cycle = []
            for u, v in ((0, 0), (1, 0), (1, 1), (0, 1)):
                corner = [0, 0, 0]
                corner[axis], corner[u_axis], corner[v_axis] = value, u, v
                cycle.append((corner[0], corner[1], corner[2]))
            faces.append(cycle)
    return faces


def _midpoint(p: tuple[int, ...], q: tuple[int, ...]) -> tuple[float, ...]:
    return tuple((a + b) / 2 for a, b in zip(p, q, strict=True))


def _segments(code: int) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """The surface's intersection with each face: segments between edge midpoints."""
    keep_inside_apart = bin(code).count("1") <= 4
    segments = []
    for cycle in _faces():
        crossings = [t for t in range(4) if _inside(code, cycle[t]) != _inside(code, cycle[(t + 1) % 4])]
        mids = [_midpoint(cycle[t], cycle[(t + 1) % 4]) for t in crossings]
        if len(mids) == 2:
            segments.append((mids[0], mids[1]))
        elif len(mids) == 4:
            # Pairing (0,1)+(2,3) cuts off corners 1 and 3; pairing (3,0)+(1,2) cuts off corners 0 and 2.
            cuts_off_inside = _inside(code, cycle[1])
            if cuts_off_inside == keep_inside_apart:
                segments += [(mids[0], mids[1]), (mids[2], mids[3])]
            else:
                segments += [(mids[3], mids[0]), (mids[1], mids[2])]
    return segments


def _loops(code: int) -> list[list[tuple[float, ...]]]:
    """Link the face segments into closed polygons (each midpoint lies on exactly two faces)."""
    neighbours: dict[tuple[float, ...], list[tuple[float, ...]]] = {}
    for p, q in _segments(code):
        neighbours.setdefault(p, []).append(q)
        neighbours.setdefault(q, []).append(p)
    seen: set[tuple[float, ...]] = set()
    loops = []
    for start in neighbours:
        if start in seen:
            continue
        loop, previous, current = [start], None, start
        seen.add(start)
        while True:
            nxt = next(n for n in neighbours[current] if n != previous) if previous else neighbours[current][0]
            if nxt == start:
                break
            loop.append(nxt)
            seen.add(nxt)
            previous, current = current, nxt
        loops.append(loop)
    return loops


def _vertex_type(code: int, vertex: tuple[float, ...]) -> tuple[int, int]:
    """(inside neighbours of the edge's inside corner, inside neighbours of its outside corner), within the cell."""
    axis = next(i for i, x in enumerate(vertex) if x == 0.5)
    ends = []
    for value in (0, 1):
        corner = tuple(value if i == axis else int(x) for i, x in enumerate(vertex))
        ends.append(corner)
    inner, outer = ends if _inside(code, ends[0]) else ends[::-1]

    def inside_neighbours(corner: tuple[int, ...]) -> int:
        return sum(_inside(code, tuple(c ^ (i == a) for i, c in enumerate(corner))) for a in range(3))

    return inside_neighbours(inner), inside_neighbours(outer)


def _fan_apex(code: int, loop: list[tuple[float, ...]]) -> int:
    types = [_vertex_type(code, v) for v in loop]
    if len(loop) == 5:
        unique = next(i for i, t in enumerate(types) if types.count(t) == 1)
        return (unique + 1) % 5
    if len(loop) == 6:
        return types.index((1, 2))
    return 0


@lru_cache(maxsize=1)
def surfel_normals() -> tuple[np.ndarray, ...]:
    """For each of the 256 codes, an (n, 3) array of triangle area vectors (cell units, array axis order).

    The length of each vector is the triangle's area for a unit cube. Codes 0 and 255 have none.
    """
    table = []
    for code in range(256):
        vectors = []
        for loop in _loops(code):
            points = np.asarray(loop, dtype=float)
            apex = _fan_apex(code, loop)
            points = np.roll(points, -apex, axis=0)
            for k in range(1, len(points) - 1):
                vectors.append(0.5 * np.cross(points[k] - points[0], points[k + 1] - points[0]))
        table.append(np.asarray(vectors, dtype=float).reshape(-1, 3))
    return tuple(table)


def surfel_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """(256,) float64, read-only: the surface area in mm² that each corner code stands for.

    ``spacing`` is the voxel size in mm in the same axis order as the array the codes come from.
    A triangle's area vector scales with the cofactors of diag(spacing), as DeepMind's code does:
    component 0 by s1*s2, component 1 by s0*s2, component 2 by s0*s1. Cached per spacing (a few ms each).
    """
    s0, s1, s2 = (float(s) for s in spacing)
    return _area_table(s0, s1, s2)


@lru_cache(maxsize=32)
def _area_table(s0: float, s1: float, s2: float) -> np.ndarray:
    """:func:`surfel_area_table` for spacing (s0, s1, s2) mm, computed once per spacing."""
    areas = np.zeros(256)
    for code, normals in enumerate(surfel_normals()):
        total = 0.0
        for n in normals:
            scaled = np.array([n[0] * s1 * s2, n[1] * s0 * s2, n[2] * s0 * s1])
            total += float(np.linalg.norm(scaled))
        areas[code] = total
    areas.setflags(write=False)
    return areas
