"""DSC and NSD of a challenge profile's labels (the 13 FLARE22 organs by default) for one pair of label arrays
(the official per-label protocol; the profile's rules: challenge.profile).

Arrays are (k, j, i): axis 0 is the NIfTI's third voxel axis, the slice axis along which the
official scorer crops the aorta, the IVC and the esophagus. ``spacing_kji`` is in mm, same order.

Per label: both masks empty gives DSC = NSD = the profile's ``both_empty`` (1 in FLARE22 and FLARE23); an
empty GT with a non-empty prediction gives 0 and 0; otherwise DSC = 2|G∩P| / (|G| + |P|) and NSD =
DeepMind's surface Dice at the label's tolerance (so an empty prediction gives 0 and 0), and 0 where the
DSC is below the profile's ``nsd_zero_below_dsc`` (FLARE23: 0.1). Values are rounded to the profile's
``decimals`` (FLARE23: 4) as the official code does. The emptiness test looks at
the whole arrays; the tube crop (labels with ``tube_crop``) comes after it:
- mode ``flare22``: slices ``[min_k, max_k)`` of the GT (the official exclusive end drops the top GT
  slice). Where the GT lies on a single slice that range is empty and the official code returns NaN;
  here that one slice is scored instead (the ``strict`` range) and the case gets a warning.
- mode ``strict``: slices ``[min_k, max_k]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from challenge.labels import MAX_LABEL, Organ
from challenge.profile import Profile, default
from evaluator.surface import (
    Scratch,
    border_surface_dice,
    grid_border,
    grid_size,
    lookup_plan,
    surfel_area_table,
    voxel_grid,
)

# The official code sums squared distance components in nibabel's (i, j, k) order = our axes (2, 1, 0).
OFFICIAL_SUM_ORDER = (2, 1, 0)


@dataclass(frozen=True)
class Mode:
    """What differs between the scoring modes."""

    name: str
    inclusive_tube_crop: bool  # strict: [min_k, max_k]; flare22: [min_k, max_k)
    header_mismatch_invalid: bool  # strict: a grid that differs from the GT's is invalid
    out_of_range_invalid: bool  # strict: a value outside 0..13, not an integer, NaN or inf is invalid


MODES: dict[str, Mode] = {
    "flare22": Mode("flare22", inclusive_tube_crop=False, header_mismatch_invalid=False, out_of_range_invalid=False),
    "strict": Mode("strict", inclusive_tube_crop=True, header_mismatch_invalid=True, out_of_range_invalid=True),
}


@dataclass
class Box:
    """Inclusive bounding box (k, j, i) of one label."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]  # inclusive


@dataclass
class OrganScores:
    dsc: dict[str, float] = field(default_factory=dict)  # organ short name -> value
    nsd: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def clean_labels(array: np.ndarray) -> tuple[np.ndarray, int]:
    """A uint8 label array with every value outside 0..13 (NaN and ±inf too) set to 0, and how many voxels
    that touched. Floats are truncated toward zero first, as the official ``np.uint8(get_fdata())`` does.
    The same conversion as the readers' (:func:`challenge.nifti.to_labels`, which also counts non-integers)."""
    from challenge.nifti import to_labels  # SimpleITK stays out of this module's imports

    labels, issues = to_labels(array)
    return labels, issues.outside


_ONE = np.uint16(1)
BOX_CHUNK_BYTES = 1 << 20  # uint16 label bits converted and reduced per step of label_boxes (stays in cache)


