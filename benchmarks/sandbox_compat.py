"""Which sandbox options real FLARE images survive: the container's user, a read-only root file system, and
an engine with user namespaces (userns-remap), each on top of the monitor's own flags.

Every image runs every case once per configuration, through the FLARE contract (``/bin/bash -c "sh
predict.sh"``, the case alone in a read-only /workspace/inputs, a 0777 /workspace/outputs, staged as
resource_monitor.monitor stages them) with the parameters of ``DockerRunner.params`` (no network, all
capabilities dropped, no-new-privileges, pids/memory/shm limits, capped log), plus:

    a  image user    nothing more (the image's own USER)
    b  user 1000     --user 1000:1000
    c  user 65534    --user 65534:65534 (nobody)
    d  read-only     --read-only --tmpfs /tmp (the image's own USER)
    e  userns-remap  as a, on the engine given by --userns-host (the images are loaded there if missing)
    f  strictest     c and d together: --user 65534:65534 --read-only --tmpfs /tmp

For each run: whether every case's <Case>.nii.gz is there and reads as a label map on the input's grid,
the wall time per case, what the container wrote outside its mounts (``docker diff`` before removal), the
other files it left in /workspace/outputs with their host owner, and the failure message.

    python benchmarks/sandbox_compat.py --images flare-predictor:latest sbx-nnunet:latest sbx-rootcopy:latest \\
        --cases CASES [--userns-host unix://DIR/docker.sock | --start-userns-engine DIR] [--json FILE]

CASES holds <Case>_0000.nii.gz files (or an images/ folder of them, as `python -m phantoms` writes).
--start-userns-engine DIR starts docker/test_engine.sh's disposable engine in DIR with --userns-remap=default
(a `dockerd` wrapper first on its PATH adds the flag; the script itself is unchanged) and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from challenge import rules  # noqa: E402
from challenge.nifti import read_geometry, read_labels  # noqa: E402
from resource_monitor.runners import DockerRunner  # noqa: E402
from resource_monitor.settings import RunSettings  # noqa: E402

DOCKER_CLI = "/usr/bin/docker"  # the engine's own client (a newer CLI earlier on PATH may lack buildx)
MAIN_HOST = "unix:///var/run/docker.sock"  # the main engine, whatever DOCKER_HOST says
LABEL = "flare-harness.sandbox-compat"  # not the monitor's labels: its clean-up never takes these
CONFIGS: dict[str, tuple[str, dict]] = {
    "a": ("image user", {}),
    "b": ("--user 1000:1000", {"user": "1000:1000"}),
    "c": ("--user 65534:65534", {"user": "65534:65534"}),
    "d": ("--read-only --tmpfs /tmp", {"read_only": True, "tmpfs": {"/tmp": ""}}),
    "e": ("userns-remap", {}),
    "f": ("--user 65534:65534 --read-only --tmpfs /tmp", {"user": "65534:65534", "read_only": True,
                                                          "tmpfs": {"/tmp": ""}}),
}


@dataclass
class CaseRun:
    case: str
    ok: bool
    seconds: float
    exit_code: int | None
    message: str = ""
    written: list[str] = field(default_factory=list)  # docker diff: "A /path", "C /path", "D /path"
    other_outputs: list[str] = field(default_factory=list)  # "name (uid N)"
    output_uid: int | None = None
    log_tail: list[str] = field(default_factory=list)  # the container's last log lines (stdout and stderr)


def cases_of(folder: Path) -> list[Path]:
    images = folder / "images" if (folder / "images").is_dir() else folder
    return sorted(images.glob("*_0000.nii.gz"))


def stage(work: Path, image: Path) -> tuple[Path, Path]:
    """As resource_monitor.monitor._stage: the case alone in inputs/ (0755, file 0644), outputs/ 0777, both
    inside a mkdtemp folder (0700)."""
    in_dir, out_dir = work / "inputs", work / "outputs"
    in_dir.mkdir()
    out_dir.mkdir()
    shutil.copyfile(image, in_dir / image.name)
    os.chmod(in_dir / image.name, 0o644)
    os.chmod(in_dir, 0o755)
    os.chmod(out_dir, 0o777)
    return in_dir, out_dir


def engine_made(path: str) -> bool:
    """The mount points (and their parents) that the engine itself adds to the container's layer."""
    mounts = (rules.CONTAINER_INPUTS, rules.CONTAINER_OUTPUTS)
    return any(m == path or m.startswith(path + "/") or path.startswith(m + "/") for m in mounts)


