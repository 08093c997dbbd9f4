"""The 13 FLARE22 organs: a reference layout, its per-case variation, and painting in priority order.

Reference adult layout in body-frame mm (X = patient left, Y = posterior, Z = superior; the body
is 330 mm wide, the vertebral body centre at Y = +25, the diaphragm dome at Z ~ +100, the kidney
hila near Z = -20). Every length is multiplied by ``habitus.scale``; every position, size,
rotation and shape coefficient is jittered per case. Later organs overwrite earlier ones where
they touch (e.g. the gallbladder sits in the liver, the IVC runs through its bare area).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from challenge.labels import BY_SHORT

from . import domains as t
from .canvas import Canvas, Ellipsoid, rotation, sweep
from .grid import Habitus

LIVER, RK, SPLEEN, PANCREAS, AORTA, IVC, RAG, LAG, GALLBLADDER, ESOPHAGUS, STOMACH, DUODENUM, LK = (
    BY_SHORT[n].id for n in ("Liver", "RK", "Spleen", "Pancreas", "Aorta", "IVC", "RAG", "LAG", "Gallbladder",
                             "Esophagus", "Stomach", "Duodenum", "LK"))

# Probability that a case lacks an organ (cholecystectomy, adrenalectomy, nephrectomy, splenectomy).
ABSENT_PROBABILITY = {GALLBLADDER: 0.2, RAG: 0.05, LAG: 0.05, RK: 0.02, LK: 0.02, SPLEEN: 0.02}
ADRENAL_FAT_MM = 3.0  # reference mm of perirenal fat around each adrenal gland
THORAX_TOP = 130.0  # reference mm: the tubes start above this or above the FOV, whichever is higher


class _Sampler:
    """Draws jittered shapes from the reference layout (reference mm in, scaled mm out)."""

    def __init__(self, rng: np.random.Generator, scale: float) -> None:
        self.rng, self.s = rng, scale

    def ellipsoid(self, centre, semi, rz=0.0, ry=0.0, rx=0.0, shift=5.0, deform=0.08) -> Ellipsoid:
        r = self.rng
        size = r.uniform(0.88, 1.12) * r.uniform(0.92, 1.08, 3)
        return Ellipsoid(center=(np.asarray(centre, float) + r.normal(0, shift, 3)) * self.s,
                         semi=np.asarray(semi, float) * size * self.s,
                         rot=rotation(rz + r.normal(0, 8), ry + r.normal(0, 6), rx + r.normal(0, 6)),
                         deform=r.normal(0, deform, 6))

    def tube(self, points, radii, shift=4.0) -> tuple[np.ndarray, np.ndarray]:
        r = self.rng
        pts = np.asarray(points, float)
        pts = (pts + r.normal(0, shift, pts.shape)) * self.s
        rad = np.asarray(radii, float) * r.uniform(0.85, 1.15) * r.uniform(0.92, 1.08, len(radii)) * self.s
        return pts, rad


def paint_organs(canvas: Canvas, hab: Habitus, rng: np.random.Generator, fov_top: float) -> None:
    """Paint bowel (label 0) and then the 13 organs, low priority first. Draw order is fixed.

    ``fov_top``: body-frame Z (mm) above the whole field of view; the tubes start above it. It
    must not depend on the canvas, so that an oblique grid shows the same anatomy in world.
    """
    s = hab.scale
    sample = _Sampler(rng, s)
    absent = {label for label, p in ABSENT_PROBABILITY.items() if rng.random() < p}
    top = max(fov_top / s + 20.0, THORAX_TOP)  # tubes enter from above the FOV

    _paint_bowel(canvas, sample)
    # Portal vein (hilum to the confluence behind the pancreas neck) and splenic vein: unlabelled.
    for vein in (sample.tube([(-45, -32, 25), (-25, -30, 8), (-4, -32, -8), (2, -30, -40)], [7, 7, 7, 6], shift=2.0),
                 sample.tube([(-4, -32, -6), (25, -24, 4), (55, -8, 15), (82, 12, 28)], [5, 5, 5, 5], shift=2.0)):
        canvas.paint(*sweep(canvas, *vein), 0, t.VEIN)

    for lobe in (sample.ellipsoid((-70, -25, 40), (75, 80, 70), deform=0.06),
                 sample.ellipsoid((0, -62, 55), (55, 28, 40), rz=-15)):
        box, mask, _ = lobe.rasterise(canvas)
        canvas.paint(box, mask, LIVER, t.ORGAN + LIVER)
    _paint_liver_vessels(canvas, sample)

    spleen = sample.ellipsoid((95, 22, 45), (22, 55, 50), rz=30)
    if SPLEEN not in absent:
        box, mask, _ = spleen.rasterise(canvas)
        canvas.paint(box, mask, SPLEEN, t.ORGAN + SPLEEN)

    stomach = sample.tube([(55, 0, 88), (62, -15, 65), (50, -50, 35), (35, -70, 12), (5, -72, 2), (-18, -55, 5)],
                          [28, 36, 34, 26, 18, 12])
    box, mask = sweep(canvas, *stomach)
    if canvas.paint(box, mask, STOMACH, t.ORGAN + STOMACH):
        assert mask is not None  # paint() paints nothing without a mask
        _add_gas(canvas, box, mask, STOMACH, rng.uniform(0.03, 0.25))

    pancreas = sample.tube([(-28, -38, -20), (-5, -45, -8), (22, -35, 0), (52, -18, 12), (75, -8, 25)],
                           [16, 11, 11, 10, 8], shift=3.0)
    canvas.paint(*sweep(canvas, *pancreas), PANCREAS, t.ORGAN + PANCREAS)

    duodenum = sample.tube([(-18, -55, 5), (-38, -45, 3), (-52, -30, -8), (-55, -25, -30), (-50, -25, -52),
                            (-22, -35, -62), (8, -38, -60), (25, -38, -45), (22, -42, -30)],
                           [12, 13, 12, 12, 11, 11, 10, 10, 9], shift=3.0)
    canvas.paint(*sweep(canvas, *duodenum), DUODENUM, t.ORGAN + DUODENUM)

    kidneys = {RK: sample.ellipsoid((-70, 30, -30), (26, 24, 55), rz=-30, ry=12),
               LK: sample.ellipsoid((70, 30, -15), (26, 24, 55), rz=30, ry=-12)}
    for label, kidney in kidneys.items():
        if label in absent:
            continue
        box, mask, q = kidney.rasterise(canvas)
        if canvas.paint(box, mask, label, t.ORGAN + label):
            assert mask is not None and q is not None  # paint() needs a mask; rasterise() gives q with it
            medulla = mask & (q < 0.35) & (canvas.labels[box] == label)
            canvas.tissue[box][medulla] = t.MEDULLA

    for label, kidney, (x, y) in ((RAG, kidneys[RK], (-45, 10)), (LAG, kidneys[LK], (42, 12))):
        pole = kidney.center[2] + kidney.semi[2] * 0.95
        gland = sample.ellipsoid((x, y, pole / s + 12), (4, 12, 15), rz=-40 if label == RAG else 40, shift=3.0)
        if label not in absent:
            # the glands lie in perirenal fat, not inside the liver or against the stomach they are drawn
            # next to: a fat rim of ADRENAL_FAT_MM (label 0) first
            rim = replace(gland, semi=gland.semi + ADRENAL_FAT_MM * s)
            canvas.paint(*rim.rasterise(canvas)[:2], 0, t.FAT)
            canvas.paint(*gland.rasterise(canvas)[:2], label, t.ORGAN + label)

    gallbladder = sample.ellipsoid((-45, -68, -5), (15, 15, 33), rx=-35, deform=0.1)
    if GALLBLADDER not in absent:
        canvas.paint(*gallbladder.rasterise(canvas)[:2], GALLBLADDER, t.ORGAN + GALLBLADDER)

    esophagus = sample.tube([(2, -24, top), (4, -25, 110), (10, -26, 95), (28, -25, 82), (42, -18, 74)],
                            [8, 8, 8, 8, 9], shift=2.0)
    canvas.paint(*sweep(canvas, *esophagus), ESOPHAGUS, t.ORGAN + ESOPHAGUS, thorax=True)
    ivc = sample.tube([(-28, -15, top), (-28, -15, 105), (-26, -10, 60), (-24, -8, 0), (-20, -6, -110)],
                      [12, 12, 12, 11, 11], shift=2.0)
    canvas.paint(*sweep(canvas, *ivc, flatten=(1.2, 0.8, 1.0)), IVC, t.ORGAN + IVC, thorax=True)
    aorta = sample.tube([(6, 0, top), (8, -2, 110), (9, -4, 60), (11, -7, 10), (12, -8, -40), (10, -9, -105)],
                        [12, 12, 11, 11, 10, 9], shift=2.0)
    canvas.paint(*sweep(canvas, *aorta), AORTA, t.ORGAN + AORTA, thorax=True)


def _paint_bowel(canvas: Canvas, sample: _Sampler) -> None:
    """Unlabelled colon frame and a few small-bowel loops (fluid and gas), later covered by organs."""
    colon = sample.tube([(-105, -20, -90), (-105, -30, -20), (-90, -60, 0), (-40, -85, -20), (30, -85, -15),
                         (95, -40, 30), (105, -10, -20), (100, -15, -90)], [20] * 8, shift=6.0)
    box, mask = sweep(canvas, *colon)
    if canvas.paint(box, mask, 0, t.BOWEL):
        assert mask is not None  # paint() paints nothing without a mask
        _add_gas(canvas, box, mask, 0, sample.rng.uniform(0.2, 0.5))
    for _ in range(int(sample.rng.integers(3, 6))):
        start = np.array([sample.rng.uniform(-70, 70), sample.rng.uniform(-80, -20), sample.rng.uniform(-95, -35)])
        walk = start + np.cumsum(sample.rng.normal(0, 22, (5, 3)), axis=0)
        loop = sample.tube(np.vstack([start, walk]), [13] * 6, shift=0.0)
        canvas.paint(*sweep(canvas, *loop), 0, t.BOWEL)


def _paint_liver_vessels(canvas: Canvas, sample: _Sampler) -> None:
    """Portal branches from the hilum and hepatic veins towards the IVC: liver label, vein HU."""
    hilum, confluence = (-45, -32, 22), (-28, -18, 92)
    branches = [(hilum, (-95, -20, 30)), (hilum, (-5, -62, 45)), (hilum, (-80, 15, 15)),
                (confluence, (-100, -35, 68)), (confluence, (-40, -70, 58)), (confluence, (-2, -68, 70))]
    for first, last in branches:
        start, end = np.asarray(first, float), np.asarray(last, float)
        bend = (start + end) / 2 + sample.rng.normal(0, 8, 3)
        box, mask = sweep(canvas, *sample.tube([start, bend, end], [6, 4.5, 2.5], shift=4.0))
        if box is not None:
            canvas.tissue[box][mask & (canvas.labels[box] == LIVER)] = t.VEIN


def _add_gas(canvas: Canvas, box, mask: np.ndarray, label: int, fraction: float) -> None:
    """Gas rises anteriorly (patient supine): the front ``fraction`` of a lumen's AP extent."""
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    if rows.size == 0:
        return
    y = canvas.y[box[1]]
    level = y[rows[0]] + fraction * (y[rows[-1]] - y[rows[0]])
    gas = mask & (y[None, :, None] < level) & (canvas.labels[box] == label) & canvas.cavity[box]
    canvas.tissue[box][gas] = t.GAS
