"""Lexinvariant LM (arXiv 2305.16349): exact equivariance under vocabulary relabelling, the
per-sequence table's consistency and independence, the order-free draw, and the memory-lean
path (generated rows, chunked tied cross-entropy) against the dense one."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import lexinvariant as lex
from jaxtok.config import ConfigError
from jaxtok.nn import ModelConfig, init_model
from jaxtok.train.loop import split_params
from jaxtok.train.losses import cross_entropy

V, D, T, B = 7, 32, 10, 3


def _model(vocab=V):
  cfg = ModelConfig(vocab_size=vocab, d_model=D, n_layers=1, n_heads=4, d_ff=64, max_len=T,
                    embedding="external", tie_embeddings=False)
  graphdef, params = split_params(init_model(cfg, 0))
  return cfg, graphdef, params


@functools.cache
def _shared():
  """One model and its compiled forward and loss for the module (the tests share shapes, and
  compilation dominates their runtime)."""
  cfg, graphdef, params = _model()
  fwd = jax.jit(lambda x, table: lex.forward_with_table(graphdef, params, x, table)[0])
  loss = jax.jit(lambda batch, key: lex.lexinvariant_loss(cfg)(graphdef, params, batch, key)[1])
  return fwd, loss


def FWD(x, table):
  return _shared()[0](x, table)


def LOSS(batch, key):
  return _shared()[1](batch, key)


def _batch(seed, vocab=V):
  rng = np.random.default_rng(seed)
  seq = rng.integers(0, vocab, (B, T + 1)).astype(np.int32)
  return {"inputs": jnp.asarray(seq[:, :-1]), "targets": jnp.asarray(seq[:, 1:]),
          "weights": jnp.ones((B, T), jnp.float32),
          "index": jnp.asarray(rng.permutation(100)[:B, None].astype(np.int32))}


def test_relabelling_with_the_permuted_table_permutes_the_outputs_exactly():
  batch = _batch(0)
  table_BxVxD = jax.random.normal(jax.random.PRNGKey(1), (B, V, D))
  perm_V = jnp.asarray(np.random.default_rng(2).permutation(V))
  assert not np.array_equal(perm_V, np.arange(V))
  # pi(x) embedded with G' where G'[pi(v)] = G[v]: the model sees the same vectors.
  table_p = jnp.zeros_like(table_BxVxD).at[:, perm_V].set(table_BxVxD)
  logits = FWD(batch["inputs"], table_BxVxD)
  logits_p = FWD(perm_V[batch["inputs"]], table_p)
  np.testing.assert_allclose(logits_p[..., perm_V], logits, atol=1e-5, rtol=1e-5)
  nll = cross_entropy(logits, batch["targets"])
  nll_p = cross_entropy(logits_p, perm_V[batch["targets"]])
  np.testing.assert_allclose(nll_p, nll, atol=1e-5, rtol=1e-5)
  # A learned (untied) unembedding would not be equivariant: the check can fail.
  assert not np.allclose(cross_entropy(logits_p, batch["targets"]), nll, atol=1e-3)


def test_loss_of_a_relabelled_batch_is_the_loss_under_an_equally_distributed_table():
  """loss_fn(pi(batch), key) == nll(batch; table[:, pi]) exactly, and table[:, pi] has the law
  of table: relabelling leaves the loss distribution unchanged."""
  batch = _batch(3)
  perm_V = jnp.asarray(np.random.default_rng(4).permutation(V))
  relabelled = {**batch, "inputs": perm_V[batch["inputs"]], "targets": perm_V[batch["targets"]]}
  key = jax.random.PRNGKey(5)
  aux_p = LOSS(relabelled, key)
  tables = lex.sequence_tables(lex.sequence_keys(key, batch["index"]), V, D)
  logits = FWD(batch["inputs"], tables[:, perm_V])
  np.testing.assert_allclose(aux_p.nll_BxT, cross_entropy(logits, batch["targets"]), atol=1e-5,
                             rtol=1e-5)
  aux = LOSS(batch, key)
  assert not np.allclose(aux.nll_BxT, aux_p.nll_BxT, atol=1e-3)  # a different (equal-law) draw


def test_same_token_same_vector_within_a_sequence_independent_across_sequences():
  key = jax.random.PRNGKey(0)
  seq_keys = lex.sequence_keys(key, jnp.arange(2))
  tokens = jnp.asarray([[3, 1, 3, 3, 0], [3, 1, 3, 3, 0]])
  emb = lex.embed(lex.sequence_tables(seq_keys, V, D), tokens)
  np.testing.assert_array_equal(emb[0, 0], emb[0, 2])
  np.testing.assert_array_equal(emb[0, 0], emb[0, 3])
  assert not np.allclose(emb[0, 0], emb[0, 1])
  assert not np.allclose(emb[0, 0], emb[1, 0])  # same token, another sequence
  big = lex.sequence_tables(lex.sequence_keys(key, jnp.arange(2)), 64, 64, scale=0.5)
  a, b = np.asarray(big[0]).ravel(), np.asarray(big[1]).ravel()
  assert abs(np.corrcoef(a, b)[0, 1]) < 0.08
  rows = np.asarray(big[0])
  assert abs(np.corrcoef(rows[:-1].ravel(), rows[1:].ravel())[0, 1]) < 0.08
  assert abs(a.std() - 0.5) < 0.03 and abs(a.mean()) < 0.03


def test_the_draw_follows_the_example_index_not_the_batch_order():
  batch = _batch(6)
  order = jnp.asarray([2, 0, 1])
  shuffled = {k: v[order] for k, v in batch.items()}
  key = jax.random.PRNGKey(7)
  aux = LOSS(batch, key)
  aux_s = LOSS(shuffled, key)
  np.testing.assert_allclose(aux_s.nll_BxT, aux.nll_BxT[order], atol=1e-6, rtol=1e-6)


def test_chunked_tied_cross_entropy_equals_dense_with_gradients():
  vocab, chunk = 37, 8  # not a multiple of the chunk: the ragged last chunk is masked
  h_BxTxD = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  targets_BxT = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, vocab)
  seq_keys = lex.sequence_keys(jax.random.PRNGKey(2), jnp.arange(B))
  learned = 0.1 * jax.random.normal(jax.random.PRNGKey(3), (vocab, D))

  def losses(h, learned):
    kw = dict(scale=0.3, learned_VxD=learned, p=0.5)
    table = lex.sequence_tables(seq_keys, vocab, D, **kw)
    dense = cross_entropy(lex.tied_logits(h, table), targets_BxT)
    lean = lex.chunked_tied_cross_entropy(h, seq_keys, targets_BxT, vocab, chunk=chunk, **kw)
    return dense, lean

  @jax.jit  # one compilation: values and both gradients
  def check(h, learned):
    dense, lean = losses(h, learned)
    g_dense = jax.grad(lambda *a: losses(*a)[0].sum(), argnums=(0, 1))(h, learned)
    g_lean = jax.grad(lambda *a: losses(*a)[1].sum(), argnums=(0, 1))(h, learned)
    return dense, lean, g_dense, g_lean

  dense, lean, g_dense, g_lean = check(h_BxTxD, learned)
  np.testing.assert_allclose(lean, dense, atol=1e-5, rtol=1e-5)
  for a, b in zip(g_lean, g_dense):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_lean_loss_equals_dense_loss():
  vocab = 37
  cfg, graphdef, params = _model(vocab)
  batch = _batch(8, vocab)
  key = jax.random.PRNGKey(9)
  run = jax.jit(lambda chunk: lex.lexinvariant_loss(cfg, scale=0.7, p=0.5, chunk=chunk)(
      graphdef, params, batch, key)[1].nll_BxT, static_argnums=0)
  np.testing.assert_allclose(run(8), run(0), atol=1e-5, rtol=1e-5)


def test_semi_lexinvariant_mix_uses_random_rows_with_probability_p():
  key = jax.random.PRNGKey(0)
  learned = jnp.full((200, 8), 3.0)
  for p, lo, hi in ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.2, 0.12, 0.28)):
    table = lex.sample_table(key, 200, 8, learned_VxD=learned, p=p)
    random_rows = np.mean(np.any(np.asarray(table) != 3.0, axis=1))
    assert lo <= random_rows <= hi, (p, random_rows)
  # Where a row is random it is the pure lexinvariant row (one draw per token type).
  table = lex.sample_table(key, 200, 8, learned_VxD=learned, p=0.5)
  pure = lex.sample_table(key, 200, 8)
  rand = np.any(np.asarray(table) != 3.0, axis=1)
  np.testing.assert_array_equal(np.asarray(table)[rand], np.asarray(pure)[rand])


def test_bad_inputs_raise_naming_the_argument():
  cfg, graphdef, params = _model()
  with pytest.raises(ConfigError, match="model.embedding"):
    lex.lexinvariant_loss(ModelConfig(vocab_size=V, d_model=D, n_heads=4))
  with pytest.raises(ConfigError, match="p"):
    lex.lexinvariant_loss(cfg, p=1.5)
  batch = _batch(0)
  del batch["index"]
  with pytest.raises(ValueError, match="index"):
    lex.lexinvariant_loss(cfg)(graphdef, params, batch, jax.random.PRNGKey(0))