def failure_line(log: str) -> str:
    """The line of the log that says why: the last one naming an error, else the last one."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in reversed(lines):
        low = ln.lower()
        if any(w in low for w in ("error", "denied", "read-only", "not permitted", "cannot", "no such")):
            return ln[:240]
    return lines[-1][:240] if lines else ""


def check_output(out_dir: Path, case: str, source: Path) -> tuple[bool, str, int | None]:
    out = out_dir / f"{case}.nii.gz"
    try:
        st = out.lstat()
    except FileNotFoundError:
        return False, "no output", None
    if not stat.S_ISREG(st.st_mode):
        return False, "output is not a regular file", st.st_uid
    try:
        read_labels(out, read_geometry(source))
    except Exception as err:  # noqa: BLE001 - any reader error means "not a valid NIfTI label map"
        return False, f"invalid NIfTI: {err}"[:240], st.st_uid
    return True, "", st.st_uid


def run_case(client, image: str, config: dict, source: Path, args) -> CaseRun:
    import docker

    case = source.name[: -len("_0000.nii.gz")]
    work = Path(tempfile.mkdtemp(prefix="sandbox-compat-"))
    try:
        in_dir, out_dir = stage(work, source)
        settings = RunSettings(inputs=in_dir, results=work / "results", team="compat", image=image,
                               memory=args.memory, shm_size=args.shm_size, cpus=args.cpus)
        params = DockerRunner(client, image, uuid.uuid4().hex, settings).params(case, in_dir, out_dir)
        params["labels"] = {LABEL: str(os.getpid())}
        params["name"] = f"sandbox-compat-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        params.update(config)
        container = client.containers.create(detach=True, **params)
        try:
            t0 = time.monotonic()
            container.start()
            try:
                code = container.wait(timeout=args.timeout)["StatusCode"]
            except Exception:  # noqa: BLE001 - requests' read timeout
                container.kill()
                code = None
            seconds = time.monotonic() - t0
            log = container.logs(stdout=True, stderr=True).decode(errors="replace")
            written = [f"{'CAD'[d['Kind']]} {d['Path']}" for d in (container.diff() or [])
                       if not engine_made(d["Path"])]
        finally:
            container.remove(force=True)
        ok, why, uid = check_output(out_dir, case, source)
        message = "" if ok else (why if code == 0 else f"exit {code}: {failure_line(log)}" if code is not None
                                 else f"timeout after {args.timeout:.0f} s")
        others = sorted(f"{p.name} (uid {p.lstat().st_uid})" for p in out_dir.iterdir()
                        if p.name != f"{case}.nii.gz")
        return CaseRun(case, ok and code == 0, round(seconds, 1), code, message, written, others, uid,
                       log.splitlines()[-40:])
    except docker.errors.APIError as err:
        return CaseRun(case, False, 0.0, None, f"engine refused: {err.explanation or err}"[:240])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarize_written(runs: list[CaseRun]) -> str:
    """The added/changed paths outside the mounts, the deepest common folders first, e.g. '/tmp (12)'."""
    paths = sorted({w for r in runs for w in r.written})
    leaves = [w for w in paths if not any(o != w and o[2:].startswith(w[2:] + "/") for o in paths)]
    groups: dict[str, int] = {}
    for w in leaves:
        parts = w[2:].split("/")
        key = "/".join(parts[:3]) if len(parts) > 3 else w[2:]
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{k} ({n})" if n > 1 else k for k, n in sorted(groups.items())) or "nothing"


def ensure_image(host: str, image: str) -> None:
    """Copy IMAGE from the main engine into the engine at HOST (docker save | docker -H HOST load) unless that
    engine already has it under the same image id."""
    def image_id(*engine: str) -> str:
        done = subprocess.run([DOCKER_CLI, *engine, "image", "inspect", "--format", "{{.Id}}", image],
                              capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    if image_id("-H", host) == image_id("-H", MAIN_HOST) != "":
        return
    save = subprocess.Popen([DOCKER_CLI, "-H", MAIN_HOST, "save", image], stdout=subprocess.PIPE)
    assert save.stdout is not None
    load = subprocess.run([DOCKER_CLI, "-H", host, "load", "-q"], stdin=save.stdout, capture_output=True, text=True)
    save.stdout.close()
    if save.wait() or load.returncode:
        raise SystemExit(f"sandbox_compat: could not load {image} into {host}: {load.stderr.strip()}")


def start_userns_engine(folder: Path) -> tuple[str, dict]:
    """docker/test_engine.sh start FOLDER with a `dockerd` wrapper that adds --userns-remap=default."""
    real = shutil.which("dockerd")
    if not real:
        raise SystemExit("sandbox_compat: dockerd is not installed")
    shim = folder / "shim"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "dockerd").write_text(f'#!/bin/sh\nexec {real} "$@" --userns-remap=default\n')
    (shim / "dockerd").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim}:{os.environ.get('PATH', '')}")
    done = subprocess.run(["bash", str(REPO / "docker/test_engine.sh"), "start", str(folder)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"sandbox_compat: the userns engine did not start: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1], env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", nargs="+", required=True, help="local image tags on the main engine")
    p.add_argument("--cases", type=Path, required=True, help="folder of <Case>_0000.nii.gz (or its images/)")
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS),
                   help="configurations to run (default all; e needs --userns-host or --start-userns-engine)")
    p.add_argument("--userns-host", help="DOCKER_HOST of an engine started with --userns-remap (configuration e)")
    p.add_argument("--start-userns-engine", type=Path, metavar="DIR",
                   help="start (and stop at the end) docker/test_engine.sh's engine in DIR with --userns-remap")
    p.add_argument("--memory", default="8g", help="memory limit, also the swap limit (default 8g)")
    p.add_argument("--shm-size", default="2g", help="/dev/shm size (default 2g)")
    p.add_argument("--cpus", type=float, default=None, help="CPU quota (default none, as the monitor)")
    p.add_argument("--timeout", type=float, default=900.0, help="per-case limit in seconds (default 900)")
    p.add_argument("--json", type=Path, help="also write every run's details here")
    args = p.parse_args(argv)

    import docker

    sources = cases_of(args.cases)
    if not sources:
        p.error(f"no *_0000.nii.gz under {args.cases}")
    main_client = docker.DockerClient(base_url=MAIN_HOST, timeout=args.timeout + 60)
    engine_env = None
    if args.start_userns_engine:
        args.userns_host, engine_env = start_userns_engine(args.start_userns_engine.resolve())
    configs = [c for c in args.configs if c != "e" or args.userns_host]
    if "e" in args.configs and not args.userns_host:
        print("sandbox_compat: configuration e skipped (no --userns-host)", file=sys.stderr)
    userns_client = None
    if args.userns_host:
        userns_client = docker.DockerClient(base_url=args.userns_host, timeout=args.timeout + 60)
        if not any("userns" in o for o in userns_client.info().get("SecurityOptions") or []):
            raise SystemExit(f"sandbox_compat: {args.userns_host} does not run with userns-remap")

    rows, details = [], []
    try:
        for image in args.images:
            for key in configs:
                label, config = CONFIGS[key]
                client = main_client
                if key == "e" and userns_client is not None:
                    ensure_image(args.userns_host, image)
                    client = userns_client
                runs = [run_case(client, image, config, s, args) for s in sources]
                good = sum(r.ok for r in runs)
                times = [r.seconds for r in runs if r.ok] or [r.seconds for r in runs]
                fail = next((r.message for r in runs if not r.ok), "")
                uids = sorted({r.output_uid for r in runs if r.output_uid is not None})
                others = sorted({o.split(" (")[0] for r in runs for o in r.other_outputs})
                rows.append((image, f"{key}: {label}", f"{good}/{len(runs)}",
                             f"{sum(times) / len(times):.1f}", summarize_written(runs),
                             ",".join(map(str, uids)) or "-", ", ".join(others) or "-", fail or "-"))
                details.append({"image": image, "config": key, "label": label, "runs": [asdict(r) for r in runs]})
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    finally:
        if args.start_userns_engine:
            subprocess.run(["bash", str(REPO / "docker/test_engine.sh"), "stop",
                            str(args.start_userns_engine.resolve())], env=engine_env, check=False)

    head = ("image", "configuration", "cases ok", "s/case", "written outside the mounts (docker diff)",
            "output uid (host)", "other files in outputs", "failure")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    if args.json:
        args.json.write_text(json.dumps(details, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
