#!/bin/sh
# Stages /workspace/inputs/<Case>_0000.nii.gz in /workspace/tmp, then copies it to /workspace/outputs/<Case>.nii.gz.
set -eu
mkdir -p /workspace/tmp
for f in /workspace/inputs/*_0000.nii.gz; do
  case_id=$(basename "$f" _0000.nii.gz)
  cp "$f" "/workspace/tmp/$case_id.nii.gz"
  cp "/workspace/tmp/$case_id.nii.gz" "/workspace/outputs/$case_id.nii.gz"
done
