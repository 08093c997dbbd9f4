"""The 13 FLARE22 organs: label id, short name, full name and NSD tolerance (mm).

The order and ids come from the official scorer's ``label_tolerance`` OrderedDict
(JunMa11/FLARE, FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py, 2022-06-21).
Background is 0. The aorta, the IVC and the esophagus are "tubular": the official
scorer crops them to the ground truth's slice range before scoring.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Organ:
    id: int
    short: str  # column prefix in CSVs, e.g. "Liver" -> "Liver_DSC"
    name: str
    tolerance_mm: float  # NSD tolerance
    tubular: bool = False  # cropped to the GT's slice range before scoring (the tube crop)
    in_mean: bool = True  # counts in the per-case organ mean (DSC_mean, NSD_mean)


ORGANS: tuple[Organ, ...] = (
    Organ(1, "Liver", "liver", 5.0),
    Organ(2, "RK", "right kidney", 3.0),
    Organ(3, "Spleen", "spleen", 3.0),
    Organ(4, "Pancreas", "pancreas", 5.0),
    Organ(5, "Aorta", "aorta", 2.0, tubular=True),
    Organ(6, "IVC", "inferior vena cava", 2.0, tubular=True),
    Organ(7, "RAG", "right adrenal gland", 2.0),
    Organ(8, "LAG", "left adrenal gland", 2.0),
    Organ(9, "Gallbladder", "gallbladder", 2.0),
    Organ(10, "Esophagus", "esophagus", 3.0, tubular=True),
    Organ(11, "Stomach", "stomach", 5.0),
    Organ(12, "Duodenum", "duodenum", 7.0),
    Organ(13, "LK", "left kidney", 3.0),
)

BACKGROUND = 0
NUM_CLASSES = len(ORGANS) + 1  # background + 13 organs
LABEL_IDS: tuple[int, ...] = tuple(o.id for o in ORGANS)
BY_ID: dict[int, Organ] = {o.id: o for o in ORGANS}
BY_SHORT: dict[str, Organ] = {o.short: o for o in ORGANS}
TUBULAR_IDS: tuple[int, ...] = tuple(o.id for o in ORGANS if o.tubular)
MAX_LABEL = max(LABEL_IDS)


def metric_columns() -> list[str]:
    """Per-organ metric columns as the official CSV orders them: 13 ``<Organ>_DSC``, then 13 ``<Organ>_NSD``."""
    return [f"{o.short}_DSC" for o in ORGANS] + [f"{o.short}_NSD" for o in ORGANS]
