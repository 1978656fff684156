"""KV compression: identities on a tiny random model, hand-worked scores, bad input."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import cache as cache_lib
from jaxtok import decode
from jaxtok import kvcompress as kc
from jaxtok.cache import init_cache
from jaxtok.config import ConfigError
from jaxtok.kvcompress import apply as apply_lib
from jaxtok.kvcompress import LayerPlan, Observation
from jaxtok.nn import masks
from jaxtok.nn.attention import AttnStats
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.transformer import forward, init_model

CFG = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                  max_len=64)
T, W, CAP = 24, 4, 40


@functools.lru_cache(maxsize=None)
def model():
  return decode.Model.from_module(init_model(CFG, seed=3))


def tokens(b=2, t=T, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, CFG.vocab_size)


@functools.lru_cache(maxsize=None)
def prefilled():
  fn = jax.jit(kc.observe, static_argnums=3)
  return fn(model(), init_cache(CFG, 2, CAP), tokens(), W)


def next_logits(cache, tok_BxN):
  return _next_logits(model(), cache, tok_BxN)


@jax.jit
def _next_logits(m, cache, tok_BxN):
  pos = cache.next_pos[:, None] + jnp.arange(tok_BxN.shape[1])[None]
  return decode.extend(m, cache, tok_BxN, pos)[0].logits


ALL = [kc.Full(), kc.Random(), kc.StreamingLLM(), kc.H2O(), kc.TOVA(), kc.SnapKV(),
       kc.PyramidKV(), kc.KNorm(), kc.ElasticCache(), kc.EMS(merge_threshold=-1.0),
       kc.SentenceKV(boundary_ids=(5, 7)), kc.AdaKV(inner=kc.SnapKV())]


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name)
def test_budget_at_least_length_leaves_logits_unchanged(policy):
  _, cache, obs = prefilled()
  budget = kc.uniform(CFG.n_layers, CFG.kv_heads, T + 3)
  res = kc.compress(cache, policy, budget, obs)
  nxt = tokens(2, 3, seed=1)
  np.testing.assert_allclose(next_logits(res.cache, nxt), next_logits(cache, nxt), atol=1e-5)
  assert float(res.kept_fraction) == 1.0


@pytest.mark.parametrize("policy", [p for p in ALL if p.name != "full"], ids=lambda p: p.name)
def test_budget_is_respected_per_layer_and_head(policy):
  _, cache, obs = prefilled()
  b = 8
  res = kc.compress(cache, policy, kc.uniform(CFG.n_layers, CFG.kv_heads, b), obs)
  for layer in res.cache.layers:
    if policy.name.startswith("adakv"):  # head-wise: the layer's total is the budget
      assert np.all(np.asarray(layer.length).sum(-1) == b * CFG.kv_heads)
    elif policy.name != "pyramidkv":
      assert np.all(np.asarray(layer.length) == b)
    # kept slots stay in position order and are real tokens
    pos = np.asarray(layer.pos)
    for r in range(2):
      for k in range(CFG.kv_heads):
        n = int(layer.length[r, k])
        assert np.all(np.diff(pos[r, k, :n]) > 0) and np.all(pos[r, k, :n] >= 0)
  assert float(res.kept_fraction) < 0.5
  np.testing.assert_array_equal(res.cache.next_pos, cache.next_pos)
  # masses add up: merged slots carry every token they absorbed, never more than were there
  total = sum(float(m.sum()) for m in res.mass)
  assert total <= CFG.n_layers * 2 * CFG.kv_heads * T + 1e-3


def test_after_dropping_slots_next_token_has_its_true_position():
  """StreamingLLM keeps the same slots in every layer and head, so decoding the next token on
  the compressed cache equals the full sequence's forward with the dropped keys masked out of
  the last query's row - which holds only if the new token is rotated at its true position."""
  m = model()
  _, cache, obs = prefilled()
  sinks, b = 2, 9
  res = kc.compress(cache, kc.StreamingLLM(sinks=sinks), kc.uniform(2, 2, b), obs)
  nxt = tokens(2, 1, seed=2)
  got = next_logits(res.cache, nxt)[:, 0]
  assert np.all(np.asarray(res.cache.layers[0].pos[:, :, :b])
                == np.r_[0:sinks, T - (b - sinks):T])
  full = jnp.concatenate([tokens(), nxt], axis=1)
  mask = np.tril(np.ones((T + 1, T + 1), bool))
  mask[T, sinks:T - (b - sinks)] = False
  ref = forward(m.graphdef, m.params, full, jnp.broadcast_to(jnp.arange(T + 1), (2, T + 1)),
                jnp.broadcast_to(jnp.asarray(mask), (2, T + 1, T + 1))).logits[:, T]
  np.testing.assert_allclose(got, ref, atol=1e-5)
  out, _ = decode.extend(m, res.cache, nxt, res.cache.next_pos[:, None])
  assert np.all(np.asarray(out.cache.layers[0].pos[:, :, b]) == T)


