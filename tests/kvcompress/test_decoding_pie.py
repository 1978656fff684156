"""Compression while decoding, and PIE re-rotation, on a tiny random model."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import decode
from jaxtok import kvcompress as kc
from jaxtok.cache import init_cache
from jaxtok.config import ConfigError
from jaxtok.kvcompress import decoding, pie
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.transformer import forward, init_model

CFG = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                  max_len=64, rope_theta=500.0)


@functools.lru_cache(maxsize=None)
def model():
  return decode.Model.from_module(init_model(CFG, seed=5))


def prompt(b=2, t=12, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, CFG.vocab_size)


def _final_state(m, p, compactor, max_new_tokens):
  """The decode loop's last state under ``compactor`` (its cache: what compression kept)."""
  def run(m, p):
    b = p.shape[0]
    state = decode.start(m, p, jnp.full((b,), p.shape[1], jnp.int32), jax.random.key(0),
                         capacity=p.shape[1] + max_new_tokens, max_new_tokens=max_new_tokens,
                         compactor=compactor)
    return decode.decode_loop(m, state, sampling=decode.Sampling(), eos_id=None,
                              compactor=compactor)
  return jax.jit(run)(m, p)


def test_decoding_with_room_for_everything_equals_greedy():
  m = model()
  p = prompt()
  ref = decode.generate(m, p, max_new_tokens=6, capacity=32)
  got = decoding.generate(m, p, policy=kc.H2O(), budget_tokens=18, max_new_tokens=6, every=3)
  np.testing.assert_array_equal(got.tokens_BxN, ref.tokens_BxN)
  assert int(got.stats["capacity"]) == 21
  # the same through the engine's generate with the compactor (any policy, any every)
  for policy, every in ((kc.SnapKV(), 1), (kc.ElasticCache(start=2, distance=-3), 4)):
    comp = kc.compactor(policy, budget_tokens=18, every=every)
    got = decode.generate(m, p, max_new_tokens=6, capacity=32, compactor=comp)
    np.testing.assert_array_equal(got.tokens_BxN, ref.tokens_BxN)


def test_decoding_keeps_the_budget_and_true_positions():
  m = model()
  p = prompt()
  for policy in (kc.StreamingLLM(sinks=2), kc.TOVA(), kc.ElasticCache(start=2, distance=-3)):
    comp = kc.compactor(policy, budget_tokens=8, every=2)
    toks = decoding.generate(m, p, policy=policy, budget_tokens=8, max_new_tokens=6, every=2)
    state = _final_state(m, p, comp, 6)
    cache = state.cache
    np.testing.assert_array_equal(state.tokens_BxN, toks.tokens_BxN)
    # the decode cache is budget + every slots, whatever the prompt's length
    assert toks.tokens_BxN.shape == (2, 6) and int(toks.stats["capacity"]) == 10
    assert cache.capacity == 10
    np.testing.assert_array_equal(cache.next_pos, [18, 18])
    for layer in cache.layers:
      assert np.all(np.asarray(layer.length) == 8)
      pos = np.asarray(layer.pos)[:, :, :8]
      assert pos.max() == 17 and np.all(np.diff(pos, axis=-1) > 0)
  # StreamingLLM: sinks + the 6 newest positions
  cache = _final_state(m, p, kc.compactor(kc.StreamingLLM(sinks=2), budget_tokens=8, every=1),
                       6).cache
  assert np.asarray(cache.layers[1].pos)[0, 0, :8].tolist() == [0, 1, 12, 13, 14, 15, 16, 17]


def test_compressed_decoding_samples_and_stops_at_eos():
  m = model()
  p = prompt()
  comp = kc.compactor("h2o", budget_tokens=8, every=2)
  hot = decode.Sampling(temperature=1.0)
  a = decode.generate(m, p, max_new_tokens=10, sampling=hot, key=jax.random.key(1), compactor=comp)
  b = decode.generate(m, p, max_new_tokens=10, sampling=hot, key=jax.random.key(2), compactor=comp)
  greedy = decode.generate(m, p, max_new_tokens=10, compactor=comp)
  toks = np.asarray(a.tokens_BxN)
  assert toks.shape == (2, 10) and toks.min() >= 0 and toks.max() < CFG.vocab_size
  assert not np.array_equal(toks, np.asarray(b.tokens_BxN))  # the key matters
  assert not np.array_equal(toks, np.asarray(greedy.tokens_BxN))
  # EOS: make row 0's third greedy token the EOS id; that row stops there (3 tokens, then 0s)
  eos = int(greedy.tokens_BxN[0, 2])
  stopped = decode.generate(m, p, max_new_tokens=10, compactor=comp, eos_id=eos)
  n0 = int(stopped.n_B[0])
  first = int(np.argmax(np.asarray(greedy.tokens_BxN[0]) == eos)) + 1
  assert n0 == first <= 3
  np.testing.assert_array_equal(stopped.tokens_BxN[0, :n0], greedy.tokens_BxN[0, :n0])
  assert np.all(np.asarray(stopped.tokens_BxN[0, n0:]) == 0)
  assert stopped.rows()[0] == list(map(int, greedy.tokens_BxN[0, :n0]))


