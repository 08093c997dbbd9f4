"""The FLARE22 challenge's definition: organs, tolerances, file naming, NIfTI I/O, rules.

Every other package imports from here; this package imports none of them.
"""

__version__ = "0.1.0"
