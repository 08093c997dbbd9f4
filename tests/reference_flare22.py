"""A slow, literal re-implementation of the official FLARE22 scorer, to test the fast evaluator against.

Written from the algorithm of the official scorer (JunMa11/FLARE, FLARE22/Evaluation; docs/metrics.md; DeepMind's
``compute_surface_distances`` / ``compute_surface_dice_at_tolerance`` / ``compute_dice_coefficient``),
not copied. It keeps every step of the official path:
- arrays in nibabel order (i, j, k), spacing from ``header.get_zooms()`` in that order, the label
  maps read as ``np.uint8(get_fdata())``;
- a per-organ loop with the 1/0 rules for empty organs, checked on the whole arrays;
- for the aorta, IVC and esophagus, both masks cut to GT slices ``[min_k:max_k]`` along axis 2
  (exclusive end), which gives NaN when the GT lies on one slice;
- per organ: the union bounding box, one voxel of zero padding at the upper end of each axis,
  2x2x2 codes by ``scipy.ndimage.correlate`` with the kernel [[[128,64],[32,16]],[[8,4],[2,1]]],
  border = code not in {0, 255}, scipy's EDT of the non-border with ``sampling=spacing``, surfel
  areas from the 256-entry normal table scaled by spacing cofactors, and ``distance <= tolerance``.
The normal table itself comes from evaluator.surfels (a table of constants; tests check it against
DeepMind's when the ``surface-distance`` package is installed).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from challenge.labels import ORGANS
from evaluator.surfels import surfel_normals

KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])


def area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    areas = np.zeros(256)
    for code, normals in enumerate(surfel_normals()):
        total = 0
        for n in normals:
            v = np.zeros(3)
            v[0] = n[0] * spacing[1] * spacing[2]
            v[1] = n[1] * spacing[0] * spacing[2]
            v[2] = n[2] * spacing[0] * spacing[1]
            total += np.linalg.norm(v)
        areas[code] = total
    return areas


def surface_distances(mask_gt: np.ndarray, mask_pred: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """Distances (mm) from each border surfel of one mask to the other's border, and the surfel areas."""
    table = area_table(spacing)
    union = mask_gt | mask_pred
    empty = {"d_gt": np.zeros(0), "d_pred": np.zeros(0), "a_gt": np.zeros(0), "a_pred": np.zeros(0)}
    if not union.any():
        return empty
    lo, hi = np.zeros(3, int), np.zeros(3, int)
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        nz = np.nonzero(np.any(union, axis=others))[0]
        lo[axis], hi[axis] = nz.min(), nz.max()
    shape = tuple(hi - lo + 2)
    crop = tuple(slice(lo[a], hi[a] + 1) for a in range(3))
    codes, borders = [], []
    for mask in (mask_gt, mask_pred):
        padded = np.zeros(shape, np.uint8)
        padded[:-1, :-1, :-1] = mask[crop]
        code = ndimage.correlate(padded, KERNEL, mode="constant", cval=0)
        codes.append(code)
        borders.append((code != 0) & (code != 255))
    distmaps = []
    for border in borders:
        if border.any():
            distmaps.append(ndimage.distance_transform_edt(~border, sampling=spacing))
        else:
            distmaps.append(np.full(border.shape, np.inf))
    return {"d_gt": distmaps[1][borders[0]], "d_pred": distmaps[0][borders[1]],
            "a_gt": table[codes[0]][borders[0]], "a_pred": table[codes[1]][borders[1]]}


def surface_dice(sd: dict, tolerance: float) -> float:
    overlap = np.sum(sd["a_gt"][sd["d_gt"] <= tolerance]) + np.sum(sd["a_pred"][sd["d_pred"] <= tolerance])
    total = np.sum(sd["a_gt"]) + np.sum(sd["a_pred"])
    with np.errstate(invalid="ignore"):
        return float(overlap / total) if total else float("nan")


def dice(mask_gt: np.ndarray, mask_pred: np.ndarray) -> float:
    volume = mask_gt.sum() + mask_pred.sum()
    if volume == 0:
        return float("nan")
    return float(2 * (mask_gt & mask_pred).sum() / volume)


def reference_scores(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float],
                     inclusive: bool = False, crop_axis: int = 2) -> dict[str, float]:
    """``<Organ>_DSC`` / ``<Organ>_NSD`` for uint8 arrays in nibabel order (crop along ``crop_axis``).

    ``inclusive=True`` gives the ``strict`` tube crop [min, max] instead of the official [min, max).
    """
    out: dict[str, float] = {}
    for organ in ORGANS:
        g_all, s_all = gt == organ.id, pred == organ.id
        if g_all.sum() == 0 and s_all.sum() == 0:
            dsc = nsd = 1.0
        elif g_all.sum() == 0:
            dsc = nsd = 0.0
        else:
            g, s = g_all, s_all
            if organ.tubular:
                z = np.nonzero(g_all)[crop_axis]
                low, high = int(z.min()), int(z.max()) + (1 if inclusive else 0)
                cut = [slice(None)] * 3
                cut[crop_axis] = slice(low, high)
                g, s = g_all[tuple(cut)], s_all[tuple(cut)]
            sd = surface_distances(g, s, spacing)
            dsc = dice(g, s)
            nsd = surface_dice(sd, organ.tolerance_mm)
        out[f"{organ.short}_DSC"], out[f"{organ.short}_NSD"] = dsc, nsd
    return out


def reference_case(gt_path, pred_path, inclusive: bool = False) -> dict[str, float]:
    """Score one file pair exactly as the official script loads it (nibabel, get_fdata, uint8)."""
    gt_img = nib.load(str(gt_path))
    spacing = tuple(float(z) for z in gt_img.header.get_zooms()[:3])
    gt = np.uint8(gt_img.get_fdata())
    pred = np.uint8(nib.load(str(pred_path)).get_fdata())
    return reference_scores(gt, pred, spacing, inclusive=inclusive)