def label_boxes(labels: np.ndarray, max_label: int = MAX_LABEL) -> dict[int, Box]:
    """Bounding box of every label 1..``max_label`` (at most 15) present in a (k, j, i) uint8 array (values
    above it have none).

    The foreground's (j, i) extent comes from one max-projection along k; within those columns, a few
    slices at a time (``BOX_CHUNK_BYTES``), each voxel becomes one bit (1 << label) and OR-projections onto
    the (k, i) and (j, i) planes give every label's extent along each axis at once: one pass over the
    array and about three over its foreground columns, much faster than 13 masks or ``find_objects``.
    """
    plane = labels.max(axis=0)
    j_any, i_any = np.flatnonzero(plane.max(axis=1)), np.flatnonzero(plane.max(axis=0))
    if j_any.size == 0:
        return {}
    origin = (0, int(j_any[0]), int(i_any[0]))
    crop = labels[:, j_any[0]:j_any[-1] + 1, i_any[0]:i_any[-1] + 1]
    ki = np.empty((crop.shape[0], crop.shape[2]), np.uint16)
    ji = np.zeros(crop.shape[1:], np.uint16)
    step = max(1, BOX_CHUNK_BYTES // (2 * crop.shape[1] * crop.shape[2]))
    for start in range(0, crop.shape[0], step):
        bits = np.left_shift(_ONE, crop[start:start + step], dtype=np.uint16)  # 14..255 -> bit 14, 15 or none
        np.bitwise_or.reduce(bits, axis=1, out=ki[start:start + step])
        ji |= np.bitwise_or.reduce(bits, axis=0)
    projections = (np.bitwise_or.reduce(ki, axis=1), np.bitwise_or.reduce(ji, axis=1),
                   np.bitwise_or.reduce(ki, axis=0))
    present = int(np.bitwise_or.reduce(projections[0]))
    boxes = {}
    for label in range(1, max_label + 1):
        bit = 1 << label
        if not present & bit:
            continue
        (wk, wj, wi), (ok, oj, oi) = [np.flatnonzero(p & bit) for p in projections], origin
        boxes[label] = Box((int(wk[0]) + ok, int(wj[0]) + oj, int(wi[0]) + oi),
                           (int(wk[-1]) + ok, int(wj[-1]) + oj, int(wi[-1]) + oi))
    return boxes


def _slab(box: Box, organ: Organ, mode: Mode, warnings: list[str]) -> tuple[int, int]:
    """The half-open slice range [start, stop) along axis 0 to score ``organ`` in."""
    if not organ.tubular:
        return 0, np.iinfo(np.int64).max
    low, high = box.lo[0], box.hi[0]
    if mode.inclusive_tube_crop:
        return low, high + 1
    if high == low:
        warnings.append(f"{organ.short} GT on one slice: scored on that slice (the official code gives NaN)")
        return low, low + 1
    return low, high


def _region(box: Box, slab: tuple[int, int]) -> tuple[slice, ...] | None:
    start, stop = max(box.lo[0], slab[0]), min(box.hi[0] + 1, slab[1])
    if start >= stop:
        return None
    return (slice(start, stop), slice(box.lo[1], box.hi[1] + 1), slice(box.lo[2], box.hi[2] + 1))


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(sa.start, sb.start), max(sa.stop, sb.stop)) for sa, sb in zip(a, b, strict=True))


def score_organ(gt: np.ndarray, pred: np.ndarray, organ: Organ, gt_box: Box, pred_box: Box | None,
                spacing_kji: tuple[float, float, float], mode: Mode, table: np.ndarray,
                warnings: list[str], threads: int = 1, scratch: Scratch | None = None, *,
                nsd_zero_below: float = 0.0) -> tuple[float, float]:
    """(DSC, NSD) of one organ whose GT is not empty. ``scratch``: buffers shared by the organs of a case.
    Where the DSC is below ``nsd_zero_below`` the NSD is 0 (not computed).

    Everything happens in the union of the GT's and the prediction's boxes within the organ's slab: each
    mask is written once into a voxel grid padded by the tolerance's reach (:func:`voxel_grid`), counted,
    and turned into its border in place (:func:`grid_border`); the NSD compares the two borders on that
    grid (:func:`border_surface_dice`). A prediction with no voxel in the slab gives 0 and 0, as the
    official code does (its surface is empty).
    """
    slab = _slab(gt_box, organ, mode, warnings)
    g_region = _region(gt_box, slab)
    assert g_region is not None  # the slab always holds the GT box's first slice (see _slab)
    p_region = _region(pred_box, slab) if pred_box is not None else None
    if p_region is None:
        return 0.0, 0.0
    region = _union(g_region, p_region)
    shape = tuple(s.stop - s.start for s in region)
    pad = lookup_plan(organ.tolerance_mm, spacing_kji, OFFICIAL_SUM_ORDER)[2]
    size = grid_size(shape, pad)
    scratch = Scratch() if scratch is None else scratch
    (g_voxels, g_mask), (p_voxels, p_mask) = (voxel_grid(shape, pad, scratch.get(slot, size)) for slot in (0, 1))
    np.equal(gt[region], organ.id, out=g_mask)
    np.equal(pred[region], organ.id, out=p_mask)
    g_count, p_count = int(np.count_nonzero(g_mask)), int(np.count_nonzero(p_mask))
    if p_count == 0:
        return 0.0, 0.0
    both = scratch.get(2, size).view(bool)  # |G ∩ P| over the whole grids: contiguous, 0 outside the masks
    np.logical_and(g_voxels.reshape(-1).view(bool), p_voxels.reshape(-1).view(bool), out=both)
    dsc = 2 * int(np.count_nonzero(both)) / (g_count + p_count)
    if dsc < nsd_zero_below:
        return dsc, 0.0
    g_border, p_border = (grid_border(voxels, table, scratch.get(2, size)) for voxels in (g_voxels, p_voxels))
    corners = (g_voxels.shape[0], g_voxels.shape[1], g_voxels.shape[2])
    nsd = border_surface_dice(g_border, p_border, corners, organ.tolerance_mm, spacing_kji, OFFICIAL_SUM_ORDER,
                              threads)
    return dsc, nsd


