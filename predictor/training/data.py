"""Training data: validation (every image has a label on the same grid, labels in 0..13; unlabeled images
readable), each case's canonical arrays computed once (:func:`precompute`), and the random patches the
networks train on (class-balanced centres, intensity augmentation, batches in the network's sub-voxel
layout). Nothing here writes a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from challenge.cases import list_images, list_labels
from challenge.labels import MAX_LABEL, NUM_CLASSES
from challenge.nifti import NiftiError, read_geometry, read_image

from ..network import space_to_depth, upsampled_shape
from ..orientation import Reorientation
from ..pipeline import normalise, with_coords
from ..resample import resize_image, resize_labels, size_for_spacing
from .config import NetTraining, TrainConfig

Pair = tuple[np.ndarray, np.ndarray]  # (image, labels) training arrays


class DataError(ValueError):
    """Bad training data; the message names the file."""


def validate(images: Path, labels: Path) -> list[tuple[str, Path, Path]]:
    """(case, image, label) for every image; DataError naming the file for any problem."""
    if not images.is_dir() or not labels.is_dir():
        raise DataError(f"{images if not images.is_dir() else labels}: not a folder")
    imgs, labs = list_images(images), list_labels(labels)
    if not imgs:
        raise DataError(f"{images}: no <Case>_0000.nii.gz images")
    pairs = []
    for case, img in imgs.items():
        if case not in labs:
            raise DataError(f"{img}: no label {labels / (case + '.nii.gz')}")
        try:
            why = read_geometry(img).mismatch(read_geometry(labs[case]))
        except NiftiError as err:
            raise DataError(str(err)) from None
        if why:
            raise DataError(f"{labs[case]}: label grid differs from its image ({why})")
        pairs.append((case, img, labs[case]))
    return pairs


def validate_unlabeled(folder: Path) -> dict[str, Path]:
    """Case -> image for every unlabeled scan, each read in full once; DataError naming a bad file."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    images = list_images(folder)
    if not images:
        raise DataError(f"{folder}: no <Case>_0000.nii.gz images")
    for path in images.values():
        try:
            image, _ = read_image(path)
        except NiftiError as err:
            raise DataError(str(err)) from None
        except (RuntimeError, OSError, EOFError) as err:
            raise DataError(f"{path}: unreadable ({type(err).__name__})") from None
        if image.ndim != 3:
            raise DataError(f"{path}: not a 3D image (shape {image.shape})")
    return images


@dataclass
class Case:
    """Canonical training arrays: coarse (whole volume, ``(1, D, H, W)``) and fine (organ box,
    ``(4, D, H, W)`` with coordinate channels, one (image, labels) pair per ``fine_scale_aug`` spacing),
    float16 image; uint8 labels ``(D, H, W)``, the fine ones on the fine network's output grid
    ``(D*fz, H*fy, W*fx)`` (its ``upsample``)."""

    name: str
    coarse_x: np.ndarray
    coarse_y: np.ndarray
    fine: list[Pair]


def fine_data(cases: list[Case], weights: np.ndarray | None = None) -> tuple[list[Pair], np.ndarray | None]:
    """The fine network's training pairs, every scale of every case, and each pair's draw probability:
    a case's weight (None: all cases equally likely) shared among its scales."""
    data = [pair for c in cases for pair in c.fine]
    if weights is None:
        return data, None
    return data, np.concatenate([np.full(len(c.fine), w / len(c.fine)) for c, w in zip(cases, weights, strict=True)])


