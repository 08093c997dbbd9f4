"""Deflate codecs side by side on phantom CT (int16) and label maps (uint8): inflate, deflate per level,
and challenge.nifti's own read and write with each codec challenge.codec offers.

Data: one ``phantoms.generate_case`` of ``--shape`` (default 512x512x100): the CT's and the label map's
raw bytes. Every alternative runs once per round, in one process, rounds interleaved (so that a noisy
neighbour slows all alternatives alike); medians over ``--runs`` rounds, and ratios to zlib.

1. inflate of the gzip stream zlib writes at level 1 (what challenge.nifti wrote before, and what most
   tools write): streaming codecs as the reader runs them (256 KiB of input at a time, at most 1 MiB of
   output per call, into a buffer of the exact size, multi-member aware); whole-buffer codecs on the
   whole file (they need the compressed file in memory, and the output size up front);
2. deflate to one gzip member at each codec's levels that matter (streaming codecs fed 8 MiB at a time,
   as the writer does): seconds, MiB, and ratios of both to zlib level 1;
3. challenge.nifti end to end: ``read_image``/``read_labels`` and ``write_image``/``write_label`` with
   each codec challenge.codec offers (``FLARE_CODEC``), and the writer as it was before (SimpleITK's
   uncompressed scratch ``.nii``, then Python's gzip at level 1).

    python benchmarks/codec_bench.py                    # 5 rounds, 512x512x100
    python benchmarks/codec_bench.py --runs 3 --shape 256 256 64 --tables nifti
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from challenge import codec  # noqa: E402
from challenge.nifti import Geometry, read_image, read_labels, write_image, write_label  # noqa: E402

READ_BYTES = 1 << 18  # as challenge.nifti
INFLATE_BYTES = 1 << 20
DEFLATE_CHUNK = 8 << 20
GZIP = 16 + zlib.MAX_WBITS
TABLES = ("inflate", "deflate", "nifti")


def optional(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


isal_zlib = optional("isal.isal_zlib")
igzip = optional("isal.igzip")
zlib_ng = optional("zlib_ng.zlib_ng")
libdeflate = optional("deflate")


# --- the operations ------------------------------------------------------------------------------------------

def stream_inflate(module: Any, packed: bytes, nbytes: int) -> np.ndarray:
    """Inflate ``packed`` (gzip, any number of members) as challenge.nifti's reader does."""
    out = np.empty(nbytes, np.uint8)
    view = memoryview(out)
    got, pos, tail, inflater = 0, 0, b"", None
    while True:
        if not tail:
            tail = packed[pos:pos + READ_BYTES]
            pos += READ_BYTES
            if not tail:
                break
        if inflater is None:
            inflater = module.decompressobj(wbits=GZIP)
        piece = inflater.decompress(tail, min(INFLATE_BYTES, nbytes - got) or 1)
        if inflater.eof:
            tail, inflater = inflater.unused_data, None
        else:
            tail = inflater.unconsumed_tail
        view[got:got + len(piece)] = piece
        got += len(piece)
    assert inflater is None and got == nbytes
    return out


def stream_deflate(module: Any, raw: memoryview, level: int) -> bytes:
    """One gzip member, fed DEFLATE_CHUNK bytes at a time (the writer's pattern); returns the member."""
    deflater = module.compressobj(level, module.DEFLATED, GZIP)
    parts = [deflater.compress(raw[start:start + DEFLATE_CHUNK]) for start in range(0, len(raw), DEFLATE_CHUNK)]
    parts.append(deflater.flush())
    return b"".join(parts)


def inflaters(packed: bytes, nbytes: int) -> dict[str, Callable[[], Any]]:
    """name -> a call that inflates ``packed``."""
    calls: dict[str, Callable[[], Any]] = {"zlib (stream)": lambda: stream_inflate(zlib, packed, nbytes)}
    if isal_zlib is not None:
        calls["isal isal_zlib (stream)"] = lambda: stream_inflate(isal_zlib, packed, nbytes)
    if igzip is not None:
        calls["isal igzip.decompress (whole)"] = lambda: igzip.decompress(packed)
    if zlib_ng is not None:
        calls["zlib-ng (stream)"] = lambda: stream_inflate(zlib_ng, packed, nbytes)
    if libdeflate is not None:
        calls["libdeflate gzip_decompress (whole)"] = lambda: libdeflate.gzip_decompress(packed)
    return calls


