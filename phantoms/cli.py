"""``flare-phantoms`` / ``python -m phantoms``: write a FLARE-format synthetic CT data set."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from challenge.cli import Parser, add_out, add_verbosity, bounded, configure_logging
from challenge.exitcodes import ExitCode
from challenge.labels import BY_ID

from .domains import DOMAIN_NAMES
from .generate import MAX_OBLIQUE_DEG, Phantom, PhantomConfig, write_dataset

_positive_int = bounded(int, low=0)
_degrees = bounded(float, 0, MAX_OBLIQUE_DEG, what="the tilt (degrees) must be")
_size = bounded(int, 16, 2048, what="a shape size must be")
_mm = bounded(float, 0.05, 20, what="a spacing (mm) must be")

log = logging.getLogger("phantoms")

EPILOG = """\
Writes OUT/images/<Case>_0000.nii.gz (int16 HU) and OUT/labels/<Case>.nii.gz (uint8, the 13
FLARE22 organ ids, 0 = background); case ids are <prefix>_0001, <prefix>_0002, ...
Case i depends only on (seed, i): --count 3 and --count 5 share their first three cases.

Defaults: 512 x 512 x 60..120 voxels, in-plane FOV 330-450 mm, z extent 150-300 mm, voxel
axes LPS or RAS at random, non-zero origins. With only --shape, the spacing is chosen for
a realistic FOV and the anatomy scales with the body, which fills 80-92 % of the FOV.

Domains (--domain):
  portal       portal-venous phase (default): liver ~110 HU, aorta ~160, kidneys ~170, noise 12 HU
  arterial     late arterial: aorta ~320 HU, renal cortex ~190 / medulla ~70, liver ~75
  noncontrast  no contrast: liver ~58 HU, aorta/IVC ~40, kidneys ~33
  lowdose      portal phase with 40 HU noise
  thick        portal phase with 4.5-6 mm slices (an explicit --spacing wins)
  mixed        one of the above per case, drawn from the case's seed

Examples:
  python -m phantoms --out data/phantoms --count 10 --seed 0
  python -m phantoms --out /tmp/small --count 3 --seed 1 --shape 96 96 40
  python -m phantoms --out /tmp/ras --count 2 --seed 7 --shape 128 128 48 --orientation RAS --oblique 10
  python -m phantoms --out /tmp/mix --count 20 --seed 3 --domain mixed --prefix Unlabelled
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="flare-phantoms", description="Synthetic abdominal CT phantoms with FLARE22 organ labels.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out(p, help="output folder (images/ and labels/ are created)")
    p.add_argument("--count", required=True, type=_positive_int, help="number of cases")
    p.add_argument("--seed", type=_positive_int, default=0, help="data-set seed (default 0)")
    p.add_argument("--shape", type=_size, nargs=3, metavar=("X", "Y", "Z"),
                   help="voxels along i, j, k (default 512 512 60..120)")
    p.add_argument("--spacing", type=_mm, nargs=3, metavar=("X", "Y", "Z"),
                   help="mm along i, j, k (default: from a realistic FOV)")
    p.add_argument("--domain", choices=DOMAIN_NAMES, default="portal", help="imaging domain (see below)")
    p.add_argument("--orientation", choices=("LPS", "RAS", "random"), default="random",
                   help="voxel axis codes (nibabel aff2axcodes); random mixes them (default)")
    p.add_argument("--oblique", type=_degrees, default=0.0, metavar="DEGREES",
                   help="tilt the voxel grid in world by this angle, 0-30 (default 0); the anatomy stays "
                        "axis-aligned in world, so the image shows it rotated")
    p.add_argument("--prefix", default="Phantom", help="case-id prefix (default Phantom)")
    add_verbosity(p)
    p.rename("--cases", "--count")
    return p


def _check_writable(out: Path) -> str | None:
    """None if ``out`` can be created and written, else a one-line reason."""
    try:
        for sub in ("images", "labels"):
            (out / sub).mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=out / sub, prefix=".probe."):
                pass
    except OSError as err:
        return f"--out {out}: not writable ({err.strerror or type(err).__name__})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    try:
        config = PhantomConfig(shape=tuple(args.shape) if args.shape else None,
                               spacing=tuple(args.spacing) if args.spacing else None, domain=args.domain,
                               orientation=args.orientation, oblique_deg=args.oblique, prefix=args.prefix)
    except ValueError as err:
        parser.error(str(err))
    problem = _check_writable(args.out)
    if problem:
        parser.error(problem)

    def report(phantom: Phantom, write_s: float) -> None:
        missing = [BY_ID[i].short for i in BY_ID if i not in phantom.present]
        log.info("%s  %s  %s  generate %.2f s  write %.2f s%s", phantom.case, "x".join(map(str, phantom.geometry.size)),
                 phantom.domain.name, phantom.seconds, write_s, f"  absent: {','.join(missing)}" if missing else "")

    try:
        ids = write_dataset(args.out, args.count, args.seed, config, on_case=report)
    except OSError as err:
        print(f"flare-phantoms: error: writing under {args.out}: {err.strerror or err}", file=sys.stderr)
        return ExitCode.HOST_FAULT
    log.info("wrote %d case(s) to %s", len(ids), args.out)
    return ExitCode.OK