def test_per_head_lengths_are_what_attention_sees():
  """Slots past each head's own length are invisible: garbage there changes nothing."""
  _, cache, obs = prefilled()
  budget = kc.Budget(((3, 11), (7, 5)))
  res = kc.compress(cache, kc.H2O(), budget, obs)
  assert [np.asarray(l.length).tolist() for l in res.cache.layers] == [[[3, 11]] * 2,
                                                                       [[7, 5]] * 2]
  junk = res.cache.replace(layers=tuple(
      l.replace(k=jnp.where(jnp.arange(CAP)[None, None, :, None] >= l.length[..., None, None],
                            1e3, l.k)) for l in res.cache.layers))
  nxt = tokens(2, 2, seed=4)
  np.testing.assert_allclose(next_logits(junk, nxt), next_logits(res.cache, nxt), atol=1e-5)


def _layer(k_BxKxSxDh, length):
  b, kh, s, _ = k_BxKxSxDh.shape
  return cache_lib.LayerKV(k=k_BxKxSxDh, v=-k_BxKxSxDh, length=jnp.full((b, kh), length),
                           pos=jnp.broadcast_to(jnp.arange(s), (b, kh, s)))


def test_merging_identical_keys_loses_nothing():
  k = jax.random.normal(jax.random.key(0), (1, 1, 6, 4))
  k = k.at[:, :, 3].set(k[:, :, 2])
  layer = _layer(k, 6)
  # keep slots 0, 1, 2, 4, 5; slot 3 (a copy of 2) merges into new slot 2
  plan = LayerPlan(keep_BxKxS=jnp.array([[[0, 1, 2, 4, 5, 5]]]), n_keep_BxK=jnp.array([[5]]),
                   dest_BxKxS=jnp.array([[[0, 1, 2, 2, 3, 4]]]))
  c = cache_lib.KVCache(layers=(layer,), next_pos=jnp.array([6]))
  new, mass, _ = apply_lib.apply_plans(c, (plan,))
  l = new.layers[0]
  np.testing.assert_array_equal(l.k[0, 0, :5], k[0, 0, jnp.array([0, 1, 2, 4, 5])])
  np.testing.assert_array_equal(l.v[0, 0, :5], -k[0, 0, jnp.array([0, 1, 2, 4, 5])])
  np.testing.assert_array_equal(mass[0][0, 0, :6], [1, 1, 2, 1, 1, 0])
  assert int(l.length[0, 0]) == 5 and l.pos[0, 0, :5].tolist() == [0, 1, 2, 4, 5]


def test_merge_is_mass_weighted_and_trash_vanishes():
  k = jnp.arange(5, dtype=jnp.float32).reshape(1, 1, 5, 1) * jnp.ones((1, 1, 5, 2))
  layer = _layer(k, 5)
  plan = LayerPlan(keep_BxKxS=jnp.array([[[1, 4, 4, 4, 4]]]), n_keep_BxK=jnp.array([[2]]),
                   dest_BxKxS=jnp.array([[[0, 0, 5, 0, 1]]]))  # slot 2 -> trash (zero class)
  mass = (jnp.array([[[1.0, 1.0, 1.0, 2.0, 1.0]]]),)
  new, m, _ = apply_lib.apply_plans(cache_lib.KVCache((layer,), jnp.array([5])), (plan,), mass)
  # (1*0 + 1*1 + 2*3) / 4
  np.testing.assert_allclose(new.layers[0].k[0, 0, 0], [7 / 4] * 2)
  np.testing.assert_array_equal(new.layers[0].k[0, 0, 1], [4, 4])
  np.testing.assert_array_equal(m[0][0, 0], [4, 1, 0, 0, 0])


