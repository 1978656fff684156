"""Compression while decoding, and PIE re-rotation, on a tiny random model."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok import decode
from jaxtok import kvcompress as kc
from jaxtok.cache import init_cache
from jaxtok.kvcompress import decoding, pie
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.transformer import forward, init_model

CFG = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                  max_len=64, rope_theta=500.0)


@functools.lru_cache(maxsize=None)
def model():
  return nnx.split(init_model(CFG, seed=5), nnx.Param)


def prompt(b=2, t=12, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, CFG.vocab_size)


def test_decoding_with_room_for_everything_equals_greedy():
  graphdef, params = model()
  p = prompt()
  ref, _ = decode.generate(graphdef, params, p, max_new_tokens=6, capacity=32)
  got, info = decoding.generate(graphdef, params, p, policy=kc.H2O(), budget_tokens=18,
                                max_new_tokens=6, every=3)
  np.testing.assert_array_equal(got, ref)
  assert info["capacity"] == 21


def test_decoding_keeps_the_budget_and_true_positions():
  graphdef, params = model()
  p = prompt()
  for policy in (kc.StreamingLLM(sinks=2), kc.TOVA(), kc.ElasticCache(start=2, distance=-3)):
    toks, info = decoding.generate(graphdef, params, p, policy=policy, budget_tokens=8,
                                   max_new_tokens=6, every=2)
    cache = info["cache"]
    assert toks.shape == (2, 6) and info["capacity"] == 14
    np.testing.assert_array_equal(cache.next_pos, [18, 18])
    for layer in cache.layers:
      assert np.all(np.asarray(layer.length) == 8)
      pos = np.asarray(layer.pos)[:, :, :8]
      assert pos.max() == 17 and np.all(np.diff(pos, axis=-1) > 0)
  # StreamingLLM: sinks + the 6 newest positions
  toks, info = decoding.generate(graphdef, params, p, policy=kc.StreamingLLM(sinks=2),
                                 budget_tokens=8, max_new_tokens=6, every=1)
  assert np.asarray(info["cache"].layers[1].pos)[0, 0, :8].tolist() == [0, 1, 12, 13, 14, 15,
                                                                         16, 17]


def _layer0_keys(tokens_BxT, pos_BxT):
  graphdef, params = model()
  k = forward(graphdef, params, tokens_BxT, pos_BxT).kv[0][0]
  return jnp.swapaxes(k, 1, 2)  # B K T Dh


def test_rerotated_keys_equal_fresh_keys_at_new_positions():
  toks = prompt(2, 10)
  old = jnp.broadcast_to(jnp.arange(10), (2, 10))
  new = old + jnp.array([[7], [-3]]) + (jnp.arange(10) >= 5) * 4
  new = jnp.maximum(new, 0)
  k_old, k_new = _layer0_keys(toks, old), _layer0_keys(toks, new)
  bcast = lambda p: jnp.broadcast_to(p[:, None, :], k_old.shape[:3])
  got = pie.rerotate(k_old, bcast(old), bcast(new), CFG.rope_theta)
  np.testing.assert_allclose(got, k_new, atol=1e-5)
  assert float(jnp.max(jnp.abs(k_old - k_new))) > 1e-2  # the rotation did something


def test_pie_delete_and_insert_match_fresh_layer0_keys():
  graphdef, params = model()
  toks = prompt(1, 12)
  _, cache = decode.prefill(graphdef, params, init_cache(CFG, 1, 24), toks, jnp.array([12]))
  # delete positions 3..5: layer-0 keys equal the fresh encoding of the shortened sequence
  short = jnp.concatenate([toks[:, :3], toks[:, 6:]], axis=1)
  d = pie.delete(cache, 3, 3, CFG.rope_theta)
  fresh = _layer0_keys(short, jnp.arange(9)[None])
  np.testing.assert_allclose(d.layers[0].k[:, :, :9], fresh, atol=1e-5)
  assert d.layers[0].pos[0, 0, :9].tolist() == list(range(9)) and int(d.next_pos[0]) == 9
  # insert two tokens at position 4: layer-0 keys (sorted by position) equal a fresh encoding
  ins = prompt(1, 2, seed=9)
  i = pie.insert(graphdef, params, cache, 4, ins, CFG.rope_theta)
  longer = jnp.concatenate([toks[:, :4], ins, toks[:, 4:]], axis=1)
  order = jnp.argsort(i.layers[0].pos[0, 0, :14])
  np.testing.assert_allclose(i.layers[0].k[:, :, order], _layer0_keys(longer, jnp.arange(14)[None]),
                             atol=1e-5)
  assert int(i.next_pos[0]) == 14 and int(i.layers[0].length[0, 0]) == 14


def test_teacher_forced_score_with_room_for_everything_equals_the_full_nll():
  graphdef, params = model()
  toks = prompt(2, 16, seed=3)
  logits = forward(graphdef, params, toks, jnp.broadcast_to(jnp.arange(16), (2, 16))).logits
  logp = jax.nn.log_softmax(logits[:, 7:15], -1)
  ref = -float(jnp.mean(jnp.take_along_axis(logp, toks[:, 8:, None], -1)))
  got = decoding.score(graphdef, params, toks, 8, policy=kc.TOVA(), budget_tokens=16, every=4)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  small = decoding.score(graphdef, params, toks, 8, policy=kc.TOVA(), budget_tokens=4, every=4)
  assert small != got
