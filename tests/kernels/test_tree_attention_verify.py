"""Tree attention at the speculative verification sizes: T = 80 tree nodes (Token Recycling's
static tree, arXiv 2408.08696 §3.2; not a power of two, nor a multiple of 16) over a SmolLM2
cache layout (9 query heads on 3 kv heads, Dh 64), under an ancestor mask, ragged cache lengths.

The TPU kernel pads T to a multiple of 8 (80 stays 80) and the GPU kernel to a power of two
(80 -> 128): the padded rows and columns must be invisible and dropped. Both kernels run in
interpret mode here (compiled for real in the kernel compile gate, kernels/registry.py).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.nn import masks
from jaxtok_kernels import numerics
from jaxtok_kernels.tree_attention import gpu, tpu
from jaxtok_kernels.tree_attention.ops import tree_attention
from jaxtok_kernels.tree_attention.reference import tree_attention_reference

T, H, K, DH, S, BLOCK_S = 80, 9, 3, 64, 40, 16


def _random_tree_mask(b: int, t: int, seed: int):
  """Ancestor-or-self masks [B, T, T] of random trees with parent[i] < i (BFS-like: parents
  drawn from the most recent nodes, so depths vary), the last rows' nodes padding (hidden
  from every other node but themselves, as jaxtok.speculative.tree.ancestor_mask makes them)."""
  rng = np.random.RandomState(seed)
  parent_BxT = np.zeros((b, t), np.int32)
  for i in range(1, t):
    parent_BxT[:, i] = rng.randint(max(0, i - 12), i, size=b)
  anc_BxTxT = np.asarray(masks.tree(jnp.asarray(parent_BxT)))
  valid_BxT = np.ones((b, t), bool)
  valid_BxT[:, t - 7:] = False
  return jnp.asarray(anc_BxTxT & (valid_BxT[:, None, :] | np.eye(t, dtype=bool)))


@pytest.fixture(name="verify_inputs", scope="module")
def _verify_inputs():
  from jaxtok_kernels.tree_attention.sample_inputs import random_inputs

  # Per (row, kv head) lengths: empty, full, a block edge, ragged.
  lens = [[0, S, BLOCK_S], [17, 1, S - 1]]
  q, kc, vc, lens, kn, vn, _ = random_inputs(b=2, t=T, h=H, k=K, s=S, dh=DH, seed=21,
                                             lens=lens)
  return q, kc, vc, lens, kn, vn, _random_tree_mask(2, T, seed=22)


def _assert_close(out, ref):
  tol = numerics.tolerance(jnp.float32, S + T)
  err = float(jnp.max(jnp.abs(out - ref)))
  assert err <= tol, f"max |kernel - reference| = {err} > {tol}"


def test_paddings_at_80_nodes():
  # What the two layouts do with T = 80 (the kernels' padded rows must be dropped, below).
  assert tpu.plan(T, S, K, DH, tpu.TpuConfig())[0] == 80
  assert gpu.plan(T, H, K, DH, gpu.GpuConfig())[0] == 128


@pytest.mark.parametrize("kernel,config", [
    (tpu.tree_attention_tpu, tpu.TpuConfig(block_s=BLOCK_S)),
    (gpu.tree_attention_gpu, gpu.GpuConfig(block_s=BLOCK_S)),
], ids=["tpu", "gpu"])
def test_80_node_tree_equals_reference(verify_inputs, kernel, config):
  ref_out, ref_lse = jax.jit(tree_attention_reference, static_argnames="return_residuals")(
      *verify_inputs, return_residuals=True)
  out, lse = kernel(*verify_inputs, config=config, interpret=True, return_residuals=True)
  assert out.shape == (2, T, H, DH) and lse.shape == (2, T, H)
  _assert_close(out, ref_out)
  np.testing.assert_allclose(np.asarray(lse), np.asarray(ref_lse), rtol=1e-5, atol=1e-5)


def test_dispatcher_runs_the_kernel_at_80_nodes(verify_inputs):
  # implementation="pallas" never falls back to the reference: on CPU it is the TPU kernel in
  # the interpreter, at its default tiling (block_s = S here).
  out = tree_attention(*verify_inputs, implementation="pallas")
  _assert_close(out, jax.jit(tree_attention_reference)(*verify_inputs))
