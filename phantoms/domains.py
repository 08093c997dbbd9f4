"""Imaging domains: contrast phase, noise level and slice thickness, and the HU of every tissue.

A :class:`Domain` is a small frozen dataclass; build a custom one with ``Domain(name=..., ...)``
or ``dataclasses.replace(DOMAINS["portal"], noise_sd_hu=25)``. The named domains are:

- ``portal`` (default): portal-venous phase, liver ~110 HU, aorta ~160 HU, noise 12 HU.
- ``arterial``: late arterial phase, aorta ~320 HU, renal cortex bright, liver ~75 HU.
- ``noncontrast``: no contrast, liver ~58 HU, aorta/IVC ~40 HU, kidneys ~33 HU.
- ``lowdose``: portal phase with 40 HU noise.
- ``thick``: portal phase with 4.5-6 mm slices (and the matching slice-profile blur).
- ``mixed``: each case draws one of the five above, from the case's own seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Tissue classes painted into the tissue map (uint8). Organ label L is painted as tissue ORGAN + L.
AIR, FAT, MUSCLE, CORTICAL, CANCELLOUS, CSF, DISC, BOWEL, GAS, LUNG, MEDULLA, VEIN = range(12)
ORGAN = 20

PHASES = ("noncontrast", "arterial", "portal")

# Mean HU per phase (noncontrast, arterial, portal), from typical clinical values.
_HU = {
    AIR: (-1000, -1000, -1000),
    FAT: (-100, -100, -100),
    MUSCLE: (45, 55, 60),
    CORTICAL: (800, 800, 800),
    CANCELLOUS: (320, 320, 320),
    CSF: (15, 15, 15),
    DISC: (85, 85, 85),
    BOWEL: (30, 60, 75),
    GAS: (-950, -950, -950),
    LUNG: (-860, -860, -860),
    MEDULLA: (30, 70, 130),  # renal medulla: dark against the cortex in the arterial phase
    VEIN: (38, 100, 175),  # portal/splenic/hepatic veins (the intrahepatic ones carry the liver label)
    ORGAN + 1: (58, 75, 110),  # liver
    ORGAN + 2: (33, 190, 170),  # right kidney (cortex)
    ORGAN + 3: (48, 125, 120),  # spleen
    ORGAN + 4: (42, 120, 100),  # pancreas
    ORGAN + 5: (42, 320, 160),  # aorta
    ORGAN + 6: (40, 90, 150),  # IVC: unopacified infrarenal blood in the arterial phase
    ORGAN + 7: (30, 65, 60),  # right adrenal
    ORGAN + 8: (30, 65, 60),  # left adrenal
    ORGAN + 9: (10, 10, 10),  # gallbladder (bile)
    ORGAN + 10: (40, 70, 75),  # esophagus
    ORGAN + 11: (25, 30, 35),  # stomach (wall and fluid content)
    ORGAN + 12: (30, 65, 70),  # duodenum
    ORGAN + 13: (33, 190, 170),  # left kidney (cortex)
}


@dataclass(frozen=True)
class Domain:
    """Imaging parameters of one domain.

    phase: one of PHASES (selects the HU table). noise_sd_hu: sd of the added Gaussian noise (HU).
    blur_mm: in-plane partial-volume Gaussian sigma (mm). slice_mm: (low, high) slice spacing in mm
    drawn per case, or None to derive it from a 150-300 mm z extent. hu_jitter: sd (HU) of the
    per-case, per-tissue shift of the mean HU (scanner/patient variation).
    """

    name: str = "portal"
    phase: str = "portal"
    noise_sd_hu: float = 12.0
    blur_mm: float = 0.5
    slice_mm: tuple[float, float] | None = None
    hu_jitter: float = 6.0

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"domain {self.name!r}: phase must be one of {PHASES}, got {self.phase!r}")
        if self.noise_sd_hu < 0 or self.blur_mm < 0 or self.hu_jitter < 0:
            raise ValueError(f"domain {self.name!r}: noise_sd_hu, blur_mm and hu_jitter must be >= 0")
        if self.slice_mm is not None and not 0 < self.slice_mm[0] <= self.slice_mm[1]:
            raise ValueError(f"domain {self.name!r}: slice_mm must be (low, high) with 0 < low <= high")

    def hu_table(self, rng: np.random.Generator) -> np.ndarray:
        """(256,) float32 lookup: tissue id -> mean HU for this case (with the per-case jitter)."""
        column = PHASES.index(self.phase)
        table = np.zeros(256, dtype=np.float32)
        for tissue, values in _HU.items():
            jitter = 0.0 if tissue in (AIR, GAS, LUNG) else rng.normal(0.0, self.hu_jitter)
            table[tissue] = values[column] + jitter
        return table


DOMAINS: dict[str, Domain] = {
    "portal": Domain("portal", "portal"),
    "arterial": Domain("arterial", "arterial"),
    "noncontrast": Domain("noncontrast", "noncontrast"),
    "lowdose": Domain("lowdose", "portal", noise_sd_hu=40.0),
    "thick": Domain("thick", "portal", noise_sd_hu=8.0, slice_mm=(4.5, 6.0)),
}
MIXED = "mixed"
DOMAIN_NAMES: tuple[str, ...] = (*DOMAINS, MIXED)


def mean_hu(phase: str, tissue: int) -> float:
    """The documented mean HU (before per-case jitter) of a tissue id in a phase."""
    return float(_HU[tissue][PHASES.index(phase)])


def resolve(domain: Domain | str, rng: np.random.Generator) -> Domain:
    """A concrete Domain: a name is looked up; ``mixed`` draws one named domain with ``rng``."""
    if isinstance(domain, Domain):
        return domain
    if domain == MIXED:
        names = sorted(DOMAINS)
        return DOMAINS[names[int(rng.integers(len(names)))]]
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAIN_NAMES)}")
    return DOMAINS[domain]
