"""Training one network (:func:`train_net`: AdamW, one-cycle schedule, mixed precision, batches drawn in a
background thread, per-epoch checkpoints that resume exactly), exporting deployable weights
(:func:`export`), and the plain supervised run (:func:`train`). Every file is written through
``challenge.files``' atomic writer (torch state dicts through :func:`save_torch`)."""

from __future__ import annotations

import csv
import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from challenge.files import atomic_path, atomic_write, atomic_write_text

from ..network import UNet3D
from ..pipeline import CONFIG_NAME, MEMORY_FORMAT, autocast
from .config import NetTraining, RunConfig, TrainConfig
from .data import Pair, draw_batch, fine_data, load_cases, organ_voxels
from .loss import class_weights, dice_ce_loss

log = logging.getLogger(__name__)

LOG_FIELDS = ["net", "step", "loss", "seconds"]


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


def save_torch(obj: object, path: Path) -> Path:
    """``torch.save(obj, path)`` through the atomic writer, with the very bytes a direct save would write.

    torch names the records inside its zip after the file's stem (``fine/data.pkl``), so saving straight
    to ``atomic_path``'s temporary name would put that random name into the file. Instead the object is
    saved under ``path``'s own name in a private temporary folder beside it, moved onto the temporary
    name and renamed to ``path`` by ``atomic_path``: the same state gives the same bytes, and a kill
    mid-write leaves the previous file.
    """
    path = Path(path)
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=tmp.parent) as folder:
        staged = Path(folder) / path.name
        torch.save(obj, staged)
        os.replace(staged, tmp)
    return path


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> Path:
    """``rows`` under a header of ``fields``, written atomically."""
    def write(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    return atomic_write(path, write)


@dataclass(frozen=True, eq=False)
class NetRun:
    """One network's training: ``epochs`` epochs of ``spec.steps_per_epoch`` steps on ``data``.

    ``weights``: probability of drawing each (image, labels) pair of ``data`` for a patch (None: all equally
    likely); with scale augmentation a case has one pair per scale (``fine_data``).
    ``init``: an exported state dict (e.g. the previous round's ``fine.pt``) to start from instead of a
    random initialisation; a checkpoint, when resuming, takes precedence.
    ``checkpoint``: where the per-epoch checkpoint goes (None: none), see :func:`train_net`.
    """

    name: str
    data: list[Pair]
    spec: NetTraining
    epochs: int
    _: KW_ONLY
    weights: np.ndarray | None = None
    init: Path | None = None
    checkpoint: Path | None = None


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
    save_torch(state, path)


@dataclass(eq=False, kw_only=True)
class _Steps:
    """One network's training state: what a step updates and what the end of an epoch records."""

    run: NetRun
    device: torch.device
    net: UNet3D
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    numerics: _Numerics
    log_rows: list[dict]
    own_rows: list[dict] = field(default_factory=list)
    clock: float = 0.0
    bar: Any = None  # a tqdm bar, or None

    @property
    def total(self) -> int:
        return self.run.epochs * self.run.spec.steps_per_epoch

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimisation step on a batch; returns the loss."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=MEMORY_FORMAT)
        y = y.to(self.device, non_blocking=True)
        with autocast(self.device, self.numerics.dtype):
            logits = self.net.forward_blocks(x)
        loss = dice_ce_loss(logits, y, self.numerics.ce_weights)  # the loss computes in fp32
        self.opt.zero_grad(set_to_none=True)
        self.numerics.scaler.scale(loss).backward()
        self.numerics.scaler.step(self.opt)
        self.numerics.scaler.update()
        self.sched.step()
        return loss

    def record(self, step: int, loss: torch.Tensor, rng_state: dict) -> None:
        """The end of an epoch (or of training) after ``step``: a log row, and the checkpoint if any."""
        row = {"net": self.run.name, "step": step + 1, "loss": round(loss.item(), 4),
               "seconds": round(time.perf_counter() - self.clock, 1)}
        self.log_rows.append(row)
        self.own_rows.append(row)
        log.info("%s step %d/%d loss %.4f (%.0f s)", self.run.name, step + 1, self.total, row["loss"], row["seconds"])
        if self.run.checkpoint is not None:
            _save_checkpoint(self.run.checkpoint, {
                "net": self.net.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "scaler": self.numerics.scaler.state_dict(), "rng": rng_state,
                "torch_rng": torch.get_rng_state(), "epoch": (step + 1) // self.run.spec.steps_per_epoch,
                "seconds": time.perf_counter() - self.clock, "rows": self.own_rows})


def train_net(run: NetRun, rng: np.random.Generator, device: torch.device, *, log_rows: list[dict],
              progress: bool = False) -> UNet3D:
    """Train one network for ``run.epochs`` epochs of ``run.spec.steps_per_epoch`` steps (see :class:`NetRun`
    for its data, draw weights and initial weights); append a row per epoch to ``log_rows``.

    ``run.checkpoint``: after each epoch the network, optimiser, schedule, ``rng`` state and log rows are
    saved there; if the file exists training resumes after its last epoch (and ``rng`` continues from its
    saved state), so an interruption loses at most the current epoch. Mixed precision (fp16 autocast with
    a gradient scaler) on CUDA, bf16 autocast on a CPU with native bf16 (``spec.precision``, see
    autocast_dtype). ``progress``: a tqdm bar with an ETA.
    """
    steps = _setup(run, device, log_rows)
    first = _resume(steps, rng)
    if progress:
        from tqdm import tqdm

        steps.bar = tqdm(total=steps.total, initial=first, desc=run.name, unit="step", leave=False)
    organs = [organ_voxels(y) for _, y in run.data]
    batches = _Prefetch(lambda: draw_batch(run.data, organs, run.spec, rng, weights=run.weights), rng,
                        steps.total - first)
    try:
        _train_steps(steps, batches, range(first, steps.total))
    finally:
        batches.close()
        if steps.bar is not None:
            steps.bar.close()
    return steps.net.eval()


def _setup(run: NetRun, device: torch.device, log_rows: list[dict]) -> _Steps:
    """The network (random, or ``run.init``), AdamW and the one-cycle schedule, in this order (torch's rng)."""
    net = UNet3D(run.spec.unet)
    if run.init is not None:
        state = torch.load(run.init, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    # torch's stubs lack memory_format on Module.to (torch itself accepts it)
    net = net.to(device, memory_format=MEMORY_FORMAT).train()  # type: ignore[call-overload]
    opt = torch.optim.AdamW(net.parameters(), lr=run.spec.lr, weight_decay=1e-4)
    total = run.epochs * run.spec.steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=run.spec.lr, total_steps=total, pct_start=0.1)
    numerics = _Numerics.for_training(run.name, [y for _, y in run.data], run.spec, device)
    return _Steps(run=run, device=device, net=net, opt=opt, sched=sched, numerics=numerics, log_rows=log_rows)


def _resume(steps: _Steps, rng: np.random.Generator) -> int:
    """Load ``run.checkpoint`` if it exists (restoring ``rng`` and torch's rng); the first step to train."""
    run, first, elapsed = steps.run, 0, 0.0
    if run.checkpoint is not None and run.checkpoint.is_file():
        state = torch.load(run.checkpoint, map_location=steps.device, weights_only=False)
        steps.net.load_state_dict(state["net"])
        steps.opt.load_state_dict(state["opt"])
        steps.sched.load_state_dict(state["sched"])
        steps.numerics.scaler.load_state_dict(state["scaler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        first, elapsed = state["epoch"] * run.spec.steps_per_epoch, state["seconds"]
        steps.log_rows.extend(state["rows"])
        log.info("%s: resumed from %s after epoch %d", run.name, run.checkpoint, state["epoch"])
    steps.own_rows = [r for r in steps.log_rows if r["net"] == run.name]
    steps.clock = time.perf_counter() - elapsed
    return first


def _train_steps(steps: _Steps, batches: _Prefetch, todo: range) -> None:
    per_epoch = steps.run.spec.steps_per_epoch
    for step in todo:
        x, y, rng_state = batches.next()
        loss = steps.step(x, y)
        if steps.bar is not None:
            steps.bar.update(1)
            steps.bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if step % per_epoch == per_epoch - 1 or step == todo.stop - 1:
            steps.record(step, loss, rng_state)


def export(nets: dict[str, UNet3D], cfg: TrainConfig, out: Path, meta: dict) -> Path:
    """Write ``out/weights/``: fp16 state dicts and config.json (what Predictor.load reads)."""
    folder = out / "weights"
    for name, net in nets.items():
        state = {k: v.detach().cpu().half() if v.is_floating_point() else v.cpu()
                 for k, v in net.state_dict().items()}
        save_torch(state, folder / f"{name}.pt")
    config = {"pipeline": asdict(cfg.pipeline), "coarse": cfg.coarse.unet.to_dict(),
              "fine": cfg.fine.unet.to_dict(), "training": meta}
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return folder


def train(cfg: TrainConfig, run: RunConfig, *, device: torch.device, threads: int) -> Path:
    """Plain supervised training: validate and precompute every case (DataError naming the first bad file,
    before anything is written), train the coarse network for ``max(run.epochs // 3, 1)`` epochs, then the
    fine one for ``run.epochs``, from ``run.seed`` (numpy and torch); write ``run.out/train_log.csv`` and
    export ``run.out/weights/`` (returned). No checkpoints: an interrupted run starts over."""
    torch.manual_seed(run.seed)
    rng = np.random.default_rng(run.seed)
    start = time.perf_counter()
    cases = load_cases(run.images, run.labels, cfg)
    log.info("precomputed %d cases in %.0f s (%d threads, %s)", len(cases), time.perf_counter() - start,
             threads, device)
    rows: list[dict] = []
    coarse = NetRun("coarse", [(c.coarse_x, c.coarse_y) for c in cases], cfg.coarse, max(run.epochs // 3, 1))
    nets = {"coarse": train_net(coarse, rng, device, log_rows=rows),
            "fine": train_net(NetRun("fine", fine_data(cases)[0], cfg.fine, run.epochs), rng, device, log_rows=rows)}
    meta = {"command": run.command, "cases": len(cases), "epochs": run.epochs, "seed": run.seed,
            "device": str(device), "threads": threads,
            "autocast": str(autocast_dtype(device, cfg.fine.precision) or "off"),
            "seconds": round(time.perf_counter() - start, 1)}
    write_csv(run.out / "train_log.csv", LOG_FIELDS, rows)
    folder = export(nets, cfg, run.out, meta)
    log.info("exported %s in %.0f s total", folder, meta["seconds"])
    return folder