def deflaters(raw: memoryview) -> dict[str, Callable[[], bytes]]:
    """name -> a call that deflates ``raw`` into one gzip member."""
    calls: dict[str, Callable[[], bytes]] = {}
    for level in (1, 3, 6):
        calls[f"zlib {level} (stream)"] = lambda lv=level: stream_deflate(zlib, raw, lv)
    if isal_zlib is not None:
        for level in (0, 1, 2, 3):
            calls[f"isal {level} (stream)"] = lambda lv=level: stream_deflate(isal_zlib, raw, lv)
    if igzip is not None:
        calls["isal igzip.compress 1 (whole)"] = lambda: igzip.compress(raw, 1, mtime=0)
    if zlib_ng is not None:
        for level in (1, 2, 6):
            calls[f"zlib-ng {level} (stream)"] = lambda lv=level: stream_deflate(zlib_ng, raw, lv)
    if libdeflate is not None:
        for level in (1, 4, 6):
            calls[f"libdeflate {level} (whole)"] = lambda lv=level: libdeflate.gzip_compress(raw, lv)
    return calls


def legacy_write(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    """challenge.nifti's writer before the codec change: SimpleITK writes an uncompressed scratch .nii, Python's
    gzip deflates it at level 1."""
    import SimpleITK as sitk

    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    with tempfile.NamedTemporaryFile(prefix=".x.", suffix=".raw.nii", dir=path.parent) as raw:
        sitk.WriteImage(image, raw.name, useCompression=False)
        with open(raw.name, "rb") as src, open(path, "wb") as handle, \
                gzip.GzipFile(filename="", fileobj=handle, mode="wb", compresslevel=1, mtime=0) as packed:
            shutil.copyfileobj(src, packed, 1 << 22)


def with_codec(name: str, call: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with codec.using(name):
            return call()
    return run


# --- timing --------------------------------------------------------------------------------------------------

def interleaved(calls: dict[str, Callable[[], Any]], runs: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds of each call over ``runs`` rounds (each round runs every call once, in turn), and
    each call's last result."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    results: dict[str, Any] = {}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            results[name] = call()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}, results


def inflate_table(title: str, raw: bytes, runs: int) -> None:
    packed = gzip.compress(raw, 1, mtime=0)
    med, results = interleaved(inflaters(packed, len(raw)), runs)
    for name, out in results.items():
        assert bytes(memoryview(out)) == raw, f"{name}: wrong output"
    base = med["zlib (stream)"]
    print(f"\ninflate, {title}: {len(raw) / 2**20:.1f} MiB raw, zlib-1 file {len(packed) / 2**20:.1f} MiB; "
          f"median of {runs}")
    print(f"{'codec':38s} {'seconds':>8} {'MB/s':>7} {'x zlib':>7}")
    for name, s in med.items():
        print(f"{name:38s} {s:8.3f} {len(raw) / s / 1e6:7.0f} {s / base:7.2f}")


def deflate_table(title: str, raw: bytes, runs: int) -> None:
    med, results = interleaved(deflaters(memoryview(raw)), runs)
    for name, out in results.items():
        assert zlib.decompress(out, GZIP) == raw, f"{name}: does not inflate back"
    base_s, base_b = med["zlib 1 (stream)"], len(results["zlib 1 (stream)"])
    print(f"\ndeflate, {title}: {len(raw) / 2**20:.1f} MiB raw; median of {runs}; ratios to zlib level 1")
    print(f"{'codec level':38s} {'seconds':>8} {'MB/s':>7} {'x zlib1':>8} {'MiB':>7} {'x size':>7} {'raw/out':>8}")
    for name, s in med.items():
        size = len(results[name])
        print(f"{name:38s} {s:8.3f} {len(raw) / s / 1e6:7.0f} {s / base_s:8.2f} {size / 2**20:7.2f} "
              f"{size / base_b:7.3f} {len(raw) / size:8.2f}")


def nifti_table(image: np.ndarray, labels: np.ndarray, geometry: Geometry, folder: Path, runs: int) -> None:
    """challenge.nifti's read and write with each codec, and the writer as it was. Reads are of the file the
    old writer made (zlib level 1, as existing data sets are) and of the one ``write_*`` made with the
    default codec."""
    names = sorted(codec.available(), key=lambda name: name != "zlib")  # zlib (the reader before) first
    writes: dict[str, Callable[[], Any]] = {
        "write CT, before (sitk .nii + gzip 1)": lambda: legacy_write(image, geometry, folder / "before_ct.nii.gz"),
        "write labels, before (sitk .nii + gzip 1)": lambda: legacy_write(labels, geometry,
                                                                          folder / "before_lab.nii.gz")}
    for name in names:
        writes[f"write_image CT, {name}"] = with_codec(
            name, lambda n=name: write_image(image, geometry, folder / f"{n}_ct.nii.gz"))
        writes[f"write_label labels, {name}"] = with_codec(
            name, lambda n=name: write_label(labels, geometry, folder / f"{n}_lab.nii.gz"))
    write_s, _ = interleaved(writes, runs)
    default = codec.by_name("auto").name
    reads: dict[str, Callable[[], Any]] = {}
    for source in ("before", default):
        for name in names:
            ct, lab = folder / f"{source}_ct.nii.gz", folder / f"{source}_lab.nii.gz"
            reads[f"read_image CT ({source} file), {name}"] = with_codec(name, lambda p=ct: read_image(p))
            reads[f"read_labels labels ({source} file), {name}"] = with_codec(
                name, lambda p=lab: read_labels(p, geometry))
    read_s, results = interleaved(reads, runs)
    for name, result in results.items():
        assert np.array_equal(result[0], image if " CT " in name else labels), name
    print(f"\nchallenge.nifti, {'x'.join(map(str, geometry.size))}: median of {runs}; ratios to the first row "
          f"of each block (codecs: {', '.join(names)}; FLARE_CODEC's default here: {default})")
    print(f"{'operation':48s} {'seconds':>8} {'x first':>8} {'file MiB':>9}")
    for kind, file in (("CT", "ct"), ("labels", "lab")):
        rows = [(name, s) for name, s in write_s.items() if f" {kind}," in name]
        for name, s in rows:
            source = "before" if "before" in name else name.rsplit(", ", 1)[1]
            size = (folder / f"{source}_{file}.nii.gz").stat().st_size / 2**20
            print(f"{name:48s} {s:8.3f} {s / rows[0][1]:8.2f} {size:9.2f}")
    for kind, file in (("CT", "ct"), ("labels", "lab")):
        for source in ("before", default):
            rows = [(name, s) for name, s in read_s.items() if f" {kind} ({source} file)" in name]
            size = (folder / f"{source}_{file}.nii.gz").stat().st_size / 2**20
            for name, s in rows:
                print(f"{name:48s} {s:8.3f} {s / rows[0][1]:8.2f} {size:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 100), metavar=("X", "Y", "Z"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES),
                        help="which tables (default: all three)")
    args = parser.parse_args()
    from phantoms.generate import PhantomConfig, generate_case

    phantom = generate_case(args.seed, 0, PhantomConfig(shape=tuple(args.shape), orientation="LPS"))
    versions = {"zlib": zlib.ZLIB_RUNTIME_VERSION, "isal": optional("isal") and optional("isal").__version__,
                "zlib-ng": zlib_ng and zlib_ng.ZLIBNG_VERSION, "libdeflate (deflate)":
                libdeflate and getattr(libdeflate, "__version__", "?")}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    ct, lab = phantom.image.tobytes(), phantom.labels.tobytes()
    if "inflate" in args.tables:
        inflate_table("CT int16", ct, args.runs)
        inflate_table("labels uint8", lab, args.runs)
    if "deflate" in args.tables:
        deflate_table("CT int16", ct, args.runs)
        deflate_table("labels uint8", lab, args.runs)
    if "nifti" in args.tables:
        with tempfile.TemporaryDirectory(prefix="codec_bench_") as tmp:
            nifti_table(phantom.image, phantom.labels, phantom.geometry, Path(tmp), args.runs)


if __name__ == "__main__":
    main()
