"""The key -> value lookup task of the lexinvariant experiment (arXiv 2305.16349, Sec. 5): seeded,
answers correct, held-out symbols never drawn for training; and the semi-lexinvariant mix at its
ends (p=0: the standard tied LM, p=1: the lexinvariant LM)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok import lexinvariant as lex
from jaxtok.lexinvariant import tasks
from jaxtok.config import ConfigError
from jaxtok.nn import ModelConfig, init_model
from jaxtok.train.loop import split_params
from jaxtok.train.losses import cross_entropy, next_token_loss


def test_lookup_examples_answer_from_their_own_pairs_and_stay_in_their_pool():
  seen, unseen = tasks.symbol_split(40, 16)
  assert not set(seen) & set(unseen) and len(seen) + len(unseen) == 40
  n, m = 8, 5
  for pool, other in ((seen, unseen), (unseen, seen)):
    src = tasks.KeyValueLookupSource(pool, n, m, seed=3)
    lm = lex.to_indexed_lm_example(lex.Indexed(src)[0])
    assert lm["inputs"].shape == lm["weights"].shape == (src.seq_len,)
    for i in range(300):
      ex = src[i]
      tok = ex["tokens"]
      assert set(tok) <= set(pool) and not set(tok) & set(other)
      keys, values = tok[0:2 * n:2], tok[1:2 * n:2]
      assert len(set(tok[:2 * n])) == 2 * n  # every key and value distinct
      pairs = dict(zip(keys.tolist(), values.tolist()))
      queries, answers = tok[2 * n::2], tok[2 * n + 1::2]
      assert len(set(queries)) == m and set(queries) <= set(keys)
      assert [pairs[q] for q in queries.tolist()] == answers.tolist()
      # Exactly the answers are scored: target t is tokens[t + 1].
      scored = np.flatnonzero(ex["weights"])
      np.testing.assert_array_equal(scored, src.answer_positions())
      np.testing.assert_array_equal(tok[scored + 1], answers)
    np.testing.assert_array_equal(src[7]["tokens"], src[7]["tokens"])  # a pure function of i
    assert not np.array_equal(src[7]["tokens"], src[8]["tokens"])
  # Every training symbol is used (the standard LM trains all of their embeddings).
  src = tasks.KeyValueLookupSource(seen, n, m, seed=0)
  assert set(np.concatenate([src[i]["tokens"] for i in range(200)])) == set(seen)


def test_answer_accuracy_scores_only_weighted_targets():
  logits = np.zeros((1, 3, 5))
  logits[0, 0, 2] = logits[0, 1, 4] = logits[0, 2, 1] = 1.0
  targets = np.array([[2, 0, 3]])
  assert tasks.answer_accuracy(logits, targets, np.array([[1.0, 0.0, 1.0]])) == 0.5
  assert tasks.answer_accuracy(logits, targets, np.array([[1.0, 0.0, 0.0]])) == 1.0
  with pytest.raises(ConfigError, match="weights_BxT"):
    tasks.answer_accuracy(logits, targets, np.zeros((1, 3)))


def test_bad_lookup_arguments_raise_naming_them():
  with pytest.raises(ConfigError, match="n_pairs"):
    tasks.KeyValueLookupSource(np.arange(10), 6, 2, seed=0)
  with pytest.raises(ConfigError, match="n_queries"):
    tasks.KeyValueLookupSource(np.arange(10), 3, 4, seed=0)
  with pytest.raises(ConfigError, match="symbols"):
    tasks.KeyValueLookupSource([1, 1, 2, 3], 1, 1, seed=0)
  with pytest.raises(ConfigError, match="n_heldout"):
    tasks.symbol_split(8, 8)


def test_semi_lexinvariant_mix_at_p0_is_the_standard_tied_lm_and_at_p1_the_lexinvariant():
  v, d, t, b = 11, 16, 6, 2
  kw = dict(vocab_size=v, d_model=d, n_layers=1, n_heads=2, d_ff=32, max_len=t)
  ext_cfg = ModelConfig(**kw, embedding="external", tie_embeddings=False)
  graphdef, params = split_params(init_model(ext_cfg, 0))
  std_graphdef, std_params = split_params(init_model(ModelConfig(**kw), 1))
  # The standard tied LM with the same trunk and its table = the semi-lex learned rows.
  ext_pure, std_pure = nnx.to_pure_dict(params), nnx.to_pure_dict(std_params)
  std_pure = {k: (jnp.asarray(ext_pure["unembed"]).T if k == "embed" else ext_pure[k])
              for k in std_pure}
  nnx.replace_by_pure_dict(std_params, std_pure)
  rng = np.random.default_rng(0)
  seq = rng.integers(0, v, (b, t + 1)).astype(np.int32)
  batch = {"inputs": jnp.asarray(seq[:, :-1]), "targets": jnp.asarray(seq[:, 1:]),
           "weights": jnp.ones((b, t)), "index": jnp.asarray([[3], [9]], jnp.int32)}
  key = jax.random.PRNGKey(2)
  semi0 = lex.lexinvariant_loss(ext_cfg, scale=0.3, p=0.0)(graphdef, params, batch, key)[1]
  std = next_token_loss(std_graphdef, std_params, batch, key)[1]
  np.testing.assert_allclose(semi0.nll_BxT, std.nll_BxT, atol=1e-5, rtol=1e-5)
  # p=1 through the mixing code is the pure lexinvariant table row for row, and the loss.
  seq_keys = lex.sequence_keys(key, batch["index"])
  mixed = lex.sequence_tables(seq_keys, v, d, scale=0.3, learned_VxD=params["unembed"][...].T,
                              p=1.0)
  np.testing.assert_array_equal(mixed, lex.sequence_tables(seq_keys, v, d, scale=0.3))
  pure = lex.lexinvariant_loss(ext_cfg, scale=0.3, p=1.0)(graphdef, params, batch, key)[1]
  logits, _ = lex.forward_with_table(graphdef, params, batch["inputs"], mixed)
  np.testing.assert_allclose(cross_entropy(logits, batch["targets"]), pure.nll_BxT, atol=1e-6)
  # And p=0 is not the lexinvariant loss (the check can fail).
  assert not np.allclose(semi0.nll_BxT, pure.nll_BxT, atol=1e-3)
