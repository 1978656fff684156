#!/usr/bin/env bash
# Kernel compile gate: AOT-compile every Pallas kernel for TPU v5e/v6e and NVIDIA H100, no device.
# Usage: bash .ci/compile_kernels.sh [SIDE_DIR]   (default ./.side; reused when already present)
# libtpu and the jax-cuda12 plugin go into SIDE_DIR/tpu and SIDE_DIR/cuda (pip --target), never
# into the main environment, whose jax must keep the CPU backend. Exit status != 0 on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
SIDE="${1:-./.side}"
PY="${PYTHON:-python}"
mkdir -p "$SIDE"
# The compile toolchain is pinned, apart from the main environment's jax: libtpu and the CUDA
# plugin must match jaxlib exactly, and a new jax can reach PyPI before its libtpu / plugin do
# (jax 0.12.1 wants libtpu 0.0.53, unpublished; plugin 0.12.0.1 cannot read jaxlib 0.12.1's
# Triton bytecode). Each side folder therefore carries its own jax + jaxlib, which shadow the
# main ones only inside the compile subprocess (PYTHONPATH).
TOOLCHAIN=0.12.0.1
if [ ! -f "$SIDE/tpu/.complete-$TOOLCHAIN" ]; then
  rm -rf "$SIDE/tpu"
  "$PY" -m pip install --quiet --no-deps --target "$SIDE/tpu" "libtpu==0.0.50.*" \
    "jax==$TOOLCHAIN" "jaxlib==$TOOLCHAIN"
  touch "$SIDE/tpu/.complete-$TOOLCHAIN"
fi
if [ ! -f "$SIDE/cuda/.complete-$TOOLCHAIN" ]; then
  rm -rf "$SIDE/cuda"
  # --no-deps: the compile needs only the plugin + PJRT; ptxas/nvlink come from the machine's CUDA.
  "$PY" -m pip install --quiet --no-deps --target "$SIDE/cuda" "jax==$TOOLCHAIN" \
    "jaxlib==$TOOLCHAIN" "jax-cuda12-plugin==$TOOLCHAIN" "jax-cuda12-pjrt==$TOOLCHAIN"
  touch "$SIDE/cuda/.complete-$TOOLCHAIN"
fi
command -v ptxas >/dev/null || echo "warning: no ptxas on PATH; the h100 compile will fail" >&2
exec "$PY" -m jaxtok_kernels.check --targets "${TARGETS:-tpu-v5e,tpu-v6e,h100}" --side "$SIDE" \
  ${JSON_OUT:+--json "$JSON_OUT"}
