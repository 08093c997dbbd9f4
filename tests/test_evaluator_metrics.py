"""DSC / NSD of the evaluator: hand-derived answers, the FLARE22 protocol rules, and agreement with the
slow reference port of the official algorithm (tests/reference_flare22.py).

Arrays here are (k, j, i) with spacing in the same order, as the evaluator takes them; the reference
takes nibabel order (i, j, k), so comparisons transpose.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from challenge.labels import BY_SHORT, ORGANS
from evaluator.metrics import MODES, clean_labels, label_boxes, score_arrays
from evaluator.surface import (
    Scratch,
    corner_codes,
    extract_surface,
    grid_size,
    mask_surface_dice,
    near_hits,
    surface_dice,
    surfel_area_table,
    voxel_grid,
)
from evaluator.surfels import surfel_normals
from tests.reference_flare22 import KERNEL, reference_scores, surface_distances
from tests.reference_flare22 import surface_dice as reference_surface_dice

RAG, RK, AORTA = BY_SHORT["RAG"].id, BY_SHORT["RK"].id, BY_SHORT["Aorta"].id  # tolerances 2, 3 and 2 mm


def nsd(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float], tolerance: float) -> float:
    table = surfel_area_table(spacing)
    return surface_dice(extract_surface(gt, (0, 0, 0), table), extract_surface(pred, (0, 0, 0), table),
                        tolerance, spacing)


def against_reference(gt: np.ndarray, pred: np.ndarray, spacing_kji, mode: str = "flare22") -> float:
    """Largest |evaluator - reference| over the 26 numbers (NaN-safe: both NaN counts as equal)."""
    ours = score_arrays(gt, pred, spacing_kji, MODES[mode])
    ref = reference_scores(gt.transpose(2, 1, 0), pred.transpose(2, 1, 0), tuple(spacing_kji[::-1]),
                           inclusive=mode == "strict")
    worst = 0.0
    for organ in ORGANS:
        for metric, values in (("DSC", ours.dsc), ("NSD", ours.nsd)):
            a, b = values[organ.short], ref[f"{organ.short}_{metric}"]
            if not (math.isnan(a) and math.isnan(b)):
                worst = max(worst, abs(a - b))
    return worst


# --- hand-derived answers -------------------------------------------------------------------------------

def test_two_single_voxels_2mm_apart():
    # Voxels at i = 5 and i = 7 (1 mm grid): the facing corners are 1 mm apart, the far ones 2 mm.
    # All 8 corners of a lone voxel have the same one-corner code, so each is 1/8 of the area.
    gt, pred = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    gt[5, 5, 5], pred[5, 5, 7] = True, True
    assert nsd(gt, pred, (1.0, 1.0, 1.0), 2.0) == 1.0  # distance <= tolerance counts
    assert nsd(gt, pred, (1.0, 1.0, 1.0), 1.999) == 0.5  # only the 4 facing corners of each
    assert nsd(gt, pred, (1.0, 1.0, 1.0), 0.999) == 0.0
    scores = score_arrays(np.where(gt, RAG, 0).astype(np.uint8), np.where(pred, RAG, 0).astype(np.uint8),
                          (1.0, 1.0, 1.0))
    assert scores.dsc["RAG"] == 0.0 and scores.nsd["RAG"] == 1.0


def test_single_voxel_area_is_a_marching_cubes_octahedron():
    # The surface of one voxel is 8 corner triangles with area vector (1/8, 1/8, 1/8) each: sqrt(3)/8.
    table = surfel_area_table((1.0, 1.0, 1.0))
    surface = extract_surface(np.ones((1, 1, 1), bool), (0, 0, 0), table)
    assert len(surface.points()) == 8
    assert surface.total_area == pytest.approx(math.sqrt(3))
    # Anisotropic: each triangle scales by the cofactors (s1 s2, s0 s2, s0 s1).
    s = (2.5, 0.8, 0.7)
    expected = 8 * math.sqrt(sum((c / 8) ** 2 for c in (s[1] * s[2], s[0] * s[2], s[0] * s[1])))
    assert extract_surface(np.ones((1, 1, 1), bool), (0, 0, 0), surfel_area_table(s)).total_area == \
        pytest.approx(expected, rel=1e-14)


def test_box_shifted_one_slice():
    # 30 x 30 x 10 voxels at spacing (i, j, k) = (0.8, 0.8, 2.5), shifted one slice along k:
    # 9 of 10 slices overlap -> DSC 0.9; every surfel moves 2.5 mm at most -> NSD@3 mm = 1;
    # NSD@2 mm = 0.6934 (flare22_spec.md §2.6, checked there against the official code).
    gt = np.zeros((14, 36, 36), np.uint8)
    gt[2:12, 3:33, 3:33] = 1
    pred = np.roll(gt, 1, axis=0)
    spacing = (2.5, 0.8, 0.8)
    assert nsd(gt == 1, pred == 1, spacing, 3.0) == 1.0
    assert round(nsd(gt == 1, pred == 1, spacing, 2.0), 4) == 0.6934
    scores = score_arrays(gt * RAG, pred * RAG, spacing)
    assert scores.dsc["RAG"] == pytest.approx(0.9, abs=1e-15)
    assert round(scores.nsd["RAG"], 4) == 0.6934
    scores = score_arrays(gt * RK, pred * RK, spacing)
    assert scores.nsd["RK"] == 1.0
    assert against_reference(gt * RAG, pred * RAG, spacing) < 1e-12


def test_box_anisotropic_in_each_axis_order():
    # The same box and shift turned so the 2.5 mm axis is each array axis in turn: same numbers.
    base_gt = np.zeros((14, 36, 36), np.uint8)
    base_gt[2:12, 3:33, 3:33] = RAG
    base_pred = np.roll(base_gt, 1, axis=0)
    for order in ((0, 1, 2), (1, 0, 2), (1, 2, 0), (2, 1, 0)):
        gt, pred = base_gt.transpose(order), base_pred.transpose(order)
        spacing = tuple((2.5, 0.8, 0.8)[a] for a in order)
        scores = score_arrays(np.ascontiguousarray(gt), np.ascontiguousarray(pred), spacing)
        assert scores.dsc["RAG"] == pytest.approx(0.9, abs=1e-15), order
        assert round(scores.nsd["RAG"], 4) == 0.6934, order


def test_blobs_in_each_axis_order_match_reference():
    rng = np.random.default_rng(5)
    gt, pred = random_labels(rng, (16, 20, 18)), random_labels(rng, (16, 20, 18))
    spacing = (2.5, 0.7, 1.2)
    first = None
    for order in ((0, 1, 2), (2, 0, 1), (1, 2, 0)):
        g, p = np.ascontiguousarray(gt.transpose(order)), np.ascontiguousarray(pred.transpose(order))
        s = tuple(spacing[a] for a in order)
        assert against_reference(g, p, s) < 1e-12, order
        scores = score_arrays(g, p, s)
        plain = {o.short: (scores.dsc[o.short], scores.nsd[o.short]) for o in ORGANS if not o.tubular}
        if first is None:
            first = plain
        for organ, values in plain.items():  # tube crops follow axis 0, so only the others are invariant
            assert values == pytest.approx(first[organ], abs=1e-12), (order, organ)


# --- empty masks and the tube crop -------------------------------------------------------------------------

def test_every_empty_mask_branch():
    gt, pred = np.zeros((10, 10, 10), np.uint8), np.zeros((10, 10, 10), np.uint8)
    gt[2:5, 2:5, 2:5] = 1  # liver only in GT -> 0, 0
    pred[6:8, 6:8, 6:8] = 3  # spleen only in the prediction -> 0, 0
    scores = score_arrays(gt, pred, (1.0, 1.0, 1.0))
    assert (scores.dsc["Liver"], scores.nsd["Liver"]) == (0.0, 0.0)
    assert (scores.dsc["Spleen"], scores.nsd["Spleen"]) == (0.0, 0.0)
    for organ in ORGANS[1:]:
        if organ.short != "Spleen":  # absent from both -> 1, 1
            assert (scores.dsc[organ.short], scores.nsd[organ.short]) == (1.0, 1.0)
    assert against_reference(gt, pred, (1.0, 1.0, 1.0)) == 0.0


def tube_pair() -> tuple[np.ndarray, np.ndarray]:
    """Aorta GT on slices 5..9; the prediction matches on 5..8, misses slice 9 and adds slices 0..4."""
    gt = np.zeros((14, 12, 12), np.uint8)
    gt[5:10, 4:8, 4:8] = AORTA
    pred = gt.copy()
    pred[9] = 0
    pred[0:5, 4:8, 4:8] = AORTA
    return gt, pred


def test_tube_crop_drops_top_gt_slice_in_flare22_mode():
    gt, pred = tube_pair()
    scores = score_arrays(gt, pred, (2.0, 1.0, 1.0), MODES["flare22"])
    # Slices [5, 9): the missing slice 9 and the extra slices 0..4 are both outside the crop.
    assert (scores.dsc["Aorta"], scores.nsd["Aorta"]) == (1.0, 1.0)
    assert against_reference(gt, pred, (2.0, 1.0, 1.0), "flare22") < 1e-12


def test_tube_crop_is_inclusive_in_strict_mode():
    gt, pred = tube_pair()
    scores = score_arrays(gt, pred, (2.5, 1.0, 1.0), MODES["strict"])
    assert scores.dsc["Aorta"] == pytest.approx(2 * 4 / (5 + 4), abs=1e-15)  # slices [5, 9]
    assert scores.nsd["Aorta"] < 1.0  # the top face moved 2.5 mm, more than the 2 mm tolerance
    assert against_reference(gt, pred, (2.5, 1.0, 1.0), "strict") < 1e-12


def test_tube_on_one_slice_is_scored_on_that_slice_where_the_official_code_gives_nan():
    gt = np.zeros((8, 12, 12), np.uint8)
    gt[3, 4:8, 4:8] = AORTA
    pred = np.zeros_like(gt)
    pred[3, 4:8, 5:9] = AORTA
    ref = reference_scores(gt.transpose(2, 1, 0), pred.transpose(2, 1, 0), (1.0, 1.0, 2.0))
    assert math.isnan(ref["Aorta_DSC"]) and math.isnan(ref["Aorta_NSD"])
    flare = score_arrays(gt, pred, (2.0, 1.0, 1.0), MODES["flare22"])
    strict = score_arrays(gt, pred, (2.0, 1.0, 1.0), MODES["strict"])
    assert flare.dsc["Aorta"] == strict.dsc["Aorta"] == pytest.approx(2 * 12 / 32)
    assert flare.nsd["Aorta"] == strict.nsd["Aorta"]
    assert any("Aorta GT on one slice" in w for w in flare.warnings)
    assert not strict.warnings


# --- building blocks ----------------------------------------------------------------------------------------

def test_surfel_table_shape_and_complement_symmetry():
    normals = surfel_normals()
    assert len(normals) == 256 and len(normals[0]) == 0 and len(normals[255]) == 0
    table = surfel_area_table((0.7, 1.3, 2.9))
    # A cell and its complement have the same surface.
    assert np.allclose(table, table[255 - np.arange(256)], rtol=1e-14, atol=0)


def test_surfel_table_equals_deepmind():
    lookup = pytest.importorskip("surface_distance.lookup_tables", reason="surface-distance not installed")
    for spacing in ((1.0, 1.0, 1.0), (2.5, 0.78, 0.78), (0.3, 5.0, 0.9)):
        theirs = np.zeros(256)
        for code, normals in enumerate(lookup._NEIGHBOUR_CODE_TO_NORMALS):
            for n in np.asarray(normals, float):
                theirs[code] += np.linalg.norm([n[0] * spacing[1] * spacing[2], n[1] * spacing[0] * spacing[2],
                                                n[2] * spacing[0] * spacing[1]])
        assert np.max(np.abs(surfel_area_table(spacing) - theirs)) < 1e-14


def test_label_boxes_match_find_objects():
    labels = random_labels(np.random.default_rng(1), (17, 23, 19))
    labels[3, 4, 5] = 200  # values outside 1..13 have no box
    boxes = label_boxes(labels)
    for label, box in boxes.items():
        found = ndimage.find_objects((labels == label).astype(np.uint8))[0]
        assert box.lo == tuple(s.start for s in found) and box.hi == tuple(s.stop - 1 for s in found)
    assert set(boxes) == set(np.unique(labels).tolist()) - {0, 200}


def test_label_boxes_ignore_values_above_13():
    labels = np.zeros((6, 7, 8), np.uint8)
    labels[1, 2, 3], labels[4, 5, 6], labels[2, 0, 7] = 14, 15, 255  # bits 14, 15 and none inside label_boxes
    labels[5, 6, 0] = 13
    boxes = label_boxes(labels)
    assert set(boxes) == {13} and boxes[13].lo == boxes[13].hi == (5, 6, 0)
    assert label_boxes(np.zeros((3, 4, 5), np.uint8)) == {}


@pytest.mark.parametrize("pad", [(0, 0, 0), (2, 1, 3)])
def test_corner_codes_equal_the_official_correlation(pad):
    mask = np.random.default_rng(3).random((7, 9, 8)) < 0.4
    padded = np.zeros(tuple(n + 1 for n in mask.shape), np.uint8)  # the official padding: one voxel at the end
    padded[:-1, :-1, :-1] = mask
    official = ndimage.correlate(padded, KERNEL, mode="constant", cval=0)  # the code of corner c at index c
    codes = corner_codes(mask, pad)
    assert codes.shape == tuple(n + 1 + 2 * p for n, p in zip(mask.shape, pad, strict=True))
    inner = tuple(slice(p, p + n + 1) for p, n in zip(pad, mask.shape, strict=True))
    assert np.array_equal(codes[inner], official)
    codes[inner] = 0
    assert not codes.any()


def test_voxel_grid_zeroes_a_reused_buffer():
    scratch = Scratch()
    size = grid_size((3, 4, 5), (1, 0, 2))
    scratch.get(0, size).fill(7)
    voxels, interior = voxel_grid((3, 4, 5), (1, 0, 2), scratch.get(0, size))
    assert voxels.shape == (7, 6, 11) and interior.shape == (3, 4, 5) and interior.dtype == bool
    assert not voxels.any() and np.shares_memory(voxels, scratch.get(0, size // 2))  # one buffer, reused


@pytest.mark.parametrize("block", [1, 1 << 16])  # one offset per gather, many per gather
def test_near_hits_match_brute_force(block, monkeypatch):
    rng = np.random.default_rng(4)
    shape = (9, 12, 14)
    target, source = np.zeros(shape, bool), np.zeros(shape, bool)
    target[2:7, 2:10, 2:12] = rng.random((5, 8, 10)) < 0.05  # offsets up to 2 from the interior stay inside
    source[2:7, 2:10, 2:12] = rng.random((5, 8, 10)) < 0.3
    flat, flags = np.flatnonzero(source), target.reshape(-1)
    offsets = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    steps = offsets @ np.array([shape[1] * shape[2], shape[2], 1])
    expected = flags[flat[:, None] + steps].any(axis=1)
    hits, missed, tried = near_hits(flat, flags, steps, block)
    assert tried and np.array_equal(hits, expected) and np.array_equal(missed, np.flatnonzero(~expected))
    monkeypatch.setattr("evaluator.surface.LOOKUP_FIRST", 3)  # groups of 1 and 2 steps, then the budget is spent
    hits, missed, tried = near_hits(flat, flags, steps, block, budget=lambda corners: 0)
    first = flags[flat[:, None] + steps[:3]].any(axis=1)
    assert not tried and np.array_equal(hits, first) and np.array_equal(missed, np.flatnonzero(~first))


def test_mask_surface_dice_matches_reference():
    rng = np.random.default_rng(6)
    # the last tolerance holds more offsets than NEAR_OFFSETS: the KD-tree answers for the corners left
    for spacing, tolerance in (((2.5, 0.8, 0.8), 2.0), ((1.0, 1.3, 0.7), 5.0), ((0.4, 0.5, 0.45), 7.0)):
        gt = random_labels(rng, (12, 16, 14), organs=1) > 0
        pred = ndimage.binary_dilation(gt) if rng.random() < 0.5 else np.roll(gt, 1, axis=1)
        ours = mask_surface_dice(gt, pred, surfel_area_table(spacing), tolerance, spacing, (2, 1, 0))
        ref = reference_surface_dice(surface_distances(gt.transpose(2, 1, 0), pred.transpose(2, 1, 0),
                                                       spacing[::-1]), tolerance)
        assert abs(ours - ref) <= 1e-12, (spacing, tolerance)


def test_clean_labels_ignores_values_outside_0_to_13():
    arr = np.array([[[0, 1, 13, 14, 255]]], np.uint8)
    out, n = clean_labels(arr)
    assert out.tolist() == [[[0, 1, 13, 0, 0]]] and n == 2
    out, n = clean_labels(np.array([[[-1.0, 2.7, 13.5, 14.0, np.nan]]]))
    assert out.dtype == np.uint8 and out.tolist() == [[[0, 2, 13, 0, 0]]] and n == 3  # floats truncate
    out, n = clean_labels(np.array([[[-3, 5, 300]]], np.int16))
    assert out.tolist() == [[[0, 5, 0]]] and n == 2


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        score_arrays(np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 5), np.uint8), (1.0, 1.0, 1.0))


# --- property test against the reference --------------------------------------------------------------------

def random_labels(rng: np.random.Generator, shape: tuple[int, int, int], organs: int = 13) -> np.ndarray:
    """Smooth random blobs for labels 1..organs (some may come out empty or touch the border)."""
    out = np.zeros(shape, np.uint8)
    for label in rng.permutation(np.arange(1, organs + 1))[: rng.integers(1, organs + 1)]:
        field = ndimage.gaussian_filter(rng.random(shape), sigma=rng.uniform(0.8, 2.5))
        out[field > np.quantile(field, rng.uniform(0.85, 0.99))] = label
    return out


@pytest.mark.parametrize("near", [0, 5, 10**6])  # KD-tree only, both paths, direct lookups only
def test_search_paths_agree_with_reference(near, monkeypatch):
    monkeypatch.setattr("evaluator.surface.NEAR_OFFSETS", near)
    rng = np.random.default_rng(11)
    for _ in range(3):
        gt = random_labels(rng, (14, 22, 20))
        pred = np.roll(gt, (1, -2, 1), axis=(0, 1, 2))
        pred[random_labels(rng, (14, 22, 20), organs=4) > 0] = 4  # far, scattered false positives
        assert against_reference(gt, pred, (2.5, 0.8, 0.8), "strict") <= 1e-12


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1),
       shape=st.tuples(st.integers(4, 20), st.integers(4, 20), st.integers(4, 20)),
       spacing=st.tuples(*[st.floats(0.3, 5.0, allow_nan=False)] * 3),
       mode=st.sampled_from(["flare22", "strict"]),
       perturb=st.sampled_from(["independent", "shift", "erode", "dilate"]))
def test_matches_reference_on_random_blobs(seed, shape, spacing, mode, perturb):
    rng = np.random.default_rng(seed)
    gt = random_labels(rng, shape)
    if perturb == "independent":
        pred = random_labels(rng, shape)
    elif perturb == "shift":
        pred = np.roll(gt, tuple(rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
    else:
        op = ndimage.grey_erosion if perturb == "erode" else ndimage.grey_dilation
        pred = op(gt, size=(2, 2, 2)).astype(np.uint8)
    single = [o.short for o in ORGANS if o.tubular and o.id in label_boxes(gt)
              and label_boxes(gt)[o.id].lo[0] == label_boxes(gt)[o.id].hi[0]]
    if mode == "flare22" and single:
        # The official code gives NaN here (defined differently by us, tested above); compare the rest.
        ref = reference_scores(gt.transpose(2, 1, 0), pred.transpose(2, 1, 0), spacing[::-1])
        ours = score_arrays(gt, pred, spacing, MODES[mode])
        for organ in ORGANS:
            if organ.short not in single:
                assert abs(ours.dsc[organ.short] - ref[f"{organ.short}_DSC"]) <= 1e-9
                assert abs(ours.nsd[organ.short] - ref[f"{organ.short}_NSD"]) <= 1e-9
        return
    assert against_reference(gt, pred, spacing, mode) <= 1e-9


# --- the benchmark's case types, small ----------------------------------------------------------------------

def local_errors(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """Per label a one-voxel erosion, dilation or nothing, then up to 3 cubes on its boundary flipped."""
    pred = np.zeros_like(gt)
    for label in np.unique(gt)[1:]:
        mask = gt == label
        kind = rng.integers(3)
        if kind:
            mask = ndimage.binary_erosion(mask) if kind == 1 else ndimage.binary_dilation(mask)
        edge = np.argwhere(mask & ~ndimage.binary_erosion(mask))
        for centre in edge[rng.integers(len(edge), size=3)] if len(edge) else []:
            mask[tuple(slice(max(int(c) - 1, 0), int(c) + 2) for c in centre)] = rng.random() < 0.5
        pred[mask & (pred == 0)] = label
    return pred


def case_prediction(kind: str, rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """A prediction of one of the benchmark's case types for ``gt``, whose corner j >= 14, i >= 12 is empty."""
    if kind == "empty":
        return np.zeros_like(gt)
    pred = local_errors(rng, gt)
    if kind == "missed":
        present = np.unique(pred)[1:]
        pred[np.isin(pred, rng.choice(present, size=min(2, len(present)), replace=False))] = 0
    if kind == "far":
        pred[-3:, -4:, -4:] = rng.integers(1, 14)  # at least 12 voxels (9.6 mm) from the GT in j or i
    return pred


@pytest.mark.parametrize("kind", ["local", "missed", "far", "empty"])
@pytest.mark.parametrize("paths", [{}, {"NEAR_OFFSETS": 0}, {"TREE_LOOKUPS": 0, "LOOKUP_FIRST": 3}],
                         ids=["default", "tree-only", "tree-after-3"])
def test_case_types_match_reference(kind, paths, monkeypatch):
    for name, value in paths.items():
        monkeypatch.setattr(f"evaluator.surface.{name}", value)
    rng = np.random.default_rng(21)
    for _ in range(3):
        gt = random_labels(rng, (16, 30, 28))
        gt[:, 14:, 12:] = 0
        pred = case_prediction(kind, rng, gt)
        for mode in ("strict", "flare22"):
            assert against_reference(gt, pred, (2.5, 0.8, 0.8), mode) <= 1e-12, (kind, mode)
