"""Phantom generation and NIfTI writing time, and file size per gzip level.

Generates ``--count`` 512x512x100 cases (numpy work only), then writes each one (image + label)
with challenge.nifti at every gzip level in ``--levels``, and, for reference, as an uncompressed
.nii whose bytes Python's gzip compresses at the same levels. Prints medians and ratios to the
first level. (SimpleITK's NIfTI writer ignores the level it is given, hence the reference rows.)

    python benchmarks/phantom_bench.py                 # 5 cases, levels 1 3 6
    python benchmarks/phantom_bench.py --count 3 --levels 1 6 --domain arterial
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from phantoms import DOMAIN_NAMES, Phantom, PhantomConfig, generate_case, write_case


def python_gzip(phantom: Phantom, folder: Path, level: int) -> tuple[float, float]:
    """(seconds, MiB) to write image + label as .nii with SimpleITK and gzip the bytes at ``level``."""
    start, total = time.perf_counter(), 0
    for name, array in (("image", phantom.image), ("label", phantom.labels)):
        raw = folder / f"{name}.nii"
        sitk.WriteImage(phantom.geometry.apply(sitk.GetImageFromArray(array)), str(raw), False)
        packed = gzip.compress(raw.read_bytes(), compresslevel=level, mtime=0)
        (folder / f"{name}.nii.gz").write_bytes(packed)
        total += len(packed)
    return time.perf_counter() - start, total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 100), metavar=("X", "Y", "Z"))
    parser.add_argument("--levels", type=int, nargs="+", default=(1, 3, 6))
    parser.add_argument("--domain", choices=DOMAIN_NAMES, default="portal")
    args = parser.parse_args()
    config = PhantomConfig(shape=tuple(args.shape), domain=args.domain)

    generate_s: list[float] = []
    write_s: dict[int, list[float]] = {level: [] for level in args.levels}
    size_mib: dict[int, list[float]] = {level: [] for level in args.levels}
    ref_s: dict[int, list[float]] = {level: [] for level in args.levels}
    ref_mib: dict[int, list[float]] = {level: [] for level in args.levels}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.count):
            start = time.perf_counter()
            phantom = generate_case(args.seed, index, config)
            generate_s.append(time.perf_counter() - start)
            for level in args.levels:
                out = Path(tmp) / f"level{level}"
                start = time.perf_counter()
                paths = write_case(phantom, out, level)
                write_s[level].append(time.perf_counter() - start)
                size_mib[level].append(sum(p.stat().st_size for p in paths) / 2**20)
                seconds, mib = python_gzip(phantom, Path(tmp), level)
                ref_s[level].append(seconds)
                ref_mib[level].append(mib)
            print(f"case {index}: generate {generate_s[-1]:.2f} s, "
                  + ", ".join(f"write@{lv} {write_s[lv][-1]:.2f} s" for lv in args.levels), flush=True)

    raw_mib = args.shape[0] * args.shape[1] * args.shape[2] * 3 / 2**20  # int16 image + uint8 label
    gen = statistics.median(generate_s)
    print(f"\n{args.count} cases of {'x'.join(map(str, args.shape))} voxels ({args.domain}); raw {raw_mib:.1f} MiB")
    print(f"median generation time: {gen:.2f} s (numpy only, no I/O)")
    base_w, base_s = statistics.median(write_s[args.levels[0]]), statistics.median(size_mib[args.levels[0]])
    print(f"{'writer':>22} {'write s':>8} {'x write':>8} {'MiB':>7} {'x size':>7} {'write/generate':>15}")
    rows = (("challenge.nifti level", write_s, size_mib), ("sitk .nii + gzip level", ref_s, ref_mib))
    for label, times, sizes in rows:
        for level in args.levels:
            w, s = statistics.median(times[level]), statistics.median(sizes[level])
            print(f"{label} {level} {w:>8.2f} {w / base_w:>8.2f} {s:>7.1f} {s / base_s:>7.2f} {w / gen:>15.2f}")


if __name__ == "__main__":
    main()