def test_weighted_merge_uses_weights_for_the_mean_and_counts_for_the_mass():
  k = jnp.arange(5, dtype=jnp.float32).reshape(1, 1, 5, 1) * jnp.ones((1, 1, 5, 2))
  layer = _layer(k, 5)
  plan = LayerPlan(keep_BxKxS=jnp.array([[[1, 4, 4, 4, 4]]]), n_keep_BxK=jnp.array([[2]]),
                   dest_BxKxS=jnp.array([[[0, 0, 5, 0, 1]]]),
                   weight_BxKxS=jnp.array([[[1.0, 3.0, 1.0, 1.0, 1.0]]]))
  mass = (jnp.array([[[1.0, 1.0, 1.0, 2.0, 1.0]]]),)
  new, m, _ = apply_lib.apply_plans(cache_lib.KVCache((layer,), jnp.array([5])), (plan,), mass)
  # (1*1*0 + 1*3*1 + 2*1*3) / (1 + 3 + 2); the carried mass is still 4 tokens
  np.testing.assert_allclose(new.layers[0].k[0, 0, 0], [9 / 6] * 2, rtol=1e-6)
  np.testing.assert_array_equal(new.layers[0].k[0, 0, 1], [4, 4])
  np.testing.assert_array_equal(m[0][0, 0], [4, 1, 0, 0, 0])


def _one_hot_merge(x_BxKxSxDh, mass_BxKxS, dest_BxKxS):
  """Per destination m < S: (sum_j mass_j x_j, sum_j mass_j) over the slots j with dest_j = m,
  as a one-hot contraction (dest = S, the trash class, falls outside the one-hot)."""
  w_BxKxSxM = jax.nn.one_hot(dest_BxKxS, x_BxKxSxDh.shape[2]) * mass_BxKxS[..., None]
  return (jnp.einsum("bksm,bksd->bkmd", w_BxKxSxM, x_BxKxSxDh,
                     precision=jax.lax.Precision.HIGHEST), w_BxKxSxM.sum(axis=2))


def test_segment_merge_equals_one_hot_reference_exactly():
  # small integers: every sum is exact in fp32, so the two orders must agree bit for bit
  key = jax.random.key(1)
  x = jax.random.randint(key, (2, 3, 17, 8), -8, 8).astype(jnp.float32)
  mass = jax.random.randint(jax.random.fold_in(key, 1), (2, 3, 17), 1, 4).astype(jnp.float32)
  dest = jax.random.randint(jax.random.fold_in(key, 2), (2, 3, 17), 0, 18)
  ref_sum, ref_mass = _one_hot_merge(x, mass, dest)
  got_k, _, got_mass = apply_lib.merge_sums(x, x, mass, dest)
  np.testing.assert_array_equal(got_k, ref_sum)
  np.testing.assert_array_equal(got_mass, ref_mass)


def _obs(total_sum, window_sum=None, last=None, next_pos=None, window=0, tokens_BxS=None):
  s = total_sum.shape[-1]
  st = AttnStats(sum_BxKxS=total_sum, last_BxKxS=total_sum if last is None else last)
  ws = None if window_sum is None else (AttnStats(window_sum, window_sum),)
  return Observation(total=(st,), window=ws, tokens_BxS=tokens_BxS,
                     next_pos_B=jnp.array([s if next_pos is None else next_pos]),
                     window_size=window)


