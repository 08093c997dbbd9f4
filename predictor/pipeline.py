"""The two-stage segmentation on in-memory arrays (no file I/O, no SimpleITK).

Contract of :meth:`Predictor.predict`: a CT volume in HU as a ``(k, j, i)`` array (numpy-from-SimpleITK
order), its spacing in mm in the same ``(k, j, i)`` order and its SimpleITK row-major direction -> a
uint8 label map of exactly the input's shape (FLARE22 ids 0..13). An image with no organ found by
stage 1 gives an all-zero map.

1. Reorient to canonical axes (transposes/flips only, exact inverse), clip HU and scale to [-1, 1].
2. Stage 1: resample the whole volume to ``coarse_mm``; the coarse U-Net marks organ voxels; their
   bounding box plus ``margin_mm`` is the ROI.
3. Stage 2: resample the ROI to ``fine_mm`` (times each of ``fine_scales``, whose probabilities are
   averaged); the fine U-Net labels the 13 organs (one pass if the ROI has at most ``one_pass_voxels``
   voxels, else sliding windows), on the input grid or, with its ``upsample`` factors, on a finer one
   (e.g. 2 x 1 x 1 mm from a 2 mm input); optionally keep each organ's largest connected component (and
   those of at least ``keep_fraction`` of its size).
4. Back onto the ROI of the original grid (zeros outside), then undo step 1: with ``resample="probabilities"``
   (default) each class's probability is resized trilinearly and the largest wins (labels, never a
   ``C``-channel volume of the ROI: see :func:`resize_probabilities`); with ``"nearest"`` the fine labels
   are resized by nearest neighbour (cheaper; staircase boundaries).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .network import UNet3D, UNetConfig, depth_to_space, upsampled_shape
from .orientation import Reorientation
from .resample import resize_image, resize_labels, resize_probabilities, size_for_spacing

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CONFIG_NAME = "config.json"
# NDHWC activations and weights: oneDNN's 3D convolutions run faster than in NCDHW on the CPU (a fp32 training
# step 1.30x at 2 threads, benchmarks/train_step_bench.py); results are the same up to rounding.
MEMORY_FORMAT = torch.channels_last_3d
RESAMPLE_MODES = ("probabilities", "nearest")


@dataclass(frozen=True)
class PipelineConfig:
    """Spacings and margins in mm (isotropic); HU window; sliding-window settings in fine voxels."""

    coarse_mm: float = 5.0
    fine_mm: float = 2.0
    margin_mm: float = 15.0
    hu_window: tuple[float, float] = (-160.0, 240.0)
    one_pass_voxels: int = 160**3  # larger ROIs (in output voxels) go by sliding window (bounds GPU memory)
    # sliding windows: at most one_pass_voxels each, shaped by tile_windows to cover the ROI with the fewest
    # voxels computed; ``window`` optionally caps their size per axis (fine voxels)
    window: tuple[int, int, int] | None = None
    min_window: int = 64  # fine voxels per axis (or the whole axis): context, training patches are 48-80
    overlap: float = 0.25
    keep_largest: bool = True
    # with keep_largest, also keep an organ's components of at least this share of its largest one's
    # voxels (1.0: the largest only). A split duodenum keeps both halves; with the shipped weights on 8
    # validation phantoms (seed 3000) mean DSC 0.9187 (largest only) -> 0.9209 (0.1, 0.3 and 0.5 alike)
    keep_fraction: float = 0.3
    # how the fine output goes back to the input grid: "probabilities" (trilinear per class, then argmax) or
    # "nearest" (labels). Shipped weights, 8 held-out phantoms (seed 2000): mean DSC 0.929 -> 0.945.
    resample: str = "probabilities"
    # inference only (training uses fine_mm): stage 2 runs at fine_mm times each scale and averages the class
    # probabilities on the first scale's grid (test-time augmentation). Picked on 8 validation phantoms
    # (seed 3000) with the shipped weights: (1.0,) 0.9355, (0.95,) 0.9388, (0.95, 1.05) 0.9414,
    # (0.95, 0.85, 1.05) 0.9407 (benchmarks/predictor_bench.py --fine-scales).
    fine_scales: tuple[float, ...] = (0.95, 1.05)

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {self.resample!r}")
        if not self.fine_scales or min(self.fine_scales) <= 0:
            raise ValueError(f"fine_scales must be one or more positive factors, got {self.fine_scales!r}")

    @classmethod
    def from_dict(cls, d: dict) -> PipelineConfig:
        d = dict(d)
        for key in ("hu_window", "window", "fine_scales"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass
class Timings:
    """Seconds per step of one case (GPU work synchronised before each clock read)."""

    stage1: float = 0.0
    stage2: float = 0.0
    resample: float = 0.0
    roi_fine_shape: tuple[int, ...] = field(default_factory=tuple)  # the fine labels' grid (output voxels)


def normalise(hu: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Clip HU to ``window`` and map it linearly to [-1, 1] (float32)."""
    lo, hi = window
    return (hu.float().clamp_(lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """The forward pass's autocast context for ``dtype`` (None: a disabled one, plain fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def with_coords(x: torch.Tensor) -> torch.Tensor:
    """``(D, H, W)`` -> ``(4, D, H, W)``: the volume, then each voxel's position per axis in -1..1."""
    axes = [torch.linspace(-1, 1, n, device=x.device, dtype=x.dtype) for n in x.shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([x, *grids])


def _size3(size: torch.Size) -> tuple[int, int, int]:
    """A 3D ``torch.Size`` as a plain tuple of its three sizes."""
    d, h, w = size
    return d, h, w


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Pad a ``(C, D, H, W)`` tensor at the high end of each spatial axis; returns it and the spatial shape."""
    shape = _size3(x.shape[-3:])
    pads = [(-n) % multiple for n in shape]
    if not any(pads):
        return x, shape
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), value=value), shape


def roi_from_mask(mask: np.ndarray, full_shape: tuple[int, ...], spacing: tuple[float, ...],
                  margin_mm: float) -> tuple[slice, ...] | None:
    """Bounding box of a coarse mask, scaled to ``full_shape`` voxels and grown by ``margin_mm``.

    ``spacing`` is the full grid's (mm, same axis order). None if the mask is empty.
    """
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        return None
    roi = []
    for axis, (n_full, s) in enumerate(zip(full_shape, spacing, strict=True)):
        scale = n_full / mask.shape[axis]
        margin = margin_mm / s
        lo = int(np.floor(idx[axis].min() * scale - margin))
        hi = int(np.ceil((idx[axis].max() + 1) * scale + margin))
        roi.append(slice(max(lo, 0), min(hi, n_full)))
    return tuple(roi)


def keep_largest_components(labels: np.ndarray, keep_fraction: float = 1.0) -> np.ndarray:
    """Per organ id, keep its largest 26-connected component and any other of at least ``keep_fraction``
    times its size in voxels; zero the rest (in place; returns ``labels``). 1.0 keeps the largest only
    (and any of exactly equal size)."""
    from scipy import ndimage

    structure = np.ones((3, 3, 3), dtype=bool)
    for organ, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        sub = labels[box]
        comp, n = ndimage.label(sub == organ, structure=structure)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            drop = np.flatnonzero(sizes < keep_fraction * sizes.max())
            sub[np.isin(comp, drop[drop > 0])] = 0
    return labels


def drop_small_components(labels: torch.Tensor, prob: torch.Tensor | None, keep_fraction: float) -> torch.Tensor:
    """:func:`keep_largest_components` on a ``(D, H, W)`` label tensor (returns a new one, same device). With
    the class probabilities ``prob`` ``(C, D, H, W)`` of those labels, the dropped voxels become certain
    background in it too (in place), so that resampling the probabilities cannot bring them back."""
    kept = torch.from_numpy(keep_largest_components(labels.cpu().numpy().copy(), keep_fraction)).to(labels.device)
    if prob is not None:
        dropped = kept != labels
        prob[:, dropped] = 0
        prob[0, dropped] = 1
    return kept


def tile_windows(shape: tuple[int, ...], multiple: int, max_voxels: int, overlap: float, min_size: int,
                 cap: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], list[list[int]]]:
    """Sliding windows over a grid of ``shape`` (each a multiple of ``multiple``): the window size and, per
    axis, its start offsets. Among k = 1..16 windows per axis, each wide enough that neighbours overlap by
    about ``overlap`` of a window and at least ``min_size`` voxels (or the axis) wide for context, picks the
    sizes (multiples of ``multiple``, at most ``cap`` per axis) with at most ``max_voxels`` voxels per window
    that compute the fewest voxels in all (if none fits: the smallest windows); starts are evenly spaced
    multiples of ``multiple`` from 0 to the end, so the windows cover every voxel. E.g. 184 x 136 x 184 under
    160^3 voxels: 2 windows of 184 x 80 x 184 (5.4 M voxels computed) instead of 8 cubes of 128 (16.8 M)."""
    def up(v: float) -> int:  # the next multiple of ``multiple`` (v itself if it is one)
        return -(-math.ceil(v) // multiple) * multiple

    options = []
    for axis, n in enumerate(shape):
        hi = n if cap is None else max(min(n, cap[axis] // multiple * multiple), multiple)
        lo = min(up(min_size), hi)
        sizes: dict[int, int] = {}
        for k in range(1, 17):
            w = min(hi, max(lo, up(n / (1 + (k - 1) * (1 - overlap)))))
            step = max(int(w * (1 - overlap)) // multiple * multiple, multiple)  # the largest gap between starts
            count = 1 if w >= n else max(k, -(-(n - w) // step) + 1)
            sizes.setdefault(w, count)
        options.append(sorted(sizes.items()))
    best = None
    for combo in itertools.product(*options):
        size = math.prod(w for w, _ in combo)
        fits = size <= max_voxels
        cost = (not fits, math.prod(w * k for w, k in combo) if fits else size)
        if best is None or cost < best[0]:
            best = (cost, combo)
    assert best is not None  # product() yields at least one combination: every axis has a size
    win = tuple(w for w, _ in best[1])
    starts = []
    for n, (w, k) in zip(shape, best[1], strict=True):
        units = (n - w) // multiple
        starts.append(sorted({-(-i * units // max(k - 1, 1)) * multiple for i in range(k)}))
    return win, starts


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda if available else cpu; "cuda" without a GPU raises ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available to torch")
    return torch.device(device)


class Predictor:
    """Both networks, loaded once; :meth:`predict` runs one case."""

    def __init__(self, coarse: UNet3D, fine: UNet3D, config: PipelineConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        # torch's stubs lack memory_format on Module.to (torch itself accepts it): hence the ignores
        self.coarse = coarse.to(device, memory_format=MEMORY_FORMAT).eval()  # type: ignore[call-overload]
        self.fine = fine.to(device, memory_format=MEMORY_FORMAT).eval()  # type: ignore[call-overload]

    @classmethod
    def load(cls, weights_dir: str | Path | None = None, device: str = "auto") -> Predictor:
        """Load ``config.json``, ``coarse.pt`` and ``fine.pt`` from ``weights_dir`` (default: shipped)."""
        folder = Path(weights_dir) if weights_dir else WEIGHTS_DIR
        cfg_path = folder / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: no weights config (train with python -m predictor.train)")
        meta = json.loads(cfg_path.read_text())
        nets = []
        for name in ("coarse", "fine"):
            net = UNet3D(UNetConfig(**meta[name]))
            state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
            net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
            nets.append(net)
        coarse, fine = nets
        return cls(coarse, fine, PipelineConfig.from_dict(meta["pipeline"]), resolve_device(device))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _autocast(self) -> torch.autocast:
        """fp16 on a GPU; fp32 on the CPU (bf16 inference was not measured to pay there)."""
        return autocast(self.device, torch.float16 if self.device.type == "cuda" else None)

    def _scores(self, net: UNet3D, x: torch.Tensor, probabilities: bool) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Per-class scores of a normalised ``(D, H, W)`` volume, padded for the network, in the sub-voxel
        layout ``(classes, fz*fy*fx, D', H', W')`` of :meth:`UNet3D.forward_blocks`, and the unpadded shape.
        One pass: logits, or softmax with ``probabilities``; sliding window: the mean softmax either way.
        Scores of ``classes * fz*fy*fx`` values per input voxel are why ``one_pass_voxels`` counts output voxels."""
        x = with_coords(x) if net.config.coords else x[None]
        xp, shape = pad_to_multiple(x, net.config.multiple, value=-1.0)
        if xp[0].numel() * net.config.sub_voxels > self.config.one_pass_voxels:
            return self._sliding_window(net, xp), shape
        with self._autocast():
            scores = net.forward_blocks(xp[None].contiguous(memory_format=MEMORY_FORMAT))[0]
        # outside autocast, which would compute it in fp32: fp16 logits on a GPU give fp16 probabilities
        return (scores.softmax(0) if probabilities else scores), shape

    def _on_output_grid(self, blocks: torch.Tensor, net: UNet3D, shape: tuple[int, ...]) -> torch.Tensor:
        """``(C, fz*fy*fx, D, H, W)`` sub-voxel layout -> ``(C, D*fz, H*fy, W*fx)``, cropped to the unpadded input."""
        out = depth_to_space(blocks[None], net.config.upsample)[0]
        size = upsampled_shape(shape, net.config.upsample)
        return out[:, : size[0], : size[1], : size[2]]

    def _segment(self, net: UNet3D, x: torch.Tensor) -> torch.Tensor:
        """Argmax labels (uint8) of a normalised ``(D, H, W)`` volume: ``(D*fz, H*fy, W*fx)`` for the network's
        ``upsample`` (fz, fy, fx). The argmax is taken in the sub-voxel layout and only the uint8 labels are
        shuffled, so the logits are never copied."""
        scores, shape = self._scores(net, x, probabilities=False)
        return self._on_output_grid(scores.argmax(0).to(torch.uint8)[None], net, shape)[0]

    def _probabilities(self, net: UNet3D, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(classes, D*fz, H*fy, W*fx)`` of a normalised ``(D, H, W)`` volume (fp16 on a GPU)."""
        scores, shape = self._scores(net, x, probabilities=True)
        return self._on_output_grid(scores, net, shape)

    @property
    def _prob_dtype(self) -> torch.dtype:
        return torch.float16 if self.device.type == "cuda" else torch.float32

    def _sliding_window(self, net: UNet3D, x: torch.Tensor) -> torch.Tensor:
        """Mean softmax over overlapping windows of a ``(C, D, H, W)`` input (sizes multiples of the stride),
        in the sub-voxel layout ``(classes, fz*fy*fx, D, H, W)`` of :meth:`UNet3D.forward_blocks`."""
        spatial = x.shape[1:]
        win, starts = tile_windows(tuple(spatial), net.config.multiple,
                                   self.config.one_pass_voxels // net.config.sub_voxels, self.config.overlap,
                                   self.config.min_window, self.config.window)
        prob = torch.zeros((net.config.classes, net.config.sub_voxels, *spatial), device=x.device,
                           dtype=self._prob_dtype)
        count = torch.zeros(spatial, device=x.device, dtype=self._prob_dtype)
        for z in starts[0]:
            for y in starts[1]:
                for xx in starts[2]:
                    sl = (slice(z, z + win[0]), slice(y, y + win[1]), slice(xx, xx + win[2]))
                    window = x[(slice(None), *sl)][None].contiguous(memory_format=MEMORY_FORMAT)
                    with self._autocast():
                        p = net.forward_blocks(window)[0].float().softmax(0)
                    prob[(slice(None), slice(None), *sl)] += p.to(prob.dtype)
                    count[sl] += 1
        return prob.div_(count)

    def _fine_stage(self, crop: torch.Tensor, spacing: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels of the ROI ``crop`` (canonical, normalised; ``spacing`` mm) on the fine grid of the first of
        ``fine_scales``, and their class probabilities (None with ``resample="nearest"``). Several scales:
        each one's probabilities are resized trilinearly onto that grid and averaged."""
        cfg = self.config
        inputs = (resize_image(crop, size_for_spacing(tuple(crop.shape), spacing, (cfg.fine_mm * s,) * 3)).float()
                  for s in cfg.fine_scales)  # one at a time: each scale's input lives only for its pass
        if cfg.resample == "nearest" and len(cfg.fine_scales) == 1:
            return self._segment(self.fine, next(inputs)), None
        prob = self._probabilities(self.fine, next(inputs))
        for x in inputs:
            prob += resize_image(self._probabilities(self.fine, x), _size3(prob.shape[1:]))
        prob /= len(cfg.fine_scales)
        return prob.argmax(0).to(torch.uint8), prob if cfg.resample == "probabilities" else None

    @torch.inference_mode()
    def predict(self, image: np.ndarray, spacing_kji: tuple[float, float, float],
                direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> tuple[np.ndarray, Timings]:
        """Segment one CT (see the module docstring for the contract). Returns (labels, timings)."""
        if image.ndim != 3:
            raise ValueError(f"expected a 3D (k, j, i) array, got shape {image.shape}")
        if image.dtype.kind == "u" and image.dtype.itemsize > 1 or image.dtype == np.float64:
            image = image.astype(np.float32)  # torch lacks fast uint16/uint32 kernels; float64 doubles memory
        cfg, t = self.config, Timings()
        clock = time.perf_counter()
        reo = Reorientation.from_direction(direction)
        spacing = reo.spacing(spacing_kji)
        vol = reo.forward(torch.from_numpy(np.ascontiguousarray(image)).to(self.device))
        vol = normalise(vol, cfg.hu_window)
        if self.device.type == "cuda":
            vol = vol.half()  # halves the memory of the full-resolution volume
        full_shape = tuple(vol.shape)

        coarse_size = size_for_spacing(full_shape, spacing, (cfg.coarse_mm,) * 3)
        coarse = self._segment(self.coarse, resize_image(vol, coarse_size).float())
        roi = roi_from_mask((coarse > 0).cpu().numpy(), full_shape, spacing, cfg.margin_mm)
        self._sync()
        t.stage1 = time.perf_counter() - clock
        out = torch.zeros(full_shape, dtype=torch.uint8, device=self.device)
        if roi is None:
            return np.ascontiguousarray(reo.inverse(out).cpu().numpy()), t

        clock = time.perf_counter()
        crop = vol[roi]
        fine, prob = self._fine_stage(crop, spacing)
        t.roi_fine_shape = tuple(fine.shape)
        if cfg.keep_largest:
            fine = drop_small_components(fine, prob, cfg.keep_fraction)
        self._sync()
        t.stage2 = time.perf_counter() - clock

        clock = time.perf_counter()
        size = _size3(crop.shape)
        out[roi] = resize_labels(fine, size) if prob is None else resize_probabilities(prob, size)
        labels = np.ascontiguousarray(reo.inverse(out).cpu().numpy())
        t.resample = time.perf_counter() - clock
        return labels, t


def set_cpu_threads(threads: int | None = None) -> int:
    """Use ``threads`` (default env FLARE_THREADS, else torch's default) intra-op CPU threads."""
    threads = threads or int(os.environ.get("FLARE_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def pipeline_dict(config: PipelineConfig) -> dict:
    return asdict(config)
