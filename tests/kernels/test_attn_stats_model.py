"""The model's statistics paths (jaxtok.nn.attention): the one-pass XLA sums equal the exact
second pass from lse, on every attention path, with and without padding queries; the kernel
path (Pallas attention + the statistics kernel, interpret mode) equals the XLA path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.nn import attention as attn_lib
from jaxtok.nn import masks

B, H, K, DH = 2, 4, 2, 8


def _qkv(t, seed):
  ks = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(ks[0], (B, t, H, DH)), jax.random.normal(ks[1], (B, t, K, DH)),
          jax.random.normal(ks[2], (B, t, K, DH)))


def _written_cache(k_new, v_new, lens, s, seed):
  """A random cache [B, K, S, Dh] with the block written at lens[b, k] .. + T."""
  ks = jax.random.split(jax.random.key(seed), 2)
  kc, vc = (np.array(jax.random.normal(x, (B, K, s, DH))) for x in ks)
  t = k_new.shape[1]
  for b in range(B):
    for k in range(K):
      kc[b, k, lens[b][k]:lens[b][k] + t] = k_new[b, :, k]
      vc[b, k, lens[b][k]:lens[b][k] + t] = v_new[b, :, k]
  return jnp.asarray(kc), jnp.asarray(vc)


def _check(q, keys, start, mask, res, plain_out, out):
  np.testing.assert_allclose(out, plain_out, atol=1e-5)
  t = q.shape[1]
  stats = jax.jit(lambda valid, r: attn_lib.slot_stats(q, keys, start, mask, valid, r))
  for valid in (jnp.ones((B, t), bool), jnp.ones((B, t), bool).at[1, t - 3:].set(False)):
    got = stats(valid, res)
    want = stats(valid, res.lse_BxTxH)  # the second pass from lse
    np.testing.assert_allclose(got.sum_BxKxS, want.sum_BxKxS, atol=1e-5)
    np.testing.assert_allclose(got.last_BxKxS, want.last_BxKxS, atol=1e-5)
  n_valid = jnp.ones((B, t)).at[1, t - 3:].set(0).sum(-1)
  np.testing.assert_allclose(got.sum_BxKxS.sum(-1), (H // K) * n_valid[:, None].repeat(K, 1),
                             rtol=1e-5)


@pytest.mark.parametrize("long", [False, True], ids=["dense", "chunked"])
def test_no_cache_paths(monkeypatch, long):
  monkeypatch.setattr(attn_lib, "DENSE_MAX_T", 8 if long else 1024)
  monkeypatch.setattr(attn_lib, "CHUNK_T", 5)
  t = 13
  q, k, v = _qkv(t, 0)
  mask = masks.CAUSAL if long else jax.random.bernoulli(jax.random.key(9), 0.6, (B, t, t))
  out, res = jax.jit(lambda q, k, v: attn_lib.attention(q, k, v, mask, return_lse=True))(q, k, v)
  assert res.block_sum_BxKxT is not None
  plain = jax.jit(lambda q, k, v: attn_lib.attention(q, k, v, mask))(q, k, v)
  _check(q, jnp.swapaxes(k, 1, 2), jnp.zeros((B, K), jnp.int32), mask, res, plain, out)


@pytest.mark.parametrize("long", [False, True], ids=["dense", "chunked"])
def test_cached_paths_at_ragged_lengths(monkeypatch, long):
  monkeypatch.setattr(attn_lib, "DENSE_MAX_T", 8 if long else 1024)
  monkeypatch.setattr(attn_lib, "CHUNK_T", 5)
  t, s = 12, 40
  lens = [[0, 28], [7, 3]]  # per (row, kv head); 0 = a fresh cache
  q, k, v = _qkv(t, 1)
  kc, vc = _written_cache(k, v, lens, s, 2)
  cache_len = jnp.asarray(lens, jnp.int32)
  parents = jnp.array([[0, 0, 1, 1, 2, 3, 3, 4, 0, 8, 9, 10]] * B)
  mask = masks.CAUSAL if long else masks.tree(parents)

  def run(return_lse):
    return jax.jit(lambda *a: attn_lib.cached_attention(*a, mask, return_lse=return_lse))(
        q, kc, vc, cache_len, k, v)
  out, res = run(True)
  assert res.slot_sum_BxKxS is not None
  _check(q, kc, cache_len, mask, res, run(False), out)


def test_kernel_path_equals_xla_path():
  """implementation='pallas' on CPU: tree-attention and statistics kernels in interpret mode."""
  t, s = 6, 24
  q, k, v = _qkv(t, 3)
  lens = [[0, 18], [5, 11]]
  kc, vc = _written_cache(k, v, lens, s, 4)
  cache_len = jnp.asarray(lens, jnp.int32)
  valid = jnp.ones((B, t), bool).at[0, -1].set(False)

  def stats(impl):
    out, res = attn_lib.cached_attention(q, kc, vc, cache_len, k, v, masks.CAUSAL,
                                         return_lse=True, implementation=impl)
    return out, attn_lib.slot_stats(q, kc, cache_len, masks.CAUSAL, valid, res)
  (o_k, s_k), (o_x, s_x) = jax.jit(lambda: stats("pallas"))(), jax.jit(lambda: stats("xla"))()
  np.testing.assert_allclose(o_k, o_x, atol=1e-5)
  np.testing.assert_allclose(s_k.sum_BxKxS, s_x.sum_BxKxS, atol=1e-5)
  np.testing.assert_allclose(s_k.last_BxKxS, s_x.last_BxKxS, atol=1e-5)