def test_compactor_rejects_bad_arguments():
  for kw, name in ((dict(budget_tokens=0), "budget_tokens"), (dict(budget_tokens=8, every=0),
                   "every"), (dict(budget_tokens=8, every=-2), "every"),
                   (dict(budget_tokens=2.5), "budget_tokens"),
                   (dict(budget_tokens=8, window=8), "window"),
                   (dict(budget_tokens=8, window=0), "window")):
    with pytest.raises(ConfigError, match=name):
      kc.compactor("snapkv", **kw)
  with pytest.raises(ConfigError, match="policy"):
    kc.KVCompactor(policy="h2o", budget_tokens=8)
  with pytest.raises(ValueError, match="unknown name"):
    kc.compactor("nope", budget_tokens=8)
  with pytest.raises(ConfigError, match="every"):
    decoding.score(model(), prompt(2, 16), 8, policy=kc.TOVA(), budget_tokens=4, every=3)


def test_snapkv_decode_time_scores_read_the_newest_query_only():
  """While decoding, SnapKV's window is the newest query (window_size 1): its compaction is
  the top-k of the newest query's pooled attention, the newest slot protected."""
  m = model()
  p = prompt()
  comp = kc.compactor(kc.SnapKV(), budget_tokens=8, every=1)
  state = decode.start(m, p, jnp.full((2,), 12, jnp.int32), jax.random.key(0), capacity=20,
                       max_new_tokens=1, compactor=comp)
  token_B = jnp.argmax(state.logits_BxV, -1).astype(jnp.int32)
  out, cache = decode.extend(m, state.cache, token_B[:, None], state.cache.next_pos[:, None],
                             commit_B=jnp.ones_like(token_B), return_stats=True)
  aux = comp.observe(state.aux, out, cache)
  obs = comp.decode_observation(cache, aux)
  assert obs.window_size == 1 and obs.window is aux.last
  got, _ = comp.compact(cache, aux)
  for l, (layer, st) in enumerate(zip(cache.layers, out.stats)):
    score = kc.SnapKV().score(layer, obs, l, jnp.full((2, CFG.kv_heads), 8))
    plan = kc.top_plan(score, layer, jnp.full((2, CFG.kv_heads), 8))
    want = np.sort(np.asarray(jnp.take_along_axis(layer.pos, plan.keep_BxKxS[:, :, :8], 2)), -1)
    np.testing.assert_array_equal(np.asarray(got.layers[l].pos[:, :, :8]), want)
    assert np.all(np.asarray(got.layers[l].pos[:, :, 7]) == 12)  # the newest slot is kept


def _layer0_keys(tokens_BxT, pos_BxT):
  m = model()
  k = forward(m.graphdef, m.params, tokens_BxT, pos_BxT).kv[0][0]
  return jnp.swapaxes(k, 1, 2)  # B K T Dh


def test_rerotated_keys_equal_fresh_keys_at_new_positions():
  toks = prompt(2, 10)
  old = jnp.broadcast_to(jnp.arange(10), (2, 10))
  new = old + jnp.array([[7], [-3]]) + (jnp.arange(10)[None, :] >= 5) * 4
  new = jnp.maximum(new, 0)
  k_old, k_new = _layer0_keys(toks, old), _layer0_keys(toks, new)
  bcast = lambda p: jnp.broadcast_to(p[:, None, :], k_old.shape[:3])
  got = pie.rerotate(k_old, bcast(old), bcast(new), CFG.rope_theta)
  np.testing.assert_allclose(got, k_new, atol=1e-5)
  assert float(jnp.max(jnp.abs(k_old - k_new))) > 1e-2  # the rotation did something


def test_pie_delete_and_insert_match_fresh_layer0_keys():
  m = model()
  toks = prompt(1, 12)
  _, cache = decode.prefill(m, init_cache(CFG, 1, 24), toks, jnp.array([12]))
  # delete positions 3..5: layer-0 keys equal the fresh encoding of the shortened sequence
  short = jnp.concatenate([toks[:, :3], toks[:, 6:]], axis=1)
  d = pie.delete(cache, 3, 3, CFG.rope_theta)
  fresh = _layer0_keys(short, jnp.arange(9)[None])
  np.testing.assert_allclose(d.layers[0].k[:, :, :9], fresh, atol=1e-5)
  assert d.layers[0].pos[0, 0, :9].tolist() == list(range(9)) and int(d.next_pos[0]) == 9
  # insert two tokens at position 4: layer-0 keys (sorted by position) equal a fresh encoding
  ins = prompt(1, 2, seed=9)
  i = pie.insert(m, cache, 4, ins, CFG.rope_theta)
  longer = jnp.concatenate([toks[:, :4], ins, toks[:, 4:]], axis=1)
  order = jnp.argsort(i.layers[0].pos[0, 0, :14])
  np.testing.assert_allclose(i.layers[0].k[:, :, order], _layer0_keys(longer, jnp.arange(14)[None]),
                             atol=1e-5)
  assert int(i.next_pos[0]) == 14 and int(i.layers[0].length[0, 0]) == 14


def test_teacher_forced_score_with_room_for_everything_equals_the_full_nll():
  m = model()
  toks = prompt(2, 16, seed=3)
  logits = forward(m.graphdef, m.params, toks, jnp.broadcast_to(jnp.arange(16), (2, 16))).logits
  logp = jax.nn.log_softmax(logits[:, 7:15], -1)
  ref = -float(jnp.mean(jnp.take_along_axis(logp, toks[:, 8:, None], -1)))
  got = decoding.score(m, toks, 8, policy=kc.TOVA(), budget_tokens=16, every=4)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  small = decoding.score(m, toks, 8, policy=kc.TOVA(), budget_tokens=4, every=4)
  assert small != got
