"""Team archives (``docker save`` output, gzip or plain): checked before they are loaded.

The archive's ``manifest.json`` is read first, without loading anything: it must list exactly one image,
tagged exactly ``<team>:latest``, where ``<team>`` is the archive's file name up to its first dot in lower
case (:func:`challenge.teams.team_from_archive`, as FLARE22 derived it). Anything else is refused before
``docker load``, so loading never moves another tag (an archive that also carries ``victim:latest``
would otherwise silently retag another team's image). The image ID (the digest of the image's config) is
returned too, so that an image already loaded can be recognised.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from challenge.teams import TeamNameError, team_from_archive
from resource_monitor.errors import HostFault, MonitorError, engine_gone, one_line

MAX_MANIFEST_BYTES = 1 << 20  # a manifest.json larger than 1 MiB is not docker save's
MAX_MEMBERS = 100_000  # tar entries read while looking for the manifest


@dataclass(frozen=True)
class Manifest:
    """What an archive holds: its team, its one tag, and the image ID (``sha256:...``)."""

    team: str
    tag: str
    image_id: str


def read_manifest(archive: Path) -> Manifest:
    """Check ``archive`` without loading it; MonitorError (one line naming the file) if it is not one image
    tagged ``<team>:latest``."""
    try:
        team = team_from_archive(archive)
    except TeamNameError as err:
        raise MonitorError(str(err)) from None
    entries = _manifest_entries(archive)
    if len(entries) != 1 or not isinstance(entries[0], dict):
        raise MonitorError(f"{archive.name}: holds {len(entries)} images, not exactly one ({team}:latest)")
    tags = entries[0].get("RepoTags") or []
    if tags != [f"{team}:latest"]:
        shown = ", ".join(str(t) for t in tags[:5]) or "no tag"
        raise MonitorError(f"{archive.name}: tagged {shown}, not exactly {team}:latest")
    config = str(entries[0].get("Config", ""))
    digest = config.rsplit("/", 1)[-1].removesuffix(".json")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise MonitorError(f"{archive.name}: manifest.json names no image config ({config[:80]!r})")
    return Manifest(team, f"{team}:latest", f"sha256:{digest}")


def _manifest_entries(archive: Path) -> list:
    """The parsed ``manifest.json`` of a tar or tar.gz, read as a stream (nothing is extracted)."""
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for n, member in enumerate(tar):
                if n >= MAX_MEMBERS:
                    break
                if member.name.lstrip("./") != "manifest.json":
                    continue
                if not member.isfile() or member.size > MAX_MANIFEST_BYTES:
                    raise MonitorError(f"{archive.name}: manifest.json is not a small regular file")
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file
                data = json.loads(handle.read())
                return data if isinstance(data, list) else []
    except (OSError, tarfile.TarError, EOFError, ValueError) as err:
        raise MonitorError(f"{archive.name}: not a docker image archive ({one_line(err, 150)})") from None
    raise MonitorError(f"{archive.name}: not a docker image archive (no manifest.json)")


def already_loaded(client, manifest: Manifest) -> bool:
    """Whether the engine holds the archive's image (the same image ID) under the team's tag already."""
    try:
        return bool(client.images.get(manifest.tag).id == manifest.image_id)
    except Exception:  # noqa: BLE001 - not there (or the engine is gone: load_archive then says so)
        return False


def load_archive(client, archive: Path, manifest: Manifest | None = None) -> tuple[str, str]:
    """Check ``archive`` (:func:`read_manifest`), then ``docker load`` it unless the engine holds its image
    under the team's tag already (the same image ID); returns (team, "team:latest").

    ``manifest``: the archive's :func:`read_manifest`, when the caller has it already. MonitorError when the
    archive is refused or the engine refuses it; HostFault when the engine is gone.
    """
    import docker

    manifest = manifest or read_manifest(archive)
    if already_loaded(client, manifest):
        return manifest.team, manifest.tag
    try:
        with archive.open("rb") as f:
            images = client.images.load(f)
    except (OSError, docker.errors.DockerException) as err:
        if engine_gone(err):
            raise HostFault(f"the Docker engine went away while loading {archive.name} ({one_line(err)})") from None
        raise MonitorError(f"{archive.name}: not a loadable docker image archive ({one_line(err)})") from None
    tags = sorted(t for image in images for t in image.tags)
    if manifest.tag not in tags:
        raise MonitorError(f"{archive.name}: loaded {', '.join(tags) or 'no tagged image'}, not {manifest.tag}")
    return manifest.team, manifest.tag
