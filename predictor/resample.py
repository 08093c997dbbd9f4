"""Resampling in torch, in the voxel grid (no world transform): images trilinear, labels nearest, class
probabilities trilinear then argmax.

All volumes are 3D ``(D, H, W)`` in canonical order (see predictor.orientation). All functions use
the voxel-centre convention of ``align_corners=False``: the field of view (extent in mm) is kept and
output voxel o samples input position ``(o + 0.5) * n_in / n_out - 0.5``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def size_for_spacing(shape: tuple[int, ...], spacing: tuple[float, ...], target_mm: tuple[float, ...]
                     ) -> tuple[int, int, int]:
    """Voxel counts that cover the same extent at ``target_mm`` (all three in the same axis order)."""
    n0, n1, n2 = (max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target_mm, strict=True))
    return n0, n1, n2


def resize_image(volume: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resize of a float ``(D, H, W)`` tensor, or each channel of a ``(C, D, H, W)`` one, to ``size``;
    same dtype and device."""
    if tuple(volume.shape[-3:]) == tuple(size):
        return volume
    out = F.interpolate(volume.reshape(1, -1, *volume.shape[-3:]), size=size, mode="trilinear", align_corners=False)
    return out.reshape(*volume.shape[:-3], *size)


def _nearest_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    pos = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out)
    return pos.floor().long().clamp_(0, n_in - 1)


def resize_labels(labels: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer ``(D, H, W)`` label tensor (any dtype; values kept exactly)."""
    if tuple(labels.shape) == tuple(size):
        return labels
    d, h, w = (_nearest_index(n_in, n_out, labels.device) for n_in, n_out in zip(labels.shape, size, strict=True))
    return labels[d][:, h][:, :, w]


def resize_probabilities(prob: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Labels (uint8 ``(D, H, W)`` of ``size``) from class probabilities ``(C, D, H, W)`` that sum to 1 per
    voxel: the argmax of each class's probability resized trilinearly (ties go to the lower id, as argmax).

    A finer grid than the probabilities' gets boundaries between their voxels instead of the nearest
    neighbour's staircase. Classes go one at a time, so memory is two volumes of ``size`` (the running
    maximum and the labels) plus one class, never ``C`` of them. A class below ``1 / C`` everywhere is
    skipped: interpolation keeps the sum at 1, so such a class is below the maximum everywhere too.
    """
    classes = prob.shape[0]
    if tuple(prob.shape[1:]) == tuple(size):
        return prob.argmax(0).to(torch.uint8)
    best = resize_image(prob[0], size)
    labels = torch.zeros(size, dtype=torch.uint8, device=prob.device)
    for c in range(1, classes):
        if prob[c].max() < 1.0 / classes:
            continue
        p = resize_image(prob[c], size)
        labels.masked_fill_(p > best, c)
        torch.maximum(best, p, out=best)
    return labels
