"""Invariants of the one transformer: causality, cache = no cache, masks, heads, dtypes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok import cache as cache_lib
from jaxtok.cache import init_cache
from jaxtok.nn import ModelConfig, default_positions, init_model, masks
from jaxtok.nn import forward as eager_forward

# Jitted once per (graphdef, shapes): eager dispatch of every small op is what makes tests slow.
_jitted = jax.jit(eager_forward, static_argnums=0,
                  static_argnames=("fresh_cache", "return_hidden", "return_stats"))


def forward(*args, **kw):
  """(logits, cache) of the jitted forward: most invariants here are about those two."""
  out = _jitted(*args, **kw)
  return out.logits, out.cache


def step(g, p, c, tokens, pos, mask=None, **kw):
  """Forward a block through the cache and commit every non-padding token."""
  out = _jitted(g, p, tokens, pos, mask, cache=c, **kw)
  return out.logits, cache_lib.commit(out.cache, jnp.sum(pos >= 0, axis=1))

SMALL = dict(vocab_size=37, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_len=64)


def _model(**kw):
  return nnx.split(init_model(ModelConfig(**{**SMALL, **kw}), seed=1), nnx.Param)


def _tokens(b, t, v=37, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, v)


def test_causal_through_gradients():
  g, p = _model(embedding="external", tie_embeddings=False)
  t = 8
  emb = jax.random.normal(jax.random.key(2), (1, t, 32))

  def logit_sum_at(pos, e):
    logits, _ = forward(g, p, jnp.zeros((1, t), jnp.int32), default_positions(1, t),
                        embeddings_BxTxD=e)
    return logits[0, pos].sum()

  for pos in (0, 3, 7):
    grad_TxD = jax.grad(logit_sum_at, argnums=1)(pos, emb)[0]
    norms = jnp.linalg.norm(grad_TxD, axis=-1)
    assert jnp.all(norms[pos + 1:] == 0), f"future leaks into position {pos}"
    assert jnp.all(norms[:pos + 1] > 0), f"position {pos} ignores its past"


def test_bidirectional_mask_sees_the_future():
  g, p = _model()
  x = _tokens(1, 6)
  y = x.at[0, 5].set((x[0, 5] + 1) % 37)
  run = lambda toks: forward(g, p, toks, default_positions(1, 6), masks.bidirectional(6))[0]
  assert not jnp.allclose(run(x)[0, 0], run(y)[0, 0])
  causal = lambda toks: forward(g, p, toks, default_positions(1, 6))[0]
  np.testing.assert_array_equal(causal(x)[0, :5], causal(y)[0, :5])


@pytest.mark.parametrize("positions", ["rope", "learned", "none"])
def test_cached_decoding_equals_uncached(positions):
  g, p = _model(positions=positions)
  b, t = 2, 12
  x = _tokens(b, t)
  full, _ = forward(g, p, x, default_positions(b, t))
  cache = init_cache(ModelConfig(**SMALL), b, 32)
  chunks = []
  logits, cache = step(g, p, cache, x[:, :5], default_positions(b, 5))  # chunked prefill
  chunks.append(logits)
  for i in range(5, t):  # single-token decode at the cache's own position counter
    logits, cache = step(g, p, cache, x[:, i:i + 1], cache.next_pos[:, None])
    chunks.append(logits)
  np.testing.assert_allclose(jnp.concatenate(chunks, 1), full, atol=1e-5, rtol=1e-5)
  for layer in cache.layers:
    np.testing.assert_array_equal(layer.length, np.full((b, 2), t))
    np.testing.assert_array_equal(layer.pos[0, 0, :t], np.arange(t))
  np.testing.assert_array_equal(cache.next_pos, [t, t])


def test_ragged_prefill_padding_is_ignored():
  g, p = _model()
  x = _tokens(2, 6)
  cfg = ModelConfig(**SMALL)
  pos = jnp.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, -1, -1, -1]])
  _, cache = step(g, p, init_cache(cfg, 2, 16), x, pos)
  np.testing.assert_array_equal(cache.layers[0].length, [[6, 6], [3, 3]])
  np.testing.assert_array_equal(cache.next_pos, [6, 3])
  # The next token of row 1 continues at position 3, exactly like an unpadded 3-token prompt.
  nxt, _ = step(g, p, cache, x[:, :1], cache.next_pos[:, None])
  ref, _ = forward(g, p, jnp.concatenate([x[1:, :3], x[1:, :1]], 1), default_positions(1, 4))
  np.testing.assert_allclose(nxt[1, 0], ref[0, 3], atol=1e-5)


def test_fresh_cache_shortcut_equals_attending_through_the_cache():
  """fresh_cache skips the S empty slots; the general path (length 0) must give the same."""
  g, p = _model()
  x = _tokens(2, 6)
  pos = jnp.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, -1, -1]])
  fresh = init_cache(ModelConfig(**SMALL), 2, 16)
  logits_a, cache_a = step(g, p, fresh, x, pos, fresh_cache=True)
  logits_b, cache_b = step(g, p, fresh, x, pos)
  np.testing.assert_allclose(logits_a, logits_b, atol=1e-6)
  for got, want in zip(cache_a.layers, cache_b.layers):
    np.testing.assert_allclose(got.k, want.k, atol=1e-6)  # layer 2 sees layer 1's rounding
    np.testing.assert_allclose(got.v, want.v, atol=1e-6)
  np.testing.assert_array_equal(cache_a.layers[1].length, [[6, 6], [4, 4]])


def test_a_fresh_cache_is_a_scan_carry():
  """No static field flips on a write: chunked prefill runs as a lax.scan over the cache."""
  g, p = _model()
  x = _tokens(2, 12)
  full, _ = forward(g, p, x, default_positions(2, 12))

  def chunk(c, tok_and_pos):
    tok_BxT, pos_BxT = tok_and_pos
    out = eager_forward(g, p, tok_BxT, pos_BxT, cache=c)
    return cache_lib.commit(out.cache, jnp.full((2,), tok_BxT.shape[1])), out.logits

  chunks = (x.reshape(2, 3, 4).transpose(1, 0, 2),
            default_positions(2, 12).reshape(2, 3, 4).transpose(1, 0, 2))
  cache, logits_CxBxTxV = jax.jit(lambda c: jax.lax.scan(chunk, c, chunks))(
      init_cache(ModelConfig(**SMALL), 2, 16))
  logits = logits_CxBxTxV.transpose(1, 0, 2, 3).reshape(2, 12, -1)
  np.testing.assert_allclose(logits, full, atol=1e-5)
  np.testing.assert_array_equal(cache.next_pos, [12, 12])


def test_tree_mask_in_cache_equals_path_attention():
  """A node attending to the cache + its ancestors equals a plain causal run along its path."""
  g, p = _model()
  cfg = ModelConfig(**SMALL)
  prompt = _tokens(1, 5)
  _, cache = step(g, p, init_cache(cfg, 1, 16), prompt, default_positions(1, 5))
  parent = jnp.array([[0, 0, 0, 1, 2]])  # root, two children, one grandchild under each
  depth = jnp.array([[0, 1, 1, 2, 2]])
  tree_tokens = _tokens(1, 5, seed=3)
  logits, _ = forward(g, p, tree_tokens, 5 + depth, masks.tree(parent), cache=cache)
  path = jnp.concatenate([prompt, tree_tokens[:, jnp.array([0, 2, 4])]], 1)
  ref, _ = forward(g, p, path, default_positions(1, 8))
  np.testing.assert_allclose(logits[0, 4], ref[0, 7], atol=1e-5)


def test_masks():
  np.testing.assert_array_equal(masks.tree(jnp.array([[0, 0, 1, 1]]))[0],
                                [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]])
  np.testing.assert_array_equal(masks.steps(jnp.array([[0, 1, 1, 2]]))[0],
                                [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
  pre = masks.prefix(4, jnp.array([2]))[0]
  np.testing.assert_array_equal(pre, [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])


def test_extra_heads_untied_and_nd_rope():
  g, p = _model(extra_heads=(5, 7), tie_embeddings=False, rope_axes=2)
  x = _tokens(2, 4)
  pos = jnp.stack(jnp.meshgrid(jnp.arange(2), jnp.arange(2), indexing="ij"), -1).reshape(1, 4, 2)
  out = _jitted(g, p, x, jnp.broadcast_to(pos, (2, 4, 2)), return_hidden=True)
  main, (h1, h2) = out.logits, out.extra_logits
  assert out.hidden.shape == (2, 4, 32)
  assert main.shape == (2, 4, 37) and h1.shape == (2, 4, 5) and h2.shape == (2, 4, 7)
  with pytest.raises(ValueError, match="coordinate axes"):
    forward(g, p, x, default_positions(2, 4))


def test_bfloat16_compute_close_to_float32():
  g32, p = _model()
  g16, _ = _model(dtype="bfloat16")
  x = _tokens(2, 8)
  l32, _ = forward(g32, p, x, default_positions(2, 8))
  l16, _ = forward(g16, p, x, default_positions(2, 8))
  assert l16.dtype == jnp.float32
  np.testing.assert_allclose(l16, l32, atol=5e-2)


def test_external_embeddings_shape_error():
  g, p = _model(embedding="external", tie_embeddings=False)
  with pytest.raises(ValueError, match="embeddings_BxTxD"):
    forward(g, p, _tokens(1, 4), default_positions(1, 4))


def test_logits_at_selects_rows_of_the_full_logits():
  g, p = _model()
  x = _tokens(2, 9)
  full, _ = forward(g, p, x, default_positions(2, 9))
  at = jnp.array([[8, 0], [3, 3]])
  part, _ = forward(g, p, x, default_positions(2, 9), logits_at_BxN=at)
  np.testing.assert_allclose(part, jnp.take_along_axis(full, at[..., None], axis=1), atol=1e-6)
