"""The FLARE22 challenge's definition: organs, tolerances, file naming, NIfTI I/O, rules, the results
layout, team names, exit codes and the command-line vocabulary.

Every other package imports from here; this package imports none of them. ``__version__`` is the
harness's version (the installed distribution's, or the source tree's when it is not installed).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flare-harness")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+source"
