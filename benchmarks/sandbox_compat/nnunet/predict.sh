#!/bin/sh
# FLARE22 entry point of an nnU-Net v2 team: /workspace/inputs/<Case>_0000.nii.gz -> /workspace/outputs/<Case>.nii.gz
nnUNetv2_predict -i /workspace/inputs -o /workspace/outputs -d 1 -c 3d_fullres -f 0 \
  -tr nnUNetTrainer -chk checkpoint_final.pth --disable_tta -npp 1 -nps 1 -device cpu
