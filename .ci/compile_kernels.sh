#!/usr/bin/env bash
# Kernel compile gate: AOT-compile every Pallas kernel for TPU v5e/v6e and NVIDIA H100, no device.
# Usage: bash .ci/compile_kernels.sh [SIDE_DIR]   (default ./.side; reused when already present)
# libtpu and the jax-cuda12 plugin go into SIDE_DIR/tpu and SIDE_DIR/cuda (pip --target), never
# into the main environment, whose jax must keep the CPU backend. Exit status != 0 on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
SIDE="${1:-./.side}"
PY="${PYTHON:-python}"
JAX_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("jax"))')"
mkdir -p "$SIDE"
if [ ! -f "$SIDE/tpu/.complete" ]; then
  # libtpu 0.0.50.x is the release jax 0.12 was built against.
  "$PY" -m pip install --quiet --upgrade --target "$SIDE/tpu" "libtpu==0.0.50.*"
  touch "$SIDE/tpu/.complete"
fi
if [ ! -f "$SIDE/cuda/.complete-$JAX_VERSION" ]; then
  # --no-deps: the compile needs only the plugin + PJRT; ptxas/nvlink come from the machine's CUDA.
  "$PY" -m pip install --quiet --upgrade --no-deps --target "$SIDE/cuda" \
    "jax-cuda12-plugin==$JAX_VERSION" "jax-cuda12-pjrt==$JAX_VERSION"
  touch "$SIDE/cuda/.complete-$JAX_VERSION"
fi
command -v ptxas >/dev/null || echo "warning: no ptxas on PATH; the h100 compile will fail" >&2
exec "$PY" -m jaxtok_kernels.check --targets "${TARGETS:-tpu-v5e,tpu-v6e,h100}" --side "$SIDE" \
  ${JSON_OUT:+--json "$JSON_OUT"}
