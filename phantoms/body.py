"""The body outside the labelled organs: skin/fat/muscle wall, spine, ribs, diaphragm, lung bases.

Everything here carries label 0 and only sets the tissue map and the cavity/trunk masks that
clip the organs. The wall and ribs are built slice by slice in 2D; the spine in its own box.
Lengths are reference-adult mm times ``habitus.scale``; coordinates are the body frame
(X left, Y posterior, Z superior; see phantoms.canvas).
"""

from __future__ import annotations

import numpy as np

from . import domains as t
from .canvas import Canvas
from .grid import Habitus


def paint_body(canvas: Canvas, hab: Habitus, rng: np.random.Generator) -> None:
    """Fill the tissue map with air, fat, muscle wall and ribs; set cavity and trunk; draw the spine."""
    s = hab.scale
    x, y = canvas.x.astype(np.float32), canvas.y.astype(np.float32)
    xn = x / hab.half_width
    yn = np.where(y < 0, y / hab.half_ant, y / hab.half_post)
    rho2 = xn[None, :] ** 2 + yn[:, None] ** 2  # (ny, nx) normalised elliptic radius squared
    wobble = rng.uniform(0, 2 * np.pi)
    girth = 1.0 + 0.03 * np.sin(2 * np.pi * canvas.z / (200 * s) + wobble)  # per slice
    fat_in = 1.0 - hab.fat / hab.half_width
    wall_in = fat_in - hab.muscle / hab.half_width
    dome = diaphragm(canvas.x, canvas.y, s, 100 * s + rng.normal(0, 6 * s))
    ribs = _RibCage(rho2, xn, yn, s, (fat_in + wall_in) / 2, hab.muscle / hab.half_width / 2, rng)
    for k, zk in enumerate(canvas.z):
        g2 = girth[k] ** 2
        sl = canvas.tissue[k]
        sl[rho2 < g2] = t.FAT
        sl[rho2 < g2 * fat_in**2] = t.MUSCLE
        inner = rho2 < g2 * wall_in**2
        sl[inner] = t.FAT  # visceral fat until organs and bowel are painted
        canvas.trunk[k] = inner
        canvas.cavity[k] = inner & (zk < dome)
        ribs.paint(sl, float(zk), float(girth[k]))
    _paint_spine(canvas, hab, rng)


def diaphragm(x: np.ndarray, y: np.ndarray, s: float, top: float) -> np.ndarray:
    """(ny, nx) height (mm) of the diaphragm: two domes beside a lower centre, deep posterior recesses."""
    lateral = (np.abs(x)[None, :] - 55 * s) ** 2 * (0.004 / s)
    posterior = 0.35 * np.maximum(y[:, None] + 20 * s, 0)
    return (top - lateral - posterior).astype(np.float32)


class _RibCage:
    """Rib cross-sections in the muscle wall: bands descending anteriorly, above the costal margin."""

    def __init__(self, rho2: np.ndarray, xn: np.ndarray, yn: np.ndarray, s: float, ring: float, half: float,
                 rng: np.random.Generator) -> None:
        lo, hi = ((ring - half) * 0.94) ** 2, ((ring + half) * 1.06) ** 2
        self.index = np.flatnonzero((rho2 >= lo) & (rho2 <= hi))
        self.rho = np.sqrt(rho2.ravel()[self.index])
        rows, cols = np.unravel_index(self.index, rho2.shape)
        angle = np.arctan2(yn[rows], xn[cols])  # +pi/2 = posterior midline
        self.arc = np.abs(np.angle(np.exp(1j * (angle - np.pi / 2)))) / np.pi  # 0 posterior .. 1 anterior
        self.s, self.ring, self.half = s, ring, half
        self.period = 28 * s * rng.uniform(0.9, 1.1)
        self.phase = rng.uniform(0, self.period)

    def paint(self, tissue_slice: np.ndarray, z: float, girth: float) -> None:
        s, arc = self.s, self.arc
        offset = np.abs(self.rho / girth - self.ring)
        band = ((z + 220 * s * arc + self.phase) % self.period) < 0.4 * self.period
        keep = (offset < self.half) & band & (arc > 0.12) & (arc < 0.8) & (z > -30 * s + 80 * s * arc)
        flat = tissue_slice.reshape(-1)
        flat[self.index[keep]] = np.where(offset[keep] < self.half / 2, t.CANCELLOUS, t.CORTICAL)


