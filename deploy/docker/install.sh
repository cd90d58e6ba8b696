#!/bin/sh
# Install the VidPlan server into the active Python environment, exactly as the image's builder stage does
# (the Dockerfile runs this file; scripts/check_image_install.py runs it in a clean virtualenv to prove it).
#
#   VARIANT=gpu|cpu          gpu (default): PyPI's torch, the CUDA build; cpu: the CPU wheel (no CUDA packages)
#   TORCH_VERSION=2.13.0     the torch pyproject.toml allows
#   TORCH_INDEX_URL=auto     where torch comes from: auto (default) is pip's index for gpu and PyTorch's CPU index
#                            for cpu; a URL; or empty for pip's configured index (a mirror, a local wheel house)
#   EXTRAS=scale             optional extras of the server (scale: Ray Serve, for KubeRay images)
#   SRC=DIR                  the source tree (default: the current folder)
#
# Client and server go in one pip command, non-editable, so that pip takes vidplan-client from ./client and the
# bundled checkpoint lands in site-packages with the package.
set -eu
VARIANT=${VARIANT:-gpu}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
SRC=${SRC:-.}
TORCH_INDEX_URL=${TORCH_INDEX_URL-auto}
case "$VARIANT" in
  cpu) [ "$TORCH_INDEX_URL" = auto ] && TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ;;
  gpu) [ "$TORCH_INDEX_URL" = auto ] && TORCH_INDEX_URL= ;;
  *) echo "install.sh: VARIANT must be gpu or cpu, got $VARIANT" >&2; exit 2 ;;
esac

python -m pip install --no-cache-dir --upgrade pip
# shellcheck disable=SC2086 # the index option is meant to vanish when TORCH_INDEX_URL is empty
python -m pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION"
python -m pip install --no-cache-dir "$SRC/client" "$SRC${EXTRAS:+[$EXTRAS]}"

# Smoke test of what was installed: versions, the bundled checkpoint, and the serving stack's imports.
vidplan --version
vidplan-client --version
python - <<'PY'
from importlib import resources

import torch

import vidplan_server.serving.server  # noqa: F401 - gRPC, FastAPI, uvicorn, prometheus
from vidplan_server.models.checkpoint import read_manifest

bundle = resources.files("vidplan_server") / "checkpoints" / "default"
modules = read_manifest(str(bundle))["modules"]
print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}); bundled checkpoint: {sorted(modules)}")
PY
