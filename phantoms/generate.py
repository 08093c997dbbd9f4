"""Generate one synthetic abdominal CT case, or a FLARE-format data set of them.

Arrays are (k, j, i) = numpy-from-SimpleITK order: axis 0 is the slice axis. ``Geometry`` holds
size/spacing/origin in (i, j, k) order and an LPS direction matrix. Case ``index`` (0-based) is
named ``<prefix>_<index+1:04d>`` and depends only on (seed, index, config): ``--count 3`` and
``--count 5`` share their first three cases, byte for byte.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from challenge import cases
from challenge.labels import LABEL_IDS
from challenge.nifti import Geometry, write_image, write_label

from . import anatomy, body
from .canvas import Canvas
from .domains import Domain, resolve
from .grid import ORIENTATIONS, CaseGrid, make_grid

HU_RANGE = (-1024, 3071)
BLUR_TRUNCATE = 2.0
MAX_OBLIQUE_DEG = 30.0


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate. ``shape``/``spacing`` are (i, j, k) = (X, Y, Z voxel axes), spacing in mm.

    shape None: 512 x 512 x (60..120) voxels. spacing None: in-plane FOV 330-450 mm and z extent
    150-300 mm (or the domain's slice spacing; an explicit spacing wins). domain: a Domain or a name from
    phantoms.domains.DOMAIN_NAMES ("mixed" draws one per case). orientation: "LPS", "RAS" or
    "random" (voxel axis codes as nibabel's aff2axcodes reports them). oblique_deg: rotate the
    grid and the patient together by up to this angle (0 = axis-aligned).
    compression_level: gzip level of the written files.
    """

    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    domain: Domain | str = "portal"
    orientation: str = "random"
    oblique_deg: float = 0.0
    prefix: str = "Phantom"
    compression_level: int = 1

    def __post_init__(self) -> None:
        if self.shape is not None and (len(self.shape) != 3 or min(self.shape) < 16):
            raise ValueError(f"shape must be three sizes >= 16 (i, j, k), got {self.shape}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ValueError(f"spacing must be three positive mm values (i, j, k), got {self.spacing}")
        if self.orientation not in (*ORIENTATIONS, "random"):
            raise ValueError(f"orientation must be LPS, RAS or random, got {self.orientation!r}")
        if not 0 <= self.oblique_deg <= MAX_OBLIQUE_DEG:
            raise ValueError(f"oblique_deg must be in 0..{MAX_OBLIQUE_DEG:g}, got {self.oblique_deg}")
        if not self.prefix or any(c in self.prefix for c in "/\\\0") or self.prefix.startswith("."):
            raise ValueError(f"prefix must be a plain file-name part, got {self.prefix!r}")
        if not 0 <= self.compression_level <= 9:
            raise ValueError(f"compression_level must be 0..9, got {self.compression_level}")
        if isinstance(self.domain, str):
            resolve(self.domain, np.random.default_rng(0))  # raises ValueError on an unknown name


@dataclass
class Phantom:
    """One case. image: int16 HU, labels: uint8 FLARE22 ids, both (k, j, i) on ``geometry``.

    present: organ ids with at least one voxel. seconds: generation time.
    As a SimpleITK image: ``geometry.apply(SimpleITK.GetImageFromArray(image))``.
    """

    case: str
    image: np.ndarray
    labels: np.ndarray
    geometry: Geometry
    domain: Domain
    present: tuple[int, ...] = ()
    seconds: float = 0.0


def case_id(prefix: str, index: int) -> str:
    """The id of case ``index`` (0-based): ``Phantom_0001`` for index 0."""
    return f"{prefix}_{index + 1:04d}"


def generate_case(seed: int, index: int, config: PhantomConfig = PhantomConfig()) -> Phantom:
    """Generate case ``index`` of the data set drawn from ``seed`` (both >= 0). Deterministic."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed}, {index}")
    start = time.perf_counter()
    streams = [np.random.default_rng([seed, index, part]) for part in range(4)]
    domain = resolve(config.domain, streams[0])
    grid = make_grid(streams[1], config.shape, config.spacing, domain.slice_mm, config.orientation,
                     config.oblique_deg)
    canvas = Canvas.empty(grid.x, grid.y, grid.z)
    body.paint_body(canvas, grid.habitus, streams[2])
    anatomy.paint_organs(canvas, grid.habitus, streams[2], grid.top)
    body.fill_thorax(canvas, grid.habitus)
    tissue, labels = _to_output(grid, canvas)
    image = _render(tissue, grid, domain, streams[3])
    counts = np.bincount(labels.ravel(), minlength=256)
    present = tuple(label for label in LABEL_IDS if counts[label])
    return Phantom(case_id(config.prefix, index), image, labels, grid.geometry(), domain, present,
                   time.perf_counter() - start)


def _to_output(grid: CaseGrid, canvas: Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Tissue and label maps on the output grid; one resampling pass for both when oblique."""
    if not grid.oblique:
        return grid.to_output(canvas.tissue), grid.to_output(canvas.labels)
    both = grid.to_output((canvas.tissue.astype(np.uint16) << 8) | canvas.labels)
    return (both >> 8).astype(np.uint8), (both & 0xFF).astype(np.uint8)


def _render(tissue: np.ndarray, grid: CaseGrid, domain: Domain, rng: np.random.Generator) -> np.ndarray:
    """Tissue map -> int16 HU: per-case HU table, Gaussian noise, partial-volume blur.

    The noise is added before the blur, so it comes out spatially correlated as CT noise is; it
    is scaled so that its standard deviation after the blur is ``domain.noise_sd_hu``.
    """
    hu = domain.hu_table(rng)[tissue]
    sx, sy, sz = grid.spacing
    # Slice profile ~0.35 slice in z; in-plane blur from the domain (sigmas in voxels, (k, j, i)).
    sigma = (0.35, domain.blur_mm / sy, domain.blur_mm / sx)
    if domain.noise_sd_hu > 0:
        noise = rng.standard_normal(hu.shape, dtype=np.float32)
        noise *= np.float32(domain.noise_sd_hu / _noise_kept(sigma))
        hu += noise
        del noise
    hu = gaussian_filter(hu, sigma=sigma, truncate=BLUR_TRUNCATE, output=np.float32)
    np.clip(hu, *HU_RANGE, out=hu)
    np.rint(hu, out=hu)
    return hu.astype(np.int16)


def _noise_kept(sigma: tuple[float, ...]) -> float:
    """Factor by which gaussian_filter(sigma, truncate=BLUR_TRUNCATE) scales the sd of white noise."""
    kept = 1.0
    for s in sigma:
        if s <= 0:
            continue
        radius = int(BLUR_TRUNCATE * s + 0.5)
        w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
        w /= w.sum()
        kept *= float(np.sqrt((w**2).sum()))
    return kept


def write_case(phantom: Phantom, out_dir: str | Path, compression_level: int = 1) -> tuple[Path, Path]:
    """Write ``images/<Case>_0000.nii.gz`` and ``labels/<Case>.nii.gz`` under ``out_dir`` (atomic)."""
    out = Path(out_dir)
    image = write_image(phantom.image, phantom.geometry, out / "images" / cases.image_name(phantom.case),
                        compression_level)
    label = write_label(phantom.labels, phantom.geometry, out / "labels" / cases.label_name(phantom.case),
                        compression_level)
    return image, label


def write_dataset(out_dir: str | Path, n_cases: int, seed: int, config: PhantomConfig = PhantomConfig(),
                  on_case=None) -> list[str]:
    """Generate and write cases 0..n_cases-1; returns their ids. ``on_case(phantom, write_s)`` is
    called after each case is written (for progress and timing)."""
    if n_cases < 0:
        raise ValueError(f"n_cases must be >= 0, got {n_cases}")
    ids = []
    for index in range(n_cases):
        phantom = generate_case(seed, index, config)
        start = time.perf_counter()
        write_case(phantom, out_dir, config.compression_level)
        if on_case is not None:
            on_case(phantom, time.perf_counter() - start)
        ids.append(phantom.case)
    return ids
