"""The reference FLARE22 predictor: a two-stage (coarse ROI, then fine) 3D U-Net segmentation.

``predictor.pipeline.Predictor`` works on in-memory arrays (no file I/O, no SimpleITK), so the GPU
benchmark can run it without NIfTI libraries; ``predictor.cli`` adds streaming NIfTI I/O and
``predictor.training`` (``python -m predictor.train``) trains and exports the weights in
``predictor/weights/``.
"""

from challenge import __version__

__all__ = ["__version__"]
