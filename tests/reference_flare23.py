"""A slow, literal re-implementation of the official FLARE23 scorer, to test the flare23 profile against.

Written from the algorithm of the official script (JunMa11/FLARE, FLARE23/FLARE23_DSC_NSD_Eval.py; docs/profiles.md),
not copied. It keeps every step of the official path that differs from FLARE22's (tests/reference_flare22.py,
whose surface-distance port it reuses):
- 14 labels: the 13 FLARE22 organs and Tumor (label 14, 2 mm);
- label maps read with nibabel as ``get_fdata().astype(np.int8)``; a shape mismatch raises;
- a reference case without a submission file raises, which stops the whole evaluation;
- empty-mask rules on the whole arrays (both empty: 1 and 1; one empty: 0 and 0), the tube crop
  ``[z_lower:z_upper]`` along axis 2 for labels 5, 6 and 10;
- NSD = 0 where the DSC is below 0.1 (not computed);
- every per-case value ``round(x, 4)``; the overall value of a column is ``round(mean over cases, 4)``;
  ``Organ_DSC`` / ``Organ_NSD`` are ``round(mean of those over every label but Tumor, 4)``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tests.reference_flare22 import dice, surface_dice, surface_distances

TOLERANCE = {"Liver": 5, "RK": 3, "Spleen": 3, "Pancreas": 5, "Aorta": 2, "IVC": 2, "RAG": 2, "LAG": 2,
             "Gallbladder": 2, "Esophagus": 3, "Stomach": 5, "Duodenum": 7, "LK": 3, "Tumor": 2}
TUBES = (5, 6, 10)


class SubmissionMissing(ValueError):
    """The official script's "Submission volume not found - terminating!"."""


def case_scores(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """``<Label>_DSC`` / ``<Label>_NSD`` of one case, int8 arrays in nibabel order (i, j, k)."""
    if gt.shape != pred.shape:
        raise AttributeError(f"Shapes do not match! Prediction mask {pred.shape}, ground truth mask {gt.shape}")
    out: dict[str, float] = {}
    for i, (name, tolerance) in enumerate(TOLERANCE.items(), 1):
        in_gt, in_pred = int(np.sum(gt == i)), int(np.sum(pred == i))
        if in_gt == 0 and in_pred == 0:
            dsc, nsd = 1.0, 1.0
        elif in_gt == 0 or in_pred == 0:
            dsc, nsd = 0.0, 0.0
        else:
            g, s = gt == i, pred == i
            if i in TUBES:
                z = np.where(g)[2]
                g, s = g[:, :, z.min():z.max()], s[:, :, z.min():z.max()]
            dsc = dice(g, s)
            nsd = 0.0 if dsc < 0.1 else surface_dice(surface_distances(g, s, spacing), tolerance)
        out[f"{name}_DSC"] = round(np.float64(dsc), 4)
        out[f"{name}_NSD"] = round(np.float64(nsd), 4)
    return out


def evaluate(ref_dir: Path, res_dir: Path) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """(per case: its scores; the overall metrics, Organ_DSC and Organ_NSD included), as the official script
    computes them. SubmissionMissing when a reference case has no submission file."""
    per_case: dict[str, dict[str, float]] = {}
    for ref in sorted(Path(ref_dir).glob("*.nii.gz")):
        sub = Path(res_dir) / ref.name
        if not sub.exists():
            raise SubmissionMissing(f"Submission volume not found - terminating! Missing volume: {sub}")
        ref_img, sub_img = nib.load(str(ref)), nib.load(str(sub))
        spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
        gt = ref_img.get_fdata().astype(np.int8)
        pred = sub_img.get_fdata().astype(np.int8)
        per_case[ref.name] = case_scores(gt, pred, spacing)
    columns = [f"{n}_DSC" for n in TOLERANCE] + [f"{n}_NSD" for n in TOLERANCE]
    overall = {c: float(round(np.mean([scores[c] for scores in per_case.values()]), 4)) for c in columns}
    for kind in ("DSC", "NSD"):
        overall[f"Organ_{kind}"] = float(round(np.mean([v for k, v in overall.items()
                                                        if k.endswith(f"_{kind}") and "Tumor" not in k
                                                        and not k.startswith("Organ")]), 4))
    return per_case, overall