def score_arrays(gt: np.ndarray, pred: np.ndarray, spacing_kji: tuple[float, float, float],
                 mode: Mode = MODES["flare22"], threads: int = 1, profile: Profile | None = None) -> OrganScores:
    """DSC and NSD of the profile's labels (default flare22: the 13 organs). ``gt`` and ``pred`` are
    (k, j, i) uint8 arrays of one shape with values in 0..the profile's highest label (see
    :func:`clean_labels`); ``spacing_kji`` in mm. ``threads``: KD-tree query threads (-1: all cores)."""
    if gt.shape != pred.shape:
        raise ValueError(f"shape {pred.shape} != GT shape {gt.shape}")
    profile = profile or default()
    rules = profile.scoring
    table = surfel_area_table(spacing_kji)
    gt_boxes, pred_boxes = label_boxes(gt, profile.max_label), label_boxes(pred, profile.max_label)
    scratch = Scratch()
    scores = OrganScores()
    for organ in profile.labels:
        gt_box, pred_box = gt_boxes.get(organ.id), pred_boxes.get(organ.id)
        if gt_box is None:
            dsc = nsd = rules.both_empty if pred_box is None else 0.0
        else:
            dsc, nsd = score_organ(gt, pred, organ, gt_box, pred_box, spacing_kji, mode, table, scores.warnings,
                                   threads, scratch, nsd_zero_below=rules.nsd_zero_below_dsc)
        scores.dsc[organ.short], scores.nsd[organ.short] = dsc, nsd
    return rounded(scores, rules.decimals)


def rounded(scores: OrganScores, decimals: int) -> OrganScores:
    """``scores`` with every value rounded to ``decimals`` (-1: unchanged) as the official ``round(x, 4)`` on
    numpy floats does (``np.round``)."""
    if decimals >= 0:
        for values in (scores.dsc, scores.nsd):
            values.update({key: float(np.round(np.float64(value), decimals)) for key, value in values.items()})
    return scores


def empty_prediction_scores(gt: np.ndarray, profile: Profile | None = None) -> OrganScores:
    """The scores of a missing or invalid prediction: 0 where the GT has the label, the profile's
    ``both_empty`` (1) where it has not."""
    profile = profile or default()
    present = labels_present(gt, max_label=profile.max_label)
    scores = OrganScores()
    for organ in profile.labels:
        value = 0.0 if organ.id in present else profile.scoring.both_empty
        scores.dsc[organ.short] = scores.nsd[organ.short] = value
    return rounded(scores, profile.scoring.decimals)


def labels_present(labels: np.ndarray, chunk: int = 1 << 18, max_label: int = MAX_LABEL) -> set[int]:
    """The labels 1..``max_label`` found in a uint8 array, counted a piece at a time (no temporary the size of
    the array)."""
    counts = np.zeros(256, np.int64)
    flat = labels.reshape(-1)
    for start in range(0, flat.size, chunk):
        counts += np.bincount(flat[start:start + chunk], minlength=256)
    return {label for label in range(1, max_label + 1) if counts[label]}
