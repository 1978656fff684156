"""SentenceKV decoding through selected attention (arXiv 2504.00970 §3.3): the kernel path
(Pallas selected attention, interpret mode on CPU) equals the reference path, and both equal
plain decoding over the cache compressed to the same selection (same slots, same positions)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import kvcompress as kc
from jaxtok import cache as cache_lib
from jaxtok.cache import init_cache
from jaxtok.config import ConfigError
from jaxtok.decode import Model, decode_step, extend
from jaxtok.kvcompress import sentencekv
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.transformer import init_model

CFG = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                  max_len=128)
T, BUDGET, WINDOW, NEW = 40, 14, 4, 4
POLICY = kc.SentenceKV(boundary_ids=(7,), sinks=2)


def _prompt():
  x = np.array(jax.random.randint(jax.random.key(1), (2, T), 8, CFG.vocab_size))
  x[0, [5, 11, 19, 26, 33]] = 7  # sentence boundaries, different per row
  x[1, [9, 15, 30]] = 7
  return jnp.asarray(x)


@pytest.fixture(scope="module", name="model")
def _model():
  return Model.from_module(init_model(CFG, seed=3))


def test_kernel_path_equals_reference_path_equals_compressed_cache(model):
  m = model
  prompt = _prompt()

  def run(impl):
    mi = Model.from_module(init_model(dataclasses.replace(CFG, attention_impl=impl), seed=3))
    return sentencekv.decode_selected(mi, prompt, policy=POLICY, budget_tokens=BUDGET,
                                      max_new_tokens=NEW, window=WINDOW)[0]
  state_x, state_k = run("xla"), run("pallas")
  tok_x = state_x.tokens_BxN
  np.testing.assert_array_equal(state_k.tokens_BxN, tok_x)
  np.testing.assert_allclose(state_k.logits_BxV, state_x.logits_BxV, atol=1e-5)
  gen = sentencekv.generate(m, prompt, policy=POLICY, budget_tokens=BUDGET, max_new_tokens=NEW,
                            window=WINDOW)
  np.testing.assert_array_equal(gen.tokens_BxN, tok_x)
  # Each (layer, row, head) attends exactly BUDGET prompt slots, whole sentences mostly.
  assert float(gen.stats["selected_fraction"]) == pytest.approx(BUDGET / T)
  for layer in state_x.cache.layers:
    assert isinstance(layer, cache_lib.SelectedLayerKV)
    np.testing.assert_array_equal(layer.selected[:, :, :T].sum(-1), BUDGET)
    np.testing.assert_array_equal(layer.selected[:, :, T:T + NEW], True)  # generated tokens

  # The same slots kept by compression, then plain greedy decoding: the same computation.
  logits, cache, obs = jax.jit(lambda m, x: kc.observe(m, init_cache(CFG, 2, T + NEW), x,
                                                      WINDOW))(m, prompt)
  small = kc.compress(cache, POLICY, kc.uniform(CFG.n_layers, CFG.kv_heads, BUDGET), obs).cache
  step = jax.jit(decode_step)
  for i in range(NEW):
    tok = jnp.argmax(logits, -1).astype(jnp.int32)
    np.testing.assert_array_equal(tok, tok_x[:, i])
    logits, small = step(m, small, tok)
  np.testing.assert_allclose(logits, state_x.logits_BxV, atol=1e-5)
  # Selecting every slot is plain attention over the full cache; the budget's selection is not.
  everything = cache_lib.select(cache, tuple(jnp.ones_like(l.pos, bool) for l in cache.layers))
  all_logits, _ = step(m, everything, tok_x[:, 0])
  plain_logits, _ = step(m, cache, tok_x[:, 0])
  np.testing.assert_allclose(all_logits, plain_logits, atol=1e-5)
  small = kc.compress(cache, POLICY, kc.uniform(CFG.n_layers, CFG.kv_heads, BUDGET), obs).cache
  assert not np.allclose(step(m, small, tok_x[:, 0])[0], plain_logits, atol=1e-3)


def test_selection_misuse_raises(model):
  m = model
  with pytest.raises(ConfigError, match="budget_tokens"):
    sentencekv.generate(m, _prompt(), policy=POLICY, budget_tokens=T + 1, max_new_tokens=2)
  cache = init_cache(CFG, 2, 8)
  with pytest.raises(ValueError, match="one selection per layer"):
    cache_lib.select(cache, tuple(jnp.ones((2, CFG.kv_heads, 8), bool)
                                  for _ in range(CFG.n_layers - 1)))
  with pytest.raises(ValueError, match="shape"):
    cache_lib.select(cache, tuple(jnp.ones((2, CFG.kv_heads, 7), bool)
                                  for _ in range(CFG.n_layers)))
  selected = cache_lib.select(cache, tuple(jnp.ones((2, CFG.kv_heads, 8), bool)
                                           for _ in range(CFG.n_layers)))
  with pytest.raises(NotImplementedError, match="statistics"):
    extend(m, selected, jnp.zeros((2, 1), jnp.int32), jnp.zeros((2, 1), jnp.int32),
           return_stats=True)