def test_hand_worked_scores():
  s = 8
  layer = _layer(jnp.ones((1, 2, s, 2)), s)
  mass = jnp.array([[[5, 0, 0, 3, 0, 0, 1, 0], [0, 1, 0, 0, 0, 4, 0, 0]]], jnp.float32)
  b2 = jnp.array([[2, 2]])
  keep = lambda p, b=b2, o=None: np.asarray(p.plan(layer, o or _obs(mass, mass, window=1), 0,
                                                   b).keep_BxKxS[0, :, :int(b[0, 0])]).tolist()
  assert keep(kc.StreamingLLM(sinks=1)) == [[0, 7], [0, 7]]
  # H2O, half the budget recent: the newest slot + the heaviest hitter
  assert keep(kc.H2O()) == [[0, 7], [5, 7]]
  assert keep(kc.H2O(recent_fraction=0.0)) == [[0, 3], [1, 5]]
  # TOVA: mean over heads of the last query -> [2.5, .5, 0, 1.5, 0, 2, .5, 0]
  assert keep(kc.TOVA(keep_last=False)) == [[0, 5], [0, 5]]
  assert keep(kc.TOVA()) == [[0, 7], [0, 7]]  # kvpress's rule: the newest slot always kept
  # SnapKV kernel 3 max-pool of the window votes, window slot 7 protected
  assert keep(kc.SnapKV(kernel=3)) == [[0, 7], [4, 7]]
  assert keep(kc.SnapKV(kernel=1), jnp.array([[3, 3]])) == [[0, 3, 7], [1, 5, 7]]
  kn = _layer(jnp.arange(1.0, s + 1.0)[None, None, :, None] * jnp.ones((1, 2, s, 2)), s)
  assert np.asarray(kc.KNorm().plan(kn, _obs(mass), 0, b2).keep_BxKxS[0, 0, :2]).tolist() == [0, 1]
  # Elastic: protected start 1 and last slot; heads averaged; everyone else merges to the
  # positionally nearest anchor (slot 3 -> 0? |3-0| = 3 > |3-7| = 4 is false: to 0)
  p = kc.ElasticCache(start=1).plan(layer, _obs(mass), 0, b2)
  assert np.asarray(p.dest_BxKxS[0, 0]).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
  p = kc.ElasticCache(start=1).plan(layer, _obs(mass), 0, jnp.array([[3, 3]]))
  assert np.asarray(p.keep_BxKxS[0, 0, :3]).tolist() == [0, 5, 7]
  assert np.asarray(p.dest_BxKxS[0, 0]).tolist() == [0, 0, 0, 1, 1, 1, 1, 2]  # tie: earlier
  # Elastic while decoding: with 8 slots, budget 6 and distance -2, slots 4, 5 go
  p = kc.ElasticCache(start=1, distance=-2).decode_plan(layer, _obs(mass), 0, jnp.array([[6, 6]]))
  assert np.asarray(p.keep_BxKxS[0, 0, :6]).tolist() == [0, 1, 2, 3, 6, 7]
  # SentenceKV: boundary token 9 at slots 2 and 5 -> sentences [0-2], [3-5], [6-7]
  toks = jnp.array([[1, 1, 9, 1, 1, 9, 1, 1]])
  win = jnp.array([[[1, 1, 1, 8, 8, 8, .1, 0], [1, 1, 1, 8, 8, 8, .1, 0]]], jnp.float32)
  o = _obs(win, win, window=1, tokens_BxS=toks)
  kept = kc.SentenceKV(boundary_ids=(9,), sinks=0).plan(layer, o, 0, jnp.array([[4, 4]]))
  assert np.asarray(kept.keep_BxKxS[0, 0, :4]).tolist() == [3, 4, 5, 7]
  # AdaKV: a layer budget of 4 goes where the scores are (head 0 has the mass); safeguard 1 each
  a = kc.AdaKV(inner=kc.H2O(recent_fraction=0.0), alpha_safeguard=0.5).plan(
      layer, _obs(mass), 0, b2)
  assert np.asarray(a.n_keep_BxK).tolist() == [[3, 1]]


def test_ems_evicts_or_merges_by_similarity():
  s = 6
  k = jnp.array([[1, 0], [1, 0.01], [-1, 0.2], [0, 1], [0.01, 1], [-1, -1]], jnp.float32)
  layer = _layer(k[None, None], s)
  sc = jnp.array([[[9, 0, 0, 8, 0, 0]]], jnp.float32)
  p = kc.EMS(sinks=0, merge_threshold=0.9).plan(layer, _obs(sc, sc, window=0), 0,
                                                  jnp.array([[2]]))
  # centres: slots 0 and 3. Slot 1 ~ key 0 and slot 4 ~ key 3: merged; slots 2 and 5 resemble
  # neither adjacent centre: zero class
  assert np.asarray(p.dest_BxKxS[0, 0]).tolist() == [0, 0, s, 1, 1, s]


