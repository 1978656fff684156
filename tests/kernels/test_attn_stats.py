"""Attention statistics per cache slot: kernels vs the jnp reference, the reference vs a dense
softmax, and the dispatcher's rules.

One shape for the kernels: B=3, T=13 (not a multiple of the query block), H=6/K=2 (GQA group 3),
S=150 (not a multiple of the key block), starts ragged per (row, kv head) including 0 and
S - T, padding queries at the end of row 1 and a row without any valid query.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok_kernels import attn_stats as st
from jaxtok_kernels.attn_stats.reference import visible_slots

B, T, H, K, S, DH = 3, 13, 6, 2, 150, 16
STARTS = [[0, S - T], [5, 117], [132, 1]]
# Jitted: eager dispatch of the chunked reference costs tens of seconds on 2 cores.
reference = jax.jit(st.attn_stats_reference, static_argnames="chunk")


@jax.jit
def _dense(q, k, start, valid, block_mask):
  # The residual of the attention over exactly the visible slots (a dense logsumexp).
  vis_BxKxTxS = visible_slots(jnp.arange(T), start, T, S, None if block_mask is None
                              else jnp.broadcast_to(block_mask, (B, T, T)))
  scores = jnp.einsum("btkgd,bksd->bkgts", q.reshape(B, T, K, H // K, DH), k,
                      preferred_element_type=jnp.float32) / np.sqrt(DH)
  masked = jnp.where(vis_BxKxTxS[:, :, None], scores, -jnp.inf)
  lse = jax.nn.logsumexp(masked, axis=-1).transpose(0, 3, 1, 2).reshape(B, T, H)
  return lse, jax.nn.softmax(masked, axis=-1) * valid[:, None, None, :, None]


def _inputs(seed=0, block_mask=None):
  ks = jax.random.split(jax.random.key(seed), 2)
  q = jax.random.normal(ks[0], (B, T, H, DH))
  k = jax.random.normal(ks[1], (B, K, S, DH))
  start = jnp.asarray(STARTS, jnp.int32)
  valid = jnp.ones((B, T), bool).at[1, 9:].set(False).at[2].set(False)
  lse, p_BxKxGxTxS = _dense(q, k, start, valid, block_mask)
  return (q, k, start, lse, valid), p_BxKxGxTxS


def test_reference_equals_dense_softmax_column_sums():
  mask = jax.random.bernoulli(jax.random.key(3), 0.6, (B, T, T)) | jnp.eye(T, dtype=bool)[None]
  for m in (None, mask):
    args, p = _inputs(seed=1, block_mask=m)
    total, last = reference(*args, m, chunk=5)  # several chunks, a ragged one
    np.testing.assert_allclose(total, p.sum(axis=(2, 3)), atol=1e-5)
    last_t = np.array([T - 1, 8, 0])
    want = np.stack([p[b, :, :, last_t[b]].sum(axis=1) for b in range(B)])
    np.testing.assert_allclose(last, want, atol=1e-5)
  # Every valid query distributes mass 1 per query head: a row's sum is G * (valid queries).
  np.testing.assert_allclose(total.sum(-1), np.array([[39, 39], [27, 27], [0, 0]]), atol=1e-4)


@pytest.mark.parametrize("kernel,config", [
    (st.attn_stats_tpu, st.TpuConfig(block_t=8, block_s=128)),
    (st.attn_stats_gpu, st.GpuConfig(block_t=16, block_s=32)),
], ids=["tpu", "gpu"])
def test_kernel_matches_reference_at_ragged_starts(kernel, config):
  args, _ = _inputs(seed=2)
  # Slots past start + T hold NaN in row 0 / head 0: nobody sees them, nothing may leak.
  args = (args[0], args[1].at[0, 0, T:].set(jnp.nan)) + args[2:]
  want = reference(*args)
  got = kernel(*args, config=config, interpret=True)
  for g, w in zip(got, want):
    assert g.shape == (B, K, S) and g.dtype == jnp.float32
    np.testing.assert_allclose(g, w, atol=1e-5)


def test_dispatcher_rules():
  args, _ = _inputs(seed=4)
  want = reference(*args)
  for impl in ("xla", None):  # None on CPU: the reference
    np.testing.assert_allclose(st.attn_stats(*args, implementation=impl)[0], want[0], atol=1e-6)
  with pytest.raises(NotImplementedError, match="causal"):
    st.attn_stats(*args, jnp.ones((B, T, T), bool), implementation="pallas")
  with pytest.raises(ValueError, match="implementation"):
    st.attn_stats(*args, implementation="cuda")
  with pytest.raises(ValueError, match="start_BxK"):
    st.attn_stats(args[0], args[1], jnp.full((B, K), S - T + 1, jnp.int32), *args[3:])
  with pytest.raises(ValueError, match="lse_BxTxH"):
    st.attn_stats(*args[:3], args[3][:, :, :2], args[4])
  with pytest.raises(ValueError, match="config"):
    st.attn_stats(*args, config=st.GpuConfig(), implementation="pallas")
