"""The training loss: cross-entropy (optionally class-weighted, :func:`class_weights`) plus soft Dice."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(labels: list[np.ndarray], classes: int, power: float) -> torch.Tensor | None:
    """Cross-entropy weights from the voxel counts of ``labels``: organ c gets
    ``clip((median organ count / count_c) ** power, 1, 8)``; background and absent classes get 1.
    None when ``power`` is 0."""
    if power <= 0:
        return None
    counts = np.zeros(classes, dtype=np.float64)
    for y in labels:
        counts += np.bincount(y.ravel(), minlength=classes)[:classes]
    present = np.flatnonzero(counts[1:]) + 1
    weights = np.ones(classes)
    if len(present):
        weights[present] = np.clip((np.median(counts[present]) / counts[present]) ** power, 1.0, 8.0)
    return torch.tensor(weights, dtype=torch.float32)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (per-class ``weights``, normalised by the weights of the target voxels) plus soft Dice
    over the foreground classes present in the batch. ``logits`` ``(N, C, ...)``, ``target`` ``(N, ...)``: any
    spatial layout, e.g. the sub-voxel one of ``UNet3D.forward_blocks`` with a ``space_to_depth`` target.

    One log-softmax serves both terms, and the Dice overlap sums each voxel's probability of its own class
    per class (index_add) instead of multiplying by a one-hot tensor of C times the voxels: the same loss up
    to rounding, and a faster training step (benchmarks/train_step_bench.py). Computed in fp32 (or fp64)
    whatever the logits' dtype: half-precision sums of voxel counts overflow."""
    logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(1)
    ce = F.nll_loss(logp, target, weight=weights)
    prob = logp.exp()
    classes, flat = logits.shape[1], target.flatten()
    own = prob.gather(1, target[:, None]).flatten()
    inter = torch.zeros(classes, dtype=prob.dtype, device=prob.device).index_add_(0, flat, own)
    count = torch.bincount(flat, minlength=classes).to(prob.dtype)
    denom = prob.sum((0, *range(2, prob.ndim))) + count
    present = count[1:] > 0
    dice = (2 * inter[1:] + 1e-5) / (denom[1:] + 1e-5)
    return ce + (1 - dice[present].mean() if present.any() else 0.0)
