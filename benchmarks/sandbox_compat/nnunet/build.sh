#!/usr/bin/env bash
# Build the nnU-Net v2 test image of docs/experiments/sandbox-compat.md with no registry and no trained weights:
#   bash benchmarks/sandbox_compat/nnunet/build.sh WORK [IMAGE]        (default IMAGE sbx-nnunet:latest)
# 1. the host's pip downloads nnunetv2 and its dependencies as CPython 3.11 manylinux x86_64 wheels into
#    WORK/ctx/wheels, with CPU torch (TORCH_SPEC, default torch==2.13.0+cpu); acvl-utils has only an sdist on
#    PyPI, so it is built into a wheel here;
# 2. IMAGE-env: the Dockerfile's env stage (nnunetv2 installed with --no-index, built --network none);
# 3. six 64x64x32 phantoms in nnU-Net's raw layout (Dataset001_Phantom), nnUNetv2_plan_and_preprocess 3d_fullres,
#    then one 50-iteration epoch of the default nnUNetTrainer on the CPU, fold 0 (about 8 min on 2 cores), all
#    in IMAGE-env with no network;
# 4. IMAGE: the env stage plus the results folder (plans, dataset.json, checkpoint_final.pth) and predict.sh.
# The trainer stays the default class: nnUNetTrainer_1epoch lives among the trainer variants, whose import pulls in
# timm -> torchvision, and PyPI's torchvision wheel is a CUDA build that cannot load against CPU torch.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
WORK=$(realpath -m -- "${1:?usage: build.sh WORK [IMAGE]}")
IMAGE=${2:-sbx-nnunet:latest}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
DOCKER=/usr/bin/docker
ctx=$WORK/ctx
nn=$WORK/nn
mkdir -p "$ctx/wheels" "$WORK/sdist"

start=$(date +%s)
if ! compgen -G "$ctx/wheels/acvl_utils-*.whl" >/dev/null; then
  python3 -m pip download -q --no-deps --dest "$WORK/sdist" 'acvl-utils>=0.2.6,<0.3'
  python3 -m pip wheel -q --no-deps -w "$ctx/wheels" "$WORK"/sdist/acvl_utils-*.tar.gz
fi
python3 -m pip download -q --dest "$ctx/wheels" --find-links "$ctx/wheels" --only-binary=:all: \
  --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 nnunetv2 "$TORCH_SPEC"
echo "nnunet: $(find "$ctx/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$ctx/wheels" | cut -f1)"
cp "$here/Dockerfile" "$here/predict.sh" "$ctx/"
DOCKER_BUILDKIT=1 "$DOCKER" build -q --network none --target env -t "$IMAGE-env" "$ctx" >/dev/null

raw=$nn/raw/Dataset001_Phantom
if [ ! -f "$nn/results/Dataset001_Phantom/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth" ]; then
  (cd "$repo" && python3 -m phantoms --out "$WORK/phantoms" --count 6 --shape 64 64 32 --seed 0 -q)
  mkdir -p "$raw/imagesTr" "$raw/labelsTr" "$nn/pre" "$nn/results"
  cp "$WORK"/phantoms/images/*.nii.gz "$raw/imagesTr/"
  cp "$WORK"/phantoms/labels/*.nii.gz "$raw/labelsTr/"
  (cd "$repo" && python3 - "$raw/dataset.json" <<'EOF'
import json
import sys

from challenge.labels import BY_ID

labels = {"background": 0, **{organ.short: i for i, organ in BY_ID.items()}}
with open(sys.argv[1], "w") as f:
    json.dump({"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 6, "file_ending": ".nii.gz"}, f)
EOF
  )
  run() {
    "$DOCKER" run --rm --network none --shm-size 2g -v "$nn:/nn" -v "$here:/scripts:ro" \
      -e nnUNet_raw=/nn/raw -e nnUNet_preprocessed=/nn/pre -e nnUNet_results=/nn/results \
      -e nnUNet_compile=f -e nnUNet_n_proc_DA=1 "$IMAGE-env" "$@"
  }
  run nnUNetv2_plan_and_preprocess -d 1 -c 3d_fullres --verify_dataset_integrity -np 2 -npfp 2 >"$WORK/plan.log"
  run python3 /scripts/train_one_epoch.py >"$WORK/train.log"
fi

src=$nn/results/Dataset001_Phantom/nnUNetTrainer__nnUNetPlans__3d_fullres
dst=$ctx/results/Dataset001_Phantom/nnUNetTrainer__nnUNetPlans__3d_fullres
rm -rf "$ctx/results"
mkdir -p "$dst/fold_0"
cp "$src/dataset.json" "$src/plans.json" "$src/dataset_fingerprint.json" "$dst/"
cp "$src/fold_0/checkpoint_final.pth" "$dst/fold_0/"
chmod -R a+rX "$ctx/results"
DOCKER_BUILDKIT=1 "$DOCKER" build -q --network none -t "$IMAGE" "$ctx" >/dev/null
size=$("$DOCKER" image inspect "$IMAGE" --format '{{.Size}}')
echo "nnunet: built $IMAGE in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
