"""Phantom generation and NIfTI writing time, and file size per gzip level and codec.

Generates ``--count`` 512x512x100 cases (numpy work only), then writes each one (image + label)
with challenge.nifti at every gzip level in ``--levels``, once with each codec challenge.codec offers
(isal where installed, and zlib: ``FLARE_CODEC``'s choices), and, for reference, as challenge.nifti wrote
before the codec change: SimpleITK's uncompressed .nii, whose bytes Python's gzip compresses at the
same level. Prints medians and ratios to the first row.

    python benchmarks/phantom_bench.py                 # 5 cases, levels 1 3 6
    python benchmarks/phantom_bench.py --count 3 --levels 1 --domain arterial
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from challenge import codec
from phantoms import DOMAIN_NAMES, Phantom, PhantomConfig, generate_case, write_case


def python_gzip(phantom: Phantom, folder: Path, level: int) -> tuple[float, float]:
    """(seconds, MiB) to write image + label as .nii with SimpleITK and gzip the bytes at ``level`` (the writer
    before the codec change)."""
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
    writers = [f"challenge.nifti {name}" for name in codec.available()] + ["before: sitk .nii + gzip"]

    generate_s: list[float] = []
    write_s: dict[tuple[str, int], list[float]] = {(w, level): [] for w in writers for level in args.levels}
    size_mib: dict[tuple[str, int], list[float]] = {key: [] for key in write_s}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.count):
            start = time.perf_counter()
            phantom = generate_case(args.seed, index, config)
            generate_s.append(time.perf_counter() - start)
            for level in args.levels:
                for name in codec.available():
                    out = Path(tmp) / f"{name}{level}"
                    start = time.perf_counter()
                    with codec.using(name):
                        paths = write_case(phantom, out, level)
                    write_s[f"challenge.nifti {name}", level].append(time.perf_counter() - start)
                    size_mib[f"challenge.nifti {name}", level].append(sum(p.stat().st_size for p in paths) / 2**20)
                seconds, mib = python_gzip(phantom, Path(tmp), level)
                write_s[writers[-1], level].append(seconds)
                size_mib[writers[-1], level].append(mib)
            print(f"case {index}: generate {generate_s[-1]:.2f} s, "
                  + ", ".join(f"{w.split()[-1]}@{lv} {v[-1]:.2f} s" for (w, lv), v in write_s.items()), flush=True)

    raw_mib = args.shape[0] * args.shape[1] * args.shape[2] * 3 / 2**20  # int16 image + uint8 label
    gen = statistics.median(generate_s)
    print(f"\n{args.count} cases of {'x'.join(map(str, args.shape))} voxels ({args.domain}); raw {raw_mib:.1f} MiB; "
          "CT image + label map per case")
    print(f"median generation time: {gen:.2f} s (numpy only, no I/O)")
    first = next(iter(write_s))
    base_w, base_s = statistics.median(write_s[first]), statistics.median(size_mib[first])
    print(f"{'writer':>32} {'level':>5} {'write s':>8} {'x write':>8} {'MiB':>7} {'x size':>7} {'write/generate':>15}")
    for (writer, level), times in write_s.items():
        w, s = statistics.median(times), statistics.median(size_mib[writer, level])
        print(f"{writer:>32} {level:>5} {w:>8.2f} {w / base_w:>8.2f} {s:>7.1f} {s / base_s:>7.2f} {w / gen:>15.2f}")


if __name__ == "__main__":
    main()
