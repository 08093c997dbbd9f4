# The FLARE22 predictor image: `docker run ... IMAGE /bin/bash -c "sh predict.sh"` segments every
# /workspace/inputs/<Case>_0000.nii.gz into /workspace/outputs/<Case>.nii.gz.
#
# Build with BuildKit (DOCKER_BUILDKIT=1; no `# syntax=` line, so no registry is contacted):
#   offline, CPU torch:  bash docker/build_image.sh IMAGE    (fills docker/wheelhouse/, builds --network none)
#   with a registry/GPU: DOCKER_BUILDKIT=1 docker build \
#                          --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime -t IMAGE .
# Dependencies come from docker/wheelhouse/ (--no-index) when it holds wheels, else from PyPI. torch is
# installed only if the base image lacks it (CUDA base images ship their own).
# It runs as the non-root user flare (uid/gid 1000): a bind-mounted outputs folder must be writable by
# uid 1000 (chmod 0777, or owned by 1000), or the run is given `--user <owner uid>:<gid>`.
ARG BASE_IMAGE=flare-base:bookworm
FROM ${BASE_IMAGE}

ARG TORCH_SPEC=torch==2.13.0+cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONPATH=/opt/flare

# The wheelhouse is bind-mounted, not copied: the 190 MB torch wheel never lands in a layer.
RUN --mount=type=bind,source=docker,target=/tmp/ctx \
    set -e; \
    if ls /tmp/ctx/wheelhouse/*.whl >/dev/null 2>&1; then \
      src="--no-index --find-links /tmp/ctx/wheelhouse"; \
    else \
      src=""; \
    fi; \
    python3 -m pip install --no-cache-dir $src -r /tmp/ctx/requirements-image.txt; \
    python3 -c "import torch" 2>/dev/null || python3 -m pip install --no-cache-dir $src "$TORCH_SPEC"; \
    python3 -c "import torch, numpy, scipy, SimpleITK; print('torch', torch.__version__)"

# The image runs as a non-root user by default (as grand-challenge-forge's templates do): flare, uid/gid
# 1000, the uid that `docker run --user 1000:1000` also gives (Docker then sets HOME=/home/flare from
# /etc/passwd). Nothing is written there; predict.sh moves HOME to /tmp when it is not writable (another
# --user uid, a read-only root filesystem).
RUN groupadd --gid 1000 flare \
    && useradd --uid 1000 --gid 1000 --no-log-init --no-create-home --home-dir /home/flare \
         --shell /bin/sh flare \
    && install -d -o 1000 -g 1000 -m 0755 /home/flare

# Code and weights last: they change most often. They stay root-owned and read-only for the user.
COPY challenge/ /opt/flare/challenge/
COPY predictor/ /opt/flare/predictor/
WORKDIR /workspace
COPY docker/predict.sh /workspace/predict.sh
# /workspace/outputs is usually a bind mount (the host folder's own permissions then apply); 1777 here
# covers a run without one, for any uid.
RUN mkdir -p /workspace/inputs /workspace/outputs && chmod -R a+rX /opt/flare /workspace \
    && chmod 1777 /workspace/outputs

USER flare
# The code imports as the user the image runs as (no byte-code or cache is written: nothing to write).
RUN python3 -c "import predictor.pipeline"

CMD ["/bin/bash", "-c", "sh predict.sh"]
