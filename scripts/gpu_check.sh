#!/usr/bin/env bash
# One-shot GPU check (the device numbers in the README come from this script):
#   1. the Triton tree-attention kernel compiled natively vs the jnp reference (tests/kernels),
#   2. cached decoding and the model's attention with the kernel in the loop (tests/test_decode.py),
#   3. `jaxtok bench kernels` (bf16 and f32): kernel vs reference time and HBM bandwidth,
#   4. `jaxtok bench decode` on a SmolLM2-135M-shaped model with random weights (the GGUF is too
#      large to carry to the device; speed does not depend on the weights' values), jaxtok vs
#      transformers on the same GPU.
# Runs with the machine's own python3/jax (no network there); jaxtok goes on PYTHONPATH.
# Usage: OUT=/some/dir bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT" /tmp/jaxtok_path
ln -sfn "$PWD/kernels" /tmp/jaxtok_path/jaxtok_kernels
ln -sfn "$PWD/experiments" /tmp/jaxtok_path/jaxtok_experiments
export PYTHONPATH="$PWD:/tmp/jaxtok_path" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
JAXTOK=(python3 -m jaxtok.cli)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

echo "== kernel tests on the GPU (Triton compiled, not interpreted)"
JAX_PLATFORMS=cuda timeout 240 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_tree_attention.py \
  -k "Gpu or reference" 2>&1 | tee "$OUT/pytest_kernels.txt" | tail -15

echo "== decode tests on the GPU (the kernel inside the model's cached attention)"
JAX_PLATFORMS=cuda timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_decode.py 2>&1 \
  | tee "$OUT/pytest_decode.txt" | tail -15

echo "== bench kernels"
timeout 120 "${JAXTOK[@]}" bench kernels --dtype bfloat16 --out "$OUT/bench_kernels_bf16.json"
timeout 120 "${JAXTOK[@]}" bench kernels --dtype float32 --out "$OUT/bench_kernels_f32.json"

echo "== bench decode (SmolLM2-135M shape, random weights)"
python3 - <<'PY'
from flax import nnx
from jaxtok.models import hf_loader, llama
from jaxtok.nn import ModelConfig, init_model
cfg = ModelConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                  head_dim=64, d_ff=1536, max_len=8192, rope_theta=1e5, tie_embeddings=True,
                  norm_eps=1e-5)
_, params = nnx.split(init_model(cfg, seed=0))
hf_loader.write_hf_dir("/tmp/smollm2_shape", cfg, llama.params_to_hf(nnx.to_pure_dict(params), cfg))
PY
timeout 300 "${JAXTOK[@]}" bench decode --model /tmp/smollm2_shape --repeats 2 \
  --torch-python python3 --out "$OUT/bench_decode.json"
