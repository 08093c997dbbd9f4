#!/bin/sh
# Copies /workspace/inputs/<Case>_0000.nii.gz to /workspace/outputs/<Case>.nii.gz (a NIfTI, not a segmentation).
set -eu
for f in /workspace/inputs/*_0000.nii.gz; do
  case_id=$(basename "$f" _0000.nii.gz)
  cp "$f" "/workspace/outputs/$case_id.nii.gz"
done
