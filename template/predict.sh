#!/bin/sh
# The FLARE entry point, run as `/bin/bash -c "sh predict.sh"` from /workspace: `sh` is dash, so this file
# must be POSIX sh (no [[ ]], no `source`, no arrays). Read /workspace/inputs/<Case>_0000.nii.gz (read-only),
# write /workspace/outputs/<Case>.nii.gz (uint8 labels 0..13 on exactly the input's grid). No network.
set -eu
exec python3 /opt/team/predict.py /workspace/inputs /workspace/outputs
