"""Synthetic abdominal CT phantoms with the 13 FLARE22 organ labels.

API: ``generate_case(seed, index, config) -> Phantom`` (arrays in (k, j, i) order, int16 HU image,
uint8 labels, ``challenge.nifti.Geometry``) and ``write_dataset(out_dir, n_cases, seed, config)``
(FLARE layout: ``images/<Case>_0000.nii.gz``, ``labels/<Case>.nii.gz``). CLI: ``python -m phantoms``.
"""

from .domains import DOMAIN_NAMES, DOMAINS, Domain
from .generate import Phantom, PhantomConfig, case_id, generate_case, write_case, write_dataset

__all__ = ["DOMAINS", "DOMAIN_NAMES", "Domain", "Phantom", "PhantomConfig", "case_id", "generate_case",
           "write_case", "write_dataset"]
