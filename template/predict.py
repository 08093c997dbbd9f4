"""A stand-in model: replace ``segment`` with yours.

For each ``INPUTS/<Case>_0000.nii.gz`` it writes ``OUTPUTS/<Case>.nii.gz``: a uint8 label map (FLARE22 ids
0..13) on exactly the input's grid (size, spacing, origin, direction), as the organizers' check demands.
The stand-in labels the largest connected blob of soft tissue between 60 and 180 HU as liver (1).
"""

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SUFFIX = "_0000.nii.gz"


def segment(image: sitk.Image) -> sitk.Image:
    """The model: a CT in Hounsfield units -> uint8 labels on the same grid."""
    tissue = sitk.BinaryThreshold(image, lowerThreshold=60, upperThreshold=180, insideValue=1, outsideValue=0)
    blobs = sitk.RelabelComponent(sitk.ConnectedComponent(tissue), sortByObjectSize=True)
    liver = sitk.Cast(sitk.BinaryThreshold(blobs, 1, 1, 1, 0), sitk.sitkUInt8)  # the largest blob
    liver.CopyInformation(image)
    return liver


def main(inputs: Path, outputs: Path) -> int:
    failed = 0
    for path in sorted(inputs.glob(f"*{SUFFIX}")):
        case = path.name[: -len(SUFFIX)]
        try:
            labels = segment(sitk.ReadImage(str(path)))
            assert sitk.GetArrayViewFromImage(labels).dtype == np.uint8
            sitk.WriteImage(labels, str(outputs / f"{case}.nii.gz"), useCompression=True)
        except Exception as err:  # one bad case must not stop the others
            print(f"{path.name}: {type(err).__name__}: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