def precompute(case: str, image_path: Path, label_path: Path, cfg: TrainConfig) -> Case:
    """One case's training arrays (see :class:`Case`); DataError naming the label file for label values
    outside the integers 0..13 or a label map with no organ."""
    image, geo = read_image(image_path)
    labels, _ = read_image(label_path)
    if labels.min() < 0 or labels.max() > MAX_LABEL or not np.all(np.equal(np.mod(labels, 1), 0)):
        raise DataError(f"{label_path}: label values outside the integers 0..{MAX_LABEL}")
    reo = Reorientation.from_direction(geo.direction)
    spacing = reo.spacing(geo.spacing_kji)
    x = normalise(reo.forward(torch.from_numpy(image.astype(np.float32))), cfg.pipeline.hu_window)
    y = reo.forward(torch.from_numpy(labels.astype(np.uint8)))
    size = size_for_spacing(tuple(x.shape), spacing, (cfg.pipeline.coarse_mm,) * 3)
    coarse_x, coarse_y = resize_image(x, size), (resize_labels(y, size) > 0).to(torch.uint8)
    nz = torch.nonzero(y)
    if len(nz) == 0:
        raise DataError(f"{label_path}: no organ voxels")
    lo = [max(int(nz[:, a].min() - cfg.roi_margin_mm / spacing[a]), 0) for a in range(3)]
    hi = [min(int(nz[:, a].max() + 1 + cfg.roi_margin_mm / spacing[a]), x.shape[a]) for a in range(3)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    return Case(case, coarse_x[None].half().numpy(), coarse_y.numpy(),
                _fine_scales(x[box].contiguous(), y[box].contiguous(), spacing, cfg))


def _fine_scales(x_box: torch.Tensor, y_box: torch.Tensor, spacing: tuple[float, float, float],
                 cfg: TrainConfig) -> list[Pair]:
    """The organ box resampled to ``fine_mm`` times each ``fine_scale_aug`` factor (labels on the output grid)."""
    fine = []
    for scale in cfg.fine_scale_aug:
        fine_size = size_for_spacing(tuple(x_box.shape), spacing, (cfg.pipeline.fine_mm * scale,) * 3)
        label_size = upsampled_shape(fine_size, cfg.fine.unet.upsample)
        fine.append((with_coords(resize_image(x_box, fine_size)).half().numpy(),
                     resize_labels(y_box, label_size).numpy()))
    return fine


def load_cases(images: Path, labels: Path, cfg: TrainConfig) -> list[Case]:
    """Validate the labeled folders, then precompute every case; DataError naming the first bad file."""
    return [precompute(c, i, lab, cfg) for c, i, lab in validate(images, labels)]


def organ_voxels(y: np.ndarray) -> dict[int, np.ndarray]:
    """Each organ present in ``y``: the flat (C-order) indices of its voxels, ascending, as int32 (or int64
    for volumes past 2**31 voxels). Computed once per training array, so drawing a patch does not scan the
    whole label volume. Memory: 4 bytes per organ voxel, more than the uint8 labels where organs fill over
    a quarter of the array."""
    flat = y.ravel()
    foreground = np.flatnonzero(flat).astype(np.int32 if flat.size < 2**31 else np.int64)
    order = foreground[np.argsort(flat[foreground], kind="stable")]  # by organ, ascending within each
    ends = np.cumsum(np.bincount(flat[foreground], minlength=NUM_CLASSES))
    return {organ: order[ends[organ - 1]:ends[organ]] for organ in range(1, len(ends)) if ends[organ] > ends[organ - 1]}


def sample_patch(x: np.ndarray, y: np.ndarray, patch: tuple[int, int, int], fg_fraction: float,
                 rng: np.random.Generator, *, upsample: tuple[int, int, int] = (1, 1, 1),
                 organs: dict[int, np.ndarray] | None = None) -> Pair:
    """A ``patch``-sized crop of ``x`` ``(C, D, H, W)`` and the matching crop of ``y`` ``(D*fz, H*fy, W*fx)``
    (``upsample`` = (fz, fy, fx): labels on a finer grid), padded with -1 / background where the volume is
    smaller. With probability ``fg_fraction`` it is centred on a voxel of an organ drawn uniformly among
    the organs present (class-balanced), otherwise placed uniformly at random. ``organs``: ``organ_voxels(y)``,
    computed here when not given."""
    if tuple(y.shape) != upsampled_shape(x.shape[1:], upsample):
        raise ValueError(f"labels {y.shape} are not the image {x.shape[1:]} times upsample {upsample}")
    if organs is None:
        organs = organ_voxels(y)
    label_shape = y.shape
    pads = [(0, max(p - n, 0)) for p, n in zip(patch, x.shape[1:], strict=True)]
    if any(b for _, b in pads):
        x = np.pad(x, [(0, 0), *pads], constant_values=-1.0)
        y = np.pad(y, [(0, b * f) for (_, b), f in zip(pads, upsample, strict=True)])
    present = sorted(organs)
    if rng.random() < fg_fraction and present:
        # class-balanced: an organ drawn uniformly among those present, then one of its voxels, so that
        # the adrenals (~0.1 % of the foreground) are centred as often as the liver
        voxels = organs[present[int(rng.integers(len(present)))]]
        centre = np.unravel_index(voxels[rng.integers(len(voxels))], label_shape) // np.asarray(upsample)
        start = [int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, patch, x.shape[1:], strict=True)]
    else:
        start = [int(rng.integers(0, n - p + 1)) for p, n in zip(patch, x.shape[1:], strict=True)]
    sl = tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
    sl_y = tuple(slice(s * f, (s + p) * f) for s, p, f in zip(start, patch, upsample, strict=True))
    return x[(slice(None), *sl)], y[sl_y]


def augment_intensity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random contrast, brightness, gamma and noise on a normalised patch (1 unit = 200 HU), clipped to
    [-1, 1] like the inference input. Scanners, doses and contrast phases differ between centres (the
    domains of the phantoms and of FLARE22); organ-specific contrast changes (e.g. an unenhanced aorta)
    are beyond any global transform: that is what pseudo-labels of such scans teach."""
    x = x * rng.uniform(0.75, 1.25) + rng.uniform(-0.2, 0.2)
    if rng.random() < 0.3:
        u = np.clip((x + 1) / 2, 0, 1)
        x = 2 * u ** rng.uniform(0.7, 1.5) - 1
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.02, 0.15), x.shape).astype(np.float32)
    return np.clip(x, -1, 1, out=x)


def draw_batch(data: list[Pair], organs: list[dict[int, np.ndarray]], spec: NetTraining, rng: np.random.Generator,
               *, weights: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``spec.batch`` augmented patches: each from a pair of ``data`` drawn with probabilities ``weights``
    (None: uniformly; ``organs[i]`` is ``organ_voxels`` of pair i's labels). Returns the float32 images
    ``(N, C, D, H, W)`` and the int64 targets in the network's sub-voxel layout (``space_to_depth``)."""
    xs, ys = [], []
    for _ in range(spec.batch):
        i = rng.integers(len(data)) if weights is None else rng.choice(len(data), p=weights)
        x, y = data[i]
        px, py = sample_patch(x, y, spec.patch, spec.foreground_fraction, rng, upsample=spec.unet.upsample,
                              organs=organs[i])
        px = px.astype(np.float32)
        px[0] = augment_intensity(px[0], rng)  # channel 0 is intensity; the rest are coordinates
        xs.append(px)
        ys.append(py.astype(np.int64))
    # targets in the network's sub-voxel layout (forward_blocks), so the loss needs no shuffled logits
    return torch.from_numpy(np.stack(xs)), space_to_depth(torch.from_numpy(np.stack(ys)), spec.unet.upsample)