def test_pyramid_schedule_and_fallback():
  b = kc.pyramid(3, 1, 40, 8, beta=4)
  # free 32: min 8, max 56 -> 64, 40, 16 (+8 window each: 56 + 8, ...)
  assert [r[0] for r in b.per_head] == [64, 40, 16] and not b.fallback
  fb = kc.pyramid(3, 1, 6, 8)
  assert fb.fallback and [r[0] for r in fb.per_head] == [6, 6, 6]


def test_bad_input_names_the_argument():
  _, cache, obs = prefilled()
  with pytest.raises(ConfigError, match="budget"):
    kc.uniform(2, 2, 0)
  with pytest.raises(ConfigError, match="capacity"):
    kc.compress(cache, kc.H2O(), kc.uniform(2, 2, CAP + 1), obs)
  with pytest.raises(ValueError, match="unknown name"):
    kc.make("nope")
  with pytest.raises(ConfigError, match="window"):
    kc.compress(cache, kc.SnapKV(), kc.uniform(2, 2, W), obs)
  with pytest.raises(ConfigError, match="boundary_ids"):
    kc.SentenceKV(boundary_ids=(CFG.vocab_size,), vocab_size=CFG.vocab_size)
  with pytest.raises(ConfigError, match="keep_ratio"):
    kc.from_ratio(2, 2, 10, 0.0)


def test_ems_normalisation_ignores_protected_sinks():
  """A sink's huge mass must not flatten every other score (min-max over the candidates)."""
  s = 6
  layer = _layer(jnp.ones((1, 1, s, 2)), s)
  tot = jnp.array([[[100.0, 1, 2, 3, 4, 5]]])
  win = jnp.array([[[100.0, 5, 0, 0, 0, 0]]])
  for norm in ("minmax", "rank"):
    sc = kc.EMS(sinks=1, normalise=norm).score(layer, _obs(tot, win, next_pos=s, window=0), 0,
                                               jnp.array([[2]]))
    # slot 1 tops the window among candidates, slot 5 the debiased global score
    assert np.asarray(sc[0, 0, 1:]).argmax() in (0, 4) and float(sc[0, 0, 1]) >= 0.99 * float(
        sc[0, 0, 1:].max())


@pytest.mark.parametrize("policy", [kc.SnapKV(), kc.EMS(merge_threshold=-1.0)],
                         ids=["keep-or-drop", "merging"])
def test_compress_to_capacity_equals_compress_then_resize(policy):
  """``capacity=`` gathers straight into the small cache (no full-size copy) and skips the
  merge sums for keep-or-drop policies: the same cache, mass and statistics as the full-size
  path followed by ``resize``."""
  _, cache, obs = prefilled()
  budget = kc.uniform(CFG.n_layers, CFG.kv_heads, 10)
  extra = tuple((t.sum_BxKxS,) for t in obs.total)
  small = kc.compress(cache, policy, budget, obs, extra=extra, capacity=12)
  arrays = kc.budget_arrays(policy.allocate(budget, obs), 2)
  plans = tuple(policy.plan(layer, obs, l, arrays[l]) for l, layer in enumerate(cache.layers))
  ref_c, ref_m, ref_e = apply_lib.apply_plans(cache, plans, None, extra, merges=True)
  ref = apply_lib.Result(cache=ref_c, mass=ref_m, kept_fraction=0.0, extra=ref_e)
  ref_cache = kc.resize(ref.cache, 12)
  for a, b in zip(small.cache.layers, ref_cache.layers):
    np.testing.assert_array_equal(a.length, b.length)
    np.testing.assert_array_equal(a.pos, b.pos)
    np.testing.assert_allclose(a.k, b.k, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.v, b.v, rtol=1e-6, atol=1e-6)
  for a, b in zip(small.mass, ref.mass):
    np.testing.assert_array_equal(a, b[:, :, :12])
  for a, b in zip(small.extra, ref.extra):
    np.testing.assert_allclose(a[0], b[0][:, :, :12], rtol=1e-6)
