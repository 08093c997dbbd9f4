"""Train the two U-Nets of the predictor on labelled CT (phantoms) and export deployable weights.

Data flow: validate (every image has a label on the same grid, labels in 0..13) -> precompute, once,
each case's canonical arrays at the coarse spacing (whole volume, organ/background target) and at the
fine spacing (the organs' bounding box plus a margin, 14-class target) -> train each network on
random patches, most centred on an organ drawn uniformly among those present, with random contrast,
brightness, gamma and noise (CE + soft Dice, AdamW, one-cycle schedule, NDHWC memory format) -> export
RUN_DIR/weights/{config.json, coarse.pt, fine.pt} (fp16 state dicts), which
``python -m predictor --weights RUN_DIR/weights`` loads.
Reproducible from --seed on the same device and thread count.

Semi-supervised training (pseudo-labels from unlabeled scans, filtered, iterated, optionally distilled
from a big teacher): ``--unlabeled DIR --rounds K --keep F --teacher big|small``, see predictor/semi.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from challenge.cases import list_images, list_labels
from challenge.labels import MAX_LABEL, NUM_CLASSES
from challenge.nifti import NiftiError, read_geometry, read_image

from .network import UNet3D, UNetConfig, space_to_depth, upsampled_shape
from .orientation import Reorientation
from .pipeline import (
    CONFIG_NAME,
    MEMORY_FORMAT,
    PipelineConfig,
    autocast,
    normalise,
    resolve_device,
    set_cpu_threads,
    with_coords,
)
from .resample import resize_image, resize_labels, size_for_spacing

log = logging.getLogger("predictor.train")

EPOCHS = 95  # the shipped weights' budget: <= 30 min on 2 CPU cores with bf16

SHIPPED_COMMAND = """\
  # the shipped weights (predictor/weights/), on 2 CPU cores:
  python -m phantoms --out /work/data/train --cases 48 --seed 1000 --shape 192 192 96 --domain mixed
  python -m predictor.train --images /work/data/train/images --labels /work/data/train/labels \\
      --out /work/data/run --epochs 95 --seed 0 --threads 2 --device cpu
  cp /work/data/run/weights/* predictor/weights/"""


@dataclass(frozen=True)
class NetTraining:
    """One network's training: ``steps_per_epoch`` steps of ``batch`` patches of ``patch`` voxels."""

    unet: UNetConfig
    patch: tuple[int, int, int]  # canonical (S-I, A-P, R-L) voxels: widest across, to see both kidneys
    batch: int
    steps_per_epoch: int
    lr: float = 3e-3
    foreground_fraction: float = 0.7  # share of patches centred on an organ (class-balanced)
    # cross-entropy weight of organ c: (median organ voxel count / count of c) ** power, clipped to
    # [1, 8]; 0 = unweighted. The adrenals are ~0.1 % of the foreground: unweighted, CE teaches "liver"
    ce_weight_power: float = 0.0
    precision: str = "auto"  # see autocast_dtype


@dataclass(frozen=True)
class TrainConfig:
    pipeline: PipelineConfig = PipelineConfig()
    coarse: NetTraining = NetTraining(UNetConfig(classes=2, base=8, levels=3), (32, 48, 48), 2, 20)
    # 96 x 112 x 160 mm patches at 2 mm, 90 epochs; 40 x 56 x 72 at 110 epochs (same training time) scored
    # mean DSC 0.918 against 0.921 on 8 seed-3000 validation phantoms, 0.929 both on the seed-2000 ones
    fine: NetTraining = NetTraining(UNetConfig(classes=NUM_CLASSES, base=16, levels=4, coords=True),
                                    (48, 56, 80), 2, 50, ce_weight_power=0.5)
    roi_margin_mm: float = 15.0  # fine training arrays: organs' box grown by this (= the inference ROI margin)
    # scale augmentation: each case's fine arrays at fine_mm times each factor, patches drawn from all
    fine_scale_aug: tuple[float, ...] = (1.0,)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The defaults, with the command line's ``--fine-mm``, ``--fine-scale-aug``, ``--fine-upsample``,
    ``--precision`` and ``--ce-weight-power``."""
    cfg = TrainConfig(pipeline=replace(PipelineConfig(), fine_mm=args.fine_mm),
                      fine_scale_aug=tuple(args.fine_scale_aug))
    unet = replace(cfg.fine.unet, upsample=tuple(args.fine_upsample))
    return replace(cfg, coarse=replace(cfg.coarse, precision=args.precision),
                   fine=replace(cfg.fine, unet=unet, precision=args.precision, ce_weight_power=args.ce_weight_power))


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of the forward pass, or None for plain fp32.

    ``auto``: fp16 on CUDA (with a gradient scaler); bf16 on a CPU that computes it natively
    (AVX512-BF16 or AMX, as oneDNN reports), where a fine training step is 1.8x faster than in fp32
    (``benchmarks/train_step_bench.py``, 2 threads); fp32 elsewhere. ``fp32``: never autocast.
    """
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def class_weights(labels: list[np.ndarray], classes: int, power: float) -> torch.Tensor | None:
    """Cross-entropy weights from the voxel counts of ``labels``: organ c gets
    ``clip((median organ count / count_c) ** power, 1, 8)``; background and absent classes get 1.
    None when ``power`` is 0."""
    if power <= 0:
        return None
    counts = sum(np.bincount(y.ravel(), minlength=classes)[:classes] for y in labels).astype(np.float64)
    present = np.flatnonzero(counts[1:]) + 1
    weights = np.ones(classes)
    if len(present):
        weights[present] = np.clip((np.median(counts[present]) / counts[present]) ** power, 1.0, 8.0)
    return torch.tensor(weights, dtype=torch.float32)


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


@dataclass
class Case:
    """Canonical training arrays: coarse (whole volume, ``(1, D, H, W)``) and fine (organ box,
    ``(4, D, H, W)`` with coordinate channels, one (image, labels) pair per ``fine_scale_aug`` spacing),
    float16 image; uint8 labels ``(D, H, W)``, the fine ones on the fine network's output grid
    ``(D*fz, H*fy, W*fx)`` (its ``upsample``)."""

    name: str
    coarse_x: np.ndarray
    coarse_y: np.ndarray
    fine: list[tuple[np.ndarray, np.ndarray]]


def fine_data(cases: list[Case], weights: np.ndarray | None = None
              ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray | None]:
    """The fine network's training pairs, every scale of every case, and each pair's draw probability:
    a case's weight (None: all cases equally likely) shared among its scales."""
    data = [pair for c in cases for pair in c.fine]
    if weights is None:
        return data, None
    return data, np.concatenate([np.full(len(c.fine), w / len(c.fine)) for c, w in zip(cases, weights, strict=True)])


def precompute(case: str, image_path: Path, label_path: Path, cfg: TrainConfig) -> Case:
    image, geo = read_image(image_path)
    labels, _ = read_image(label_path)
    if labels.min() < 0 or labels.max() > MAX_LABEL or not np.all(np.equal(np.mod(labels, 1), 0)):
        raise DataError(f"{label_path}: label values outside the integers 0..{MAX_LABEL}")
    reo = Reorientation.from_direction(geo.direction)
    spacing = reo.spacing(geo.spacing_kji)
    x = normalise(reo.forward(torch.from_numpy(image.astype(np.float32))), cfg.pipeline.hu_window)
    y = reo.forward(torch.from_numpy(labels.astype(np.uint8)))
    p = cfg.pipeline
    size = size_for_spacing(tuple(x.shape), spacing, (p.coarse_mm,) * 3)
    coarse_x, coarse_y = resize_image(x, size), (resize_labels(y, size) > 0).to(torch.uint8)
    nz = torch.nonzero(y)
    if len(nz) == 0:
        raise DataError(f"{label_path}: no organ voxels")
    lo = [max(int(nz[:, a].min() - cfg.roi_margin_mm / spacing[a]), 0) for a in range(3)]
    hi = [min(int(nz[:, a].max() + 1 + cfg.roi_margin_mm / spacing[a]), x.shape[a]) for a in range(3)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    x_box, y_box = x[box].contiguous(), y[box].contiguous()
    fine = []
    for scale in cfg.fine_scale_aug:
        fine_size = size_for_spacing(tuple(x_box.shape), spacing, (p.fine_mm * scale,) * 3)
        label_size = upsampled_shape(fine_size, cfg.fine.unet.upsample)
        fine.append((with_coords(resize_image(x_box, fine_size)).half().numpy(),
                     resize_labels(y_box, label_size).numpy()))
    return Case(case, coarse_x[None].half().numpy(), coarse_y.numpy(), fine)


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
                 rng: np.random.Generator, upsample: tuple[int, int, int] = (1, 1, 1),
                 organs: dict[int, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
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


def _batch(data: list[tuple[np.ndarray, np.ndarray]], organs: list[dict[int, np.ndarray]], spec: NetTraining,
           rng: np.random.Generator, weights: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for _ in range(spec.batch):
        i = rng.integers(len(data)) if weights is None else rng.choice(len(data), p=weights)
        x, y = data[i]
        px, py = sample_patch(x, y, spec.patch, spec.foreground_fraction, rng, spec.unet.upsample, organs[i])
        px = px.astype(np.float32)
        px[0] = augment_intensity(px[0], rng)  # channel 0 is intensity; the rest are coordinates
        xs.append(px)
        ys.append(py.astype(np.int64))
    # targets in the network's sub-voxel layout (forward_blocks), so the loss needs no shuffled logits
    return torch.from_numpy(np.stack(xs)), space_to_depth(torch.from_numpy(np.stack(ys)), spec.unet.upsample)


class _Prefetch:
    """Draw batches ``first..total-1`` in a background thread (numpy and torch release the GIL), in the
    order and with the ``rng`` draws a plain loop would make. Each item carries the rng state after its
    draws, so a checkpoint can record where the next batch starts."""

    def __init__(self, draw: Callable[[], tuple[torch.Tensor, torch.Tensor]], rng: np.random.Generator,
                 count: int, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

        def put(item: object) -> bool:
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for _ in range(count):
                    if not put((*draw(), rng.bit_generator.state)):
                        return
            except BaseException as err:  # noqa: BLE001 - re-raised in the training thread
                put(err)

        self._thread = threading.Thread(target=work, daemon=True, name="batches")
        self._thread.start()

    def next(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _save_checkpoint(path: Path, state: dict) -> None:
    """Atomic torch.save (temporary name, then rename): a kill mid-write leaves the previous epoch's."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_net(name: str, data: list[tuple[np.ndarray, np.ndarray]], spec: NetTraining, epochs: int,
              rng: np.random.Generator, device: torch.device, log_rows: list[dict],
              checkpoint: Path | None = None, progress: bool = False, weights: np.ndarray | None = None,
              init: Path | None = None) -> UNet3D:
    """Train one network for ``epochs`` epochs of ``spec.steps_per_epoch`` steps.

    ``weights``: probability of drawing each (image, labels) pair of ``data`` for a patch (None: all equally
    likely); with scale augmentation a case has one pair per scale (``fine_data``).
    ``init``: an exported state dict (e.g. the previous round's ``fine.pt``) to start from instead of a
    random initialisation; a checkpoint, when resuming, takes precedence.

    ``checkpoint``: after each epoch the network, optimiser, schedule, ``rng`` state and log rows are saved
    there; if the file exists training resumes after its last epoch (and ``rng`` continues from its saved
    state), so an interruption loses at most the current epoch. Mixed precision (fp16 autocast with a
    gradient scaler) on CUDA, bf16 autocast on a CPU with native bf16 (``spec.precision``, see
    autocast_dtype). ``progress``: a tqdm bar with an ETA.
    """
    net = UNet3D(spec.unet)
    if init is not None:
        state = torch.load(init, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    net = net.to(device, memory_format=MEMORY_FORMAT).train()
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=1e-4)
    total = epochs * spec.steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=total, pct_start=0.1)
    numerics = _Numerics.for_training(name, [y for _, y in data], spec, device)
    scaler = numerics.scaler
    first, elapsed = 0, 0.0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        scaler.load_state_dict(state["scaler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        first, elapsed = state["epoch"] * spec.steps_per_epoch, state["seconds"]
        log_rows.extend(state["rows"])
        log.info("%s: resumed from %s after epoch %d", name, checkpoint, state["epoch"])
    own_rows = [r for r in log_rows if r["net"] == name]
    clock = time.perf_counter() - elapsed
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=first, desc=name, unit="step", leave=False)
    organs = [organ_voxels(y) for _, y in data]
    batches = _Prefetch(lambda: _batch(data, organs, spec, rng, weights), rng, total - first)
    try:
        _train_steps(net, opt, sched, numerics, batches, range(first, total), name, spec, device, clock,
                     log_rows, own_rows, checkpoint, bar)
    finally:
        batches.close()
        if bar is not None:
            bar.close()
    return net.eval()


@dataclass
class _Numerics:
    """How a step computes: autocast dtype (None: fp32), the fp16 gradient scaler, CE class weights."""

    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    ce_weights: torch.Tensor | None

    @classmethod
    def for_training(cls, name: str, labels: list[np.ndarray], spec: NetTraining, device: torch.device
                     ) -> _Numerics:
        dtype = autocast_dtype(device, spec.precision)
        weights = class_weights(labels, spec.unet.classes, spec.ce_weight_power)
        if weights is not None:
            log.info("%s: cross-entropy class weights %s", name, np.round(weights.numpy(), 2).tolist())
            weights = weights.to(device)
        log.info("%s: autocast %s", name, dtype or "off (fp32)")
        return cls(dtype, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16), weights)


def _train_steps(net: UNet3D, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                 numerics: _Numerics, batches: _Prefetch, steps: range, name: str, spec: NetTraining,
                 device: torch.device, clock: float, log_rows: list[dict], own_rows: list[dict],
                 checkpoint: Path | None, bar) -> None:
    total, scaler = steps.stop, numerics.scaler
    for step in steps:
        x, y, rng_state = batches.next()
        x = x.to(device, non_blocking=True).contiguous(memory_format=MEMORY_FORMAT)
        y = y.to(device, non_blocking=True)
        with autocast(device, numerics.dtype):
            logits = net.forward_blocks(x)
        loss = dice_ce_loss(logits, y, numerics.ce_weights)  # the loss computes in fp32
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if step % spec.steps_per_epoch == spec.steps_per_epoch - 1 or step == total - 1:
            row = {"net": name, "step": step + 1, "loss": round(loss.item(), 4),
                   "seconds": round(time.perf_counter() - clock, 1)}
            log_rows.append(row)
            own_rows.append(row)
            log.info("%s step %d/%d loss %.4f (%.0f s)", name, step + 1, total, row["loss"], row["seconds"])
            if checkpoint is not None:
                _save_checkpoint(checkpoint, {
                    "net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rng_state,
                    "torch_rng": torch.get_rng_state(), "epoch": (step + 1) // spec.steps_per_epoch,
                    "seconds": time.perf_counter() - clock, "rows": own_rows})


def export(nets: dict[str, UNet3D], cfg: TrainConfig, out: Path, meta: dict) -> Path:
    """Write ``out/weights/``: fp16 state dicts and config.json (what Predictor.load reads)."""
    folder = out / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    for name, net in nets.items():
        state = {k: v.detach().cpu().half() if v.is_floating_point() else v.cpu()
                 for k, v in net.state_dict().items()}
        torch.save(state, folder / f"{name}.pt")
    config = {"pipeline": asdict(cfg.pipeline), "coarse": cfg.coarse.unet.to_dict(),
              "fine": cfg.fine.unet.to_dict(), "training": meta}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m predictor.train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the coarse (ROI) and fine (13-organ) 3D U-Nets and export RUN_DIR/weights/.",
        epilog="Examples:\n" + SHIPPED_COMMAND + "\n\n  # a quick smoke run:\n"
               "  python -m predictor.train --images d/images --labels d/labels --out /tmp/run --epochs 1\n\n"
               "  # semi-supervised: 3 pseudo-label rounds on unlabeled scans, keep the 90 % most stable;\n"
               "  # rerun the same command to resume (RUN_DIR layout: predictor/semi.py)\n"
               "  python -m predictor.train --images d/images --labels d/labels --unlabeled u/images \\\n"
               "      --out /tmp/semi --rounds 3 --keep 0.9 [--teacher big]\n\n"
               "Use the result: python -m predictor -i IN -o OUT --weights RUN_DIR/weights")
    p.add_argument("--images", type=Path, required=True, help="folder of <Case>_0000.nii.gz")
    p.add_argument("--labels", type=Path, required=True, help="folder of <Case>.nii.gz on the same grids")
    p.add_argument("--out", type=Path, required=True, help="run folder (weights/ and train_log.csv)")
    p.add_argument("--epochs", type=int, default=EPOCHS,
                   help=f"fine-network epochs of 50 steps (default {EPOCHS}; the coarse network gets a third)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("--precision", choices=("auto", "fp32"), default="auto",
                   help="auto (default): fp16 autocast on CUDA, bf16 on a CPU with native bf16 (AVX512-BF16/AMX), "
                        "else fp32; fp32: never autocast")
    p.add_argument("--ce-weight-power", type=float, default=TrainConfig.fine.ce_weight_power,
                   help="fine network: organ c's cross-entropy weight is (median organ size / size of c) to this "
                        f"power, clipped to [1, 8] (default {TrainConfig.fine.ce_weight_power:g}; 0: unweighted)")
    p.add_argument("--fine-mm", type=float, default=PipelineConfig.fine_mm,
                   help="isotropic spacing (mm) of the fine stage, in training and in the exported config "
                        f"(default {PipelineConfig.fine_mm:g}; 3 suits ~3 mm scans)")
    p.add_argument("--fine-scale-aug", type=float, nargs="+", default=TrainConfig.fine_scale_aug, metavar="S",
                   help="scale augmentation: the fine network trains on each case resampled to --fine-mm times "
                        "each S (e.g. 0.9 1 1.1), patches drawn from all (default: 1, none)")
    p.add_argument("--fine-upsample", type=int, nargs=3, default=TrainConfig.fine.unet.upsample,
                   metavar=("FZ", "FY", "FX"),
                   help="fine network: output sub-voxels per input voxel along S-I, A-P, R-L, so labels come "
                        "on a finer grid than --fine-mm (e.g. 1 2 2: 2 x 1 x 1 mm); the labels must be that "
                        f"fine (default {' '.join(map(str, TrainConfig.fine.unet.upsample))})")
    semi = p.add_argument_group(
        "semi-supervised (only with --unlabeled; see predictor/semi.py for the RUN_DIR layout)")
    semi.add_argument("--unlabeled", type=Path, help="folder of unlabeled <Case>_0000.nii.gz to pseudo-label")
    semi.add_argument("--rounds", type=int, default=3,
                      help="pseudo-label rounds after round 0 (labeled only); default 3")
    semi.add_argument("--keep", type=float, default=0.9,
                      help="fraction of pseudo-labeled cases kept per round, most stable first (default 0.9)")
    semi.add_argument("--teacher", choices=("small", "big"), default="small",
                      help="big: a wider teacher makes the pseudo-labels, the small model is distilled from them")
    semi.add_argument("--labeled-share", type=float, default=0.0,
                      help="share of the patches drawn from the labeled scans in rounds >= 1, so that a few "
                           "labeled scans are not swamped by many pseudo-labeled ones (default 0: every scan "
                           "equally likely)")
    semi.add_argument("--warm-start", action="store_true",
                      help="round k >= 1 starts from round k-1's weights instead of a random initialisation")
    semi.add_argument("--steps-per-epoch", type=int, default=0,
                      help="override both networks' steps per epoch (smoke tests; default: 20 coarse, 50 fine)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.ce_weight_power < 0:
        p.error("--ce-weight-power must be >= 0")
    if not 0.5 <= args.fine_mm <= 8.0:
        p.error("--fine-mm must be in [0.5, 8] mm")
    if not all(0.5 <= f <= 2.0 and 0.5 <= f * args.fine_mm <= 8.0 for f in args.fine_scale_aug):
        p.error("--fine-scale-aug factors must be in [0.5, 2], and --fine-mm times each in [0.5, 8] mm")
    if len(set(args.fine_scale_aug)) != len(args.fine_scale_aug):
        p.error("--fine-scale-aug: each factor once")
    if not all(1 <= f <= 4 for f in args.fine_upsample):
        p.error("--fine-upsample factors must be in 1..4")
    if args.unlabeled is not None:
        if args.rounds < 0:
            p.error("--rounds must be >= 0")
        if not 0.0 < args.keep <= 1.0:
            p.error("--keep must be in (0, 1]")
        if args.steps_per_epoch < 0:
            p.error("--steps-per-epoch must be >= 0")
        if not 0.0 <= args.labeled_share < 1.0:
            p.error("--labeled-share must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threads = set_cpu_threads(args.threads)
    if args.unlabeled is not None:
        from .semi import run_semi

        return run_semi(args, argv if argv is not None else sys.argv[1:], device, threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cfg = train_config(args)
    start = time.perf_counter()
    try:
        pairs = validate(args.images, args.labels)
        cases = [precompute(c, i, lab, cfg) for c, i, lab in pairs]
    except (DataError, NiftiError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    log.info("precomputed %d cases in %.0f s (%d threads, %s)", len(cases), time.perf_counter() - start,
             threads, device)
    rows: list[dict] = []
    nets = {
        "coarse": train_net("coarse", [(c.coarse_x, c.coarse_y) for c in cases], cfg.coarse,
                            max(args.epochs // 3, 1), rng, device, rows),
        "fine": train_net("fine", fine_data(cases)[0], cfg.fine, args.epochs, rng, device, rows),
    }
    meta = {"command": " ".join(["python -m predictor.train", *(argv if argv is not None else sys.argv[1:])]),
            "cases": len(cases), "epochs": args.epochs, "seed": args.seed, "device": str(device),
            "threads": threads, "autocast": str(autocast_dtype(device, args.precision) or "off"),
            "seconds": round(time.perf_counter() - start, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "train_log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["net", "step", "loss", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    folder = export(nets, cfg, args.out, meta)
    log.info("exported %s in %.0f s total", folder, meta["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
