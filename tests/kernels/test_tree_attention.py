"""Tree attention over a KV cache: kernels vs the jnp reference, and invariants.

Interpret-mode compiles dominate the run time (~2 s each on 2 cores), so most tests share one
"standard" shape: B=5, T=5 (not a multiple of 8), H=4/K=2 (GQA), S=40 with block_s=16 (a ragged
last block). cache_len is a traced argument, so varying it costs no recompile.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.nn import attention as jaxtok_attention
from jaxtok_kernels import dispatch, numerics
from jaxtok_kernels.tree_attention import reference as reference_lib
from jaxtok_kernels.tree_attention.gpu import GpuConfig, tree_attention_gpu
from jaxtok_kernels.tree_attention.reference import tree_attention_reference as _reference
from jaxtok_kernels.tree_attention.tpu import TpuConfig, tree_attention_tpu

STD = dict(b=5, t=5, h=4, k=2, s=40, dh=16)
BLOCK_S = 16
# Jitted once per shape: eager dispatch of the dense reference costs seconds on 2 cores.
tree_attention_reference = jax.jit(_reference, static_argnames="return_residuals")


def assert_close(out, ref, dtype, reduction):
  tol = numerics.tolerance(dtype, reduction)
  err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))
  assert err <= tol, f"max |kernel - reference| = {err} > {tol}"


class KernelVsReference:
  """Base class: one Pallas implementation against the jnp reference.

  In interpret mode on CPU (CI); compiled for real when the tests run on the kernel's own
  platform (JAX_PLATFORMS=cuda on a GPU machine runs the Triton kernel natively).
  """

  kernel = None  # set by subclasses: fn(*args, config=..., interpret=...)
  platform = None  # "tpu" | "gpu": where the kernel compiles natively
  config = None  # the backend's tiling with block_s = BLOCK_S

  def run(self, args, **kw):
    interpret = dispatch.backend() != self.platform
    return type(self).kernel(*args, config=self.config, interpret=interpret, **kw)

  def test_per_head_lengths_ragged_including_zero_and_capacity(self, make_inputs):
    # Each (row, kv head) its own length, as compression policies leave the cache.
    s = STD["s"]
    lens = [[0, s], [s, 0], [1, BLOCK_S], [BLOCK_S - 1, 33], [0, 0]]
    args = make_inputs(**STD, seed=12, lens=lens)
    assert_close(self.run(args), tree_attention_reference(*args), jnp.float32, s + STD["t"])

  def test_residuals_equal_the_reference_logsumexp(self, make_inputs):
    args = list(make_inputs(**STD, seed=13, lens=[[0, 40], [3, 17], [16, 0], [39, 5], [0, 0]]))
    args[6] = args[6].at[4].set(False)  # row 4: nothing visible at all -> lse = MASKED
    out, lse = self.run(args, return_residuals=True)
    ref_out, ref_lse = tree_attention_reference(*args, return_residuals=True)
    assert_close(out, ref_out, jnp.float32, STD["s"] + STD["t"])
    assert lse.shape == (STD["b"], STD["t"], STD["h"]) and lse.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(lse), np.asarray(ref_lse), rtol=1e-5, atol=1e-5)
    assert bool(jnp.all(lse[4] == numerics.MASKED))

  @pytest.mark.parametrize("shape,dtype", [
      (dict(b=3, t=1, h=8, k=2, s=37, dh=32), jnp.float32),     # decode, G=4, S % block != 0
      (dict(b=2, t=9, h=4, k=4, s=20, dh=16), jnp.bfloat16),    # T > 8, G=1
  ])
  def test_random_shapes(self, make_inputs, shape, dtype):
    args = make_inputs(**shape, dtype=dtype, seed=7)
    assert_close(self.run(args), tree_attention_reference(*args), dtype, shape["s"] + shape["t"])

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  def test_standard_shape_ragged_lengths(self, make_inputs, dtype):
    args = make_inputs(**STD, dtype=dtype, seed=1)  # cache_len per batch row random in [0, S]
    assert_close(self.run(args), tree_attention_reference(*args), dtype, STD["s"] + STD["t"])

  def test_cache_len_edges(self, make_inputs):
    # 0 (tree only), 1, block - 1, block, capacity: one batch row each.
    lens = [0, 1, BLOCK_S - 1, BLOCK_S, STD["s"]]
    args = make_inputs(**STD, seed=2, lens=lens)
    assert_close(self.run(args), tree_attention_reference(*args), jnp.float32, STD["s"])

  def test_nothing_visible_gives_zero(self, make_inputs):
    args = list(make_inputs(**STD, seed=3, lens=[0] * STD["b"]))
    args[6] = jnp.zeros_like(args[6])
    np.testing.assert_array_equal(np.asarray(self.run(args)), 0.0)

  def test_nan_past_cache_len_is_ignored(self, make_inputs):
    # Slots >= cache_len are garbage (here NaN): p = 0 there must not turn into 0 * NaN.
    q, kc, vc, lens, kn, vn, mask = make_inputs(**STD, seed=4, lens=[3, 17, 20, 33, 39])
    dead = jnp.arange(STD["s"])[None, None, :, None] >= lens[:, :, None, None]
    kc, vc = jnp.where(dead, jnp.nan, kc), jnp.where(dead, jnp.nan, vc)
    out = self.run((q, kc, vc, lens, kn, vn, mask))
    assert bool(jnp.all(jnp.isfinite(out)))
    clean = make_inputs(**STD, seed=4, lens=[3, 17, 20, 33, 39])
    assert_close(out, tree_attention_reference(*clean), jnp.float32, STD["s"])

  def test_non_ancestor_change_is_bit_identical(self, make_inputs):
    q, kc, vc, lens, kn, vn, _ = make_inputs(**STD, seed=5)
    # Tree: 0 is the root; 1, 2 children of 0; 3 child of 1; 4 child of 2.
    parent = [0, 0, 0, 1, 2]
    anc = np.eye(5, dtype=bool)
    for i in range(1, 5):
      anc[i] |= anc[parent[i]]
    mask = jnp.broadcast_to(jnp.asarray(anc), (STD["b"], 5, 5))
    out = self.run((q, kc, vc, lens, kn, vn, mask))
    # Node 4's ancestors are {0, 2, 4}; perturb node 3 (a non-ancestor) only.
    kn2, vn2 = kn.at[:, 3].add(7.0), vn.at[:, 3].add(-3.0)
    out2 = self.run((q, kc, vc, lens, kn2, vn2, mask))
    np.testing.assert_array_equal(np.asarray(out[:, 4]), np.asarray(out2[:, 4]))
    np.testing.assert_array_equal(np.asarray(out[:, 2]), np.asarray(out2[:, 2]))
    assert not np.array_equal(np.asarray(out[:, 3]), np.asarray(out2[:, 3]))

  def test_chain_tree_is_causal_attention(self, make_inputs):
    # A chain tree (causal block mask) over a cache holding the first P tokens must equal
    # causal attention over the concatenated P + T sequence (chunked prefill).
    p = 13
    q, kc, vc, _, kn, vn, _ = make_inputs(**STD, seed=6)
    lens = jnp.full((STD["b"], STD["k"]), p, jnp.int32)
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((5, 5), bool)), (STD["b"], 5, 5))
    out = self.run((q, kc, vc, lens, kn, vn, mask))
    # jaxtok's dense attention takes [B, S, K, Dh]; the cache is [B, K, S, Dh].
    k_seq = jnp.concatenate([jnp.swapaxes(kc, 1, 2)[:, :p], kn], axis=1)
    v_seq = jnp.concatenate([jnp.swapaxes(vc, 1, 2)[:, :p], vn], axis=1)
    q_seq = jnp.concatenate([jnp.zeros((STD["b"], p) + q.shape[2:], q.dtype), q], axis=1)
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((p + 5, p + 5), bool)), (STD["b"], p + 5, p + 5))
    full = jaxtok_attention.attention(q_seq, k_seq, v_seq, causal)[:, p:]
    assert_close(out, full, jnp.float32, p + 5)


class TestTpuKernel(KernelVsReference):
  kernel = staticmethod(tree_attention_tpu)
  platform = "tpu"
  config = TpuConfig(block_s=BLOCK_S)

  @pytest.mark.parametrize("shape,dtype", [
      (dict(b=3, t=1, h=3, k=1, s=37, dh=32), jnp.float32),     # G=3: not a power of two
      (dict(b=2, t=9, h=6, k=3, s=20, dh=16), jnp.bfloat16),    # K=3 (kh = K)
  ])
  def test_non_power_of_two_groups(self, make_inputs, shape, dtype):
    args = make_inputs(**shape, dtype=dtype, seed=7)
    assert_close(self.run(args), tree_attention_reference(*args), dtype, shape["s"] + shape["t"])


class TestGpuKernel(KernelVsReference):
  kernel = staticmethod(tree_attention_gpu)
  platform = "gpu"
  config = GpuConfig(block_s=BLOCK_S)

  def test_group_of_three_like_smollm2(self, make_inputs):
    # 9 query heads over 3 kv heads, Dh=64: 48 folded rows in three 16-row blocks.
    args = make_inputs(b=2, t=1, h=9, k=3, s=37, dh=64, seed=11)
    assert_close(self.run(args), tree_attention_reference(*args), jnp.float32, 38)


# --- the reference on hand-worked cases --------------------------------------------------------

def _one(x):
  return jnp.asarray(x, jnp.float32)


def test_reference_hand_worked_single_head():
  # Dh = 1, so scale = 1/sqrt(1) = 1. q = 1; cache keys 1, 2 (values 10, 20); new key 0 (value 30).
  q = _one([[[[1.0]]]])
  kc, vc = _one([[[[1.0], [2.0]]]]), _one([[[[10.0], [20.0]]]])  # [B=1, K=1, S=2, Dh=1]
  kn, vn = _one([[[[0.0]]]]), _one([[[[30.0]]]])
  mask = jnp.ones((1, 1, 1), bool)
  e = math.e
  # Both slots visible: scores (1, 2, 0) -> out = (10 e + 20 e^2 + 30) / (e + e^2 + 1) ~ 17.96.
  out = tree_attention_reference(q, kc, vc, jnp.array([[2]]), kn, vn, mask)
  np.testing.assert_allclose(float(out[0, 0, 0, 0]), (10 * e + 20 * e**2 + 30) / (e + e**2 + 1),
                             rtol=1e-6)
  # cache_len = 1 hides slot 1: scores (1, 0) -> (10 e + 30) / (e + 1) ~ 15.38.
  out = tree_attention_reference(q, kc, vc, jnp.array([[1]]), kn, vn, mask)
  np.testing.assert_allclose(float(out[0, 0, 0, 0]), (10 * e + 30) / (e + 1), rtol=1e-6)
  # Nothing visible (cache_len 0, node masked out): the row is 0, not an average.
  out = tree_attention_reference(q, kc, vc, jnp.array([[0]]), kn, vn, ~mask)
  assert float(out[0, 0, 0, 0]) == 0.0


def test_reference_hand_worked_gqa():
  # H = 2 query heads share K = 1 kv head; Dh = 4, scale = 1/2. One cache slot k = (2,0,0,0),
  # v = 1; the new node k = 0, v = 3.
  q = _one([[[[2, 0, 0, 0], [0, 0, 0, 0]]]])
  kc, vc = _one([[[[2, 0, 0, 0]]]]), jnp.ones((1, 1, 1, 4))
  kn, vn = jnp.zeros((1, 1, 1, 4)), jnp.full((1, 1, 1, 4), 3.0)
  out = tree_attention_reference(q, kc, vc, jnp.array([[1]]), kn, vn, jnp.ones((1, 1, 1), bool))
  e2 = math.e**2
  # head 0: scores (2*2/2, 0) = (2, 0) -> (e^2 * 1 + 1 * 3) / (e^2 + 1) ~ 1.238
  np.testing.assert_allclose(np.asarray(out[0, 0, 0]), (e2 + 3) / (e2 + 1), rtol=1e-6)
  # head 1: scores (0, 0) -> uniform: (1 + 3) / 2 = 2
  np.testing.assert_allclose(np.asarray(out[0, 0, 1]), 2.0, rtol=1e-6)


def test_masked_attention_is_the_dense_softmax_over_concatenated_segments():
  # The one masked softmax, against jax.nn.softmax / logsumexp over the keys of all segments
  # concatenated: two ragged segments and an empty one (attention without a cache), GQA G = 3,
  # a row with nothing visible (out 0, lse MASKED, finite gradients).
  b, t, h, kv, dh = 2, 5, 6, 2, 8
  ks = jax.random.split(jax.random.key(21), 7)
  q = jax.random.normal(ks[0], (b, t, h, dh))
  sizes = (7, 0, 5)
  keys = [jax.random.normal(k, (b, kv, n, dh)) for k, n in zip(ks[1:4], sizes)]
  values = [jax.random.normal(k, (b, kv, n, dh)) for k, n in zip(ks[4:7], sizes)]
  vis = [jax.random.bernoulli(jax.random.fold_in(ks[0], n), 0.5, (b, kv, t, n)) for n in sizes]
  vis = [v.at[1, 0, 2].set(False) for v in vis]  # row 1, kv head 0, query 2: nothing visible
  segments = list(zip(keys, values, vis))
  out, lse, p = reference_lib.masked_attention(q, segments)

  scores = jnp.einsum("btkgd,bknd->bkgtn", q.reshape(b, t, kv, h // kv, dh),
                      jnp.concatenate(keys, 2)) / math.sqrt(dh)
  vis_all = jnp.concatenate(vis, -1)[:, :, None]
  masked = jnp.where(vis_all, scores, -jnp.inf)
  want_p = jnp.where(vis_all, jax.nn.softmax(masked, axis=-1), 0.0)
  want_lse = jax.nn.logsumexp(masked, axis=-1)
  want_out = jnp.einsum("bkgtn,bknd->btkgd", want_p, jnp.concatenate(values, 2))
  np.testing.assert_allclose(jnp.concatenate(p, -1), want_p, atol=1e-6)
  np.testing.assert_allclose(out, want_out.reshape(b, t, h, dh), atol=1e-5)
  lse_BxKxGxT = lse.reshape(b, t, kv, h // kv).transpose(0, 2, 3, 1)
  nothing = ~jnp.any(vis_all, axis=-1)
  np.testing.assert_allclose(jnp.where(nothing, 0.0, lse_BxKxGxT),
                             jnp.where(nothing, 0.0, want_lse), atol=1e-5)
  assert bool(jnp.all(jnp.where(nothing, lse_BxKxGxT == numerics.MASKED, True)))
  assert float(jnp.abs(out[1, 2, :3]).max()) == 0.0
  grad = jax.grad(lambda q_: reference_lib.masked_attention(q_, segments)[0].sum())(q)
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_model_cached_attention_uses_dispatcher(make_inputs):
  args = make_inputs(b=2, t=3, h=4, k=2, s=11, dh=8, seed=9)
  np.testing.assert_allclose(np.asarray(jax.jit(jaxtok_attention.cached_attention)(*args)),
                             np.asarray(tree_attention_reference(*args)),
                             atol=1e-6)


def _pallas_call_operands(closed_jaxpr):
  """(inner jaxpr, operands of its pallas_call), descending through the jit wrapper."""
  for eqn in closed_jaxpr.jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      return closed_jaxpr.jaxpr, eqn.invars
    if "jaxpr" in eqn.params:
      found = _pallas_call_operands(eqn.params["jaxpr"])
      if found:
        return found
  return None


@pytest.mark.parametrize("kernel", [tree_attention_tpu, tree_attention_gpu])
@pytest.mark.parametrize("dh", [64, 128])
def test_kernels_read_the_cache_in_place(make_inputs, kernel, dh):
  # The [B, K, S, Dh] cache must reach pallas_call as the caller's array: any reshape or
  # transpose of it here is a full-cache relayout copy on TPU on every decode step.
  args = make_inputs(b=2, t=1, h=8, k=2, s=64, dh=dh, seed=10)
  config = TpuConfig(block_s=16) if kernel is tree_attention_tpu else GpuConfig(block_s=16)
  closed = jax.make_jaxpr(lambda *a: kernel(*a, config=config))(*args)
  inner, operands = _pallas_call_operands(closed)
  k_cache_var, v_cache_var = inner.invars[1], inner.invars[2]
  assert k_cache_var in operands and v_cache_var in operands
