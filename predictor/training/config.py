"""What a training run is: the networks' hyperparameters (:class:`TrainConfig`), the run's inputs, output and
seed (:class:`RunConfig`) and the semi-supervised settings (:class:`SemiConfig`). Plain dataclasses, built
once by the command line (``predictor.training.cli``) or by a caller; the library never sees argparse."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path

from challenge.labels import NUM_CLASSES

from ..network import UNetConfig
from ..pipeline import PipelineConfig

EPOCHS = 95  # the shipped weights' budget: <= 30 min on 2 CPU cores with bf16


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
    precision: str = "auto"  # see predictor.training.loop.autocast_dtype


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


def train_config(*, fine_mm: float = PipelineConfig.fine_mm, fine_scale_aug: tuple[float, ...] = (1.0,),
                 fine_upsample: tuple[int, int, int] = (1, 1, 1), precision: str = "auto",
                 ce_weight_power: float = TrainConfig.fine.ce_weight_power) -> TrainConfig:
    """The defaults, with the fine stage's spacing (``fine_mm``, also the exported pipeline's), its scale
    augmentation, its sub-voxel head (``fine_upsample``), its cross-entropy weighting, and both networks'
    ``precision``: the command line's ``--fine-mm``, ``--fine-scale-aug``, ``--fine-upsample``,
    ``--ce-weight-power`` and ``--precision``."""
    cfg = TrainConfig(pipeline=replace(PipelineConfig(), fine_mm=fine_mm), fine_scale_aug=tuple(fine_scale_aug))
    fz, fy, fx = fine_upsample
    unet = replace(cfg.fine.unet, upsample=(int(fz), int(fy), int(fx)))
    return replace(cfg, coarse=replace(cfg.coarse, precision=precision),
                   fine=replace(cfg.fine, unet=unet, precision=precision, ce_weight_power=ce_weight_power))


@dataclass(frozen=True)
class RunConfig:
    """One invocation: train on ``images``/``labels``, write ``out``; ``epochs`` fine-network epochs (the
    coarse network gets a third, at least 1); ``seed`` seeds numpy and torch. ``command`` is recorded in
    the exported ``config.json`` (and ``run.json``) as given: the command line records its arguments as
    typed, an absolute path inside the current folder made relative (``cli.recorded_command``)."""

    images: Path
    labels: Path
    out: Path
    _: KW_ONLY
    epochs: int = EPOCHS
    seed: int = 0
    command: str = ""


@dataclass(frozen=True)
class SemiConfig:
    """Semi-supervised training on top of a :class:`RunConfig` (see ``predictor.training.semi``). The
    defaults are what docs/experiments/semi-supervised.md measured best on phantoms."""

    unlabeled: Path  # folder of unlabeled <Case>_0000.nii.gz to pseudo-label
    _: KW_ONLY
    rounds: int = 1  # pseudo-label rounds after round 0 (labeled only)
    keep: float = 0.7  # fraction of pseudo-labeled cases kept per round, best --filter measure first
    filter: str = "uncertainty"  # "stability" | "disagreement" | "uncertainty" (predictor.training.semi.FILTERS)
    teacher: str = "small"  # "small" | "big" (a wider teacher makes the pseudo-labels)
    teacher_width: float = 1.5  # the big teacher's base channels over the small model's (rounded to even)
    steps_per_epoch: int = 0  # 0: the TrainConfig's
    labeled_share: float = 0.5  # share of patches from the labeled scans in rounds >= 1; 0: uniform over scans;
    # 1: labeled scans only (no pseudo-labels: the equal-steps control)
    warm_start: bool = True  # round k >= 1 starts from round k-1's model (same width) instead of random
