"""Case ids and file names.

A case is keyed by its id ``<Case>``: the image is ``<Case>_0000.nii.gz`` (one CT channel,
nnU-Net style) and every label map or prediction is ``<Case>.nii.gz``. Every CSV's ``Name``
column holds the case id.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIX = "_0000.nii.gz"
LABEL_SUFFIX = ".nii.gz"


def image_name(case: str) -> str:
    return f"{case}{IMAGE_SUFFIX}"


def label_name(case: str) -> str:
    return f"{case}{LABEL_SUFFIX}"


def case_from_image(name: str | Path) -> str:
    """``FLARE22_Tr_0001_0000.nii.gz`` -> ``FLARE22_Tr_0001``. Raises ValueError on other names."""
    base = Path(name).name
    if not base.endswith(IMAGE_SUFFIX) or len(base) == len(IMAGE_SUFFIX):
        raise ValueError(f"{name}: not an image name of the form <Case>{IMAGE_SUFFIX}")
    return base[: -len(IMAGE_SUFFIX)]


def case_from_label(name: str | Path) -> str:
    """``FLARE22_Tr_0001.nii.gz`` -> ``FLARE22_Tr_0001``. Raises ValueError on other names."""
    base = Path(name).name
    if not base.endswith(LABEL_SUFFIX) or len(base) == len(LABEL_SUFFIX):
        raise ValueError(f"{name}: not a label name of the form <Case>{LABEL_SUFFIX}")
    return base[: -len(LABEL_SUFFIX)]


def list_images(folder: str | Path) -> dict[str, Path]:
    """Case id -> path for every regular ``<Case>_0000.nii.gz`` in ``folder``, sorted by case id."""
    found = {case_from_image(p.name): p for p in Path(folder).iterdir()
             if p.name.endswith(IMAGE_SUFFIX) and p.is_file() and len(p.name) > len(IMAGE_SUFFIX)}
    return dict(sorted(found.items()))


def list_labels(folder: str | Path) -> dict[str, Path]:
    """Case id -> path for every regular ``<Case>.nii.gz`` in ``folder`` (images excluded), sorted."""
    found = {case_from_label(p.name): p for p in Path(folder).iterdir()
             if p.name.endswith(LABEL_SUFFIX) and not p.name.endswith(IMAGE_SUFFIX)
             and p.is_file() and len(p.name) > len(LABEL_SUFFIX)}
    return dict(sorted(found.items()))