def _paint_spine(canvas: Canvas, hab: Habitus, rng: np.random.Generator) -> None:
    """Vertebral bodies with discs, canal, posterior arch, processes, paraspinal and psoas muscles."""
    s = hab.scale
    box = canvas.box(np.array([-80 * s, -10 * s, canvas.z[0] - 1]), np.array([80 * s, hab.half_post, canvas.z[-1] + 1]))
    if box is None:
        return
    x, y, z = canvas.coords(box)
    xs = rng.normal(0, 2 * s)
    y_body = 25 * s + 6 * s * np.sin(2 * np.pi * z / (400 * s) + rng.uniform(0, 2 * np.pi))
    rvx, rvy, rc = 22 * s * rng.uniform(0.9, 1.1), 17 * s * rng.uniform(0.9, 1.1), 8 * s
    y_canal = y_body + rvy + rc + 2 * s
    dx = np.abs(x - xs)
    q_body = (dx / rvx) ** 2 + ((y - y_body) / rvy) ** 2
    period = 34 * s * rng.uniform(0.9, 1.1)
    disc = ((z - rng.uniform(0, period)) % period) < 0.22 * period
    canal = (dx / (rc * 1.2)) ** 2 + ((y - y_canal) / rc) ** 2 < 1
    arch = ((dx / (rc * 1.2 + 5 * s)) ** 2 + ((y - y_canal) / (rc + 4 * s)) ** 2 < 1) & ~canal
    spinous = (dx / (4 * s)) ** 2 + ((y - y_canal - rc - 16 * s) / (14 * s)) ** 2 < 1
    transverse = (((dx - 30 * s) / (14 * s)) ** 2 + ((y - y_canal + 2 * s) / (4.5 * s)) ** 2 < 1) & ~disc
    paraspinal = ((dx - 36 * s) / (24 * s)) ** 2 + ((y - y_canal - 14 * s) / (22 * s)) ** 2 < 1
    psoas_r = np.clip((-15 * s - z) * 0.25, 0, 24 * s)
    psoas = (dx - rvx - 0.8 * psoas_r) ** 2 + (y - y_body + 3 * s) ** 2 < psoas_r**2

    tissue = canvas.tissue[box]
    inside = tissue != t.AIR
    tissue[(paraspinal | psoas) & inside] = t.MUSCLE
    vertebra = q_body < 1
    tissue[vertebra] = t.CORTICAL
    tissue[vertebra & (q_body < 0.7)] = t.CANCELLOUS
    tissue[vertebra & disc] = t.DISC
    tissue[arch | spinous | transverse] = t.CORTICAL
    tissue[canal] = t.CSF
    excluded = (q_body < 1.25) | canal | arch | spinous | transverse | paraspinal | psoas
    canvas.trunk[box] &= ~excluded
    canvas.cavity[box] &= ~excluded


def fill_thorax(canvas: Canvas, hab: Habitus) -> None:
    """Above the diaphragm, what no organ took: lung bases, the posterior mediastinum (fat around the
    esophagus, aorta and IVC, in front of the spine) and the heart resting on the central dome in front
    of it. The heart must not reach the esophagus: its muscle (45-60 HU) would hide it (40-75 HU)."""
    free = canvas.trunk & ~canvas.cavity & (canvas.labels == 0)
    if not free.any():
        return
    s = hab.scale
    x, y = canvas.x[None, None, :], canvas.y[None, :, None]
    mediastinum = (np.abs(x - 8 * s) < 42 * s) & (y > -48 * s)
    heart = ((x - 15 * s) / (75 * s)) ** 2 + ((y + 78 * s) / (42 * s)) ** 2 < 1  # posterior edge Y = -36
    canvas.tissue[free] = t.LUNG
    canvas.tissue[free & mediastinum] = t.FAT
    canvas.tissue[free & heart] = t.MUSCLE
