"""NAR (arXiv 2503.10696): schedule, proximity-aware mask, logit mixing, cached step decoding
against the teacher-forced forward, and the synthetic field's exact likelihoods."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import nar
from jaxtok.data.fields import CausalField, FieldSource
from jaxtok.decode import Model
from jaxtok.config import ConfigError
from jaxtok.nn import ModelConfig, init_model


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16])
def test_schedule_2d_takes_2n_minus_1_steps(n):
  idx_SxW, valid_SxW = nar.nar_schedule((n, n))
  assert idx_SxW.shape == (2 * n - 1, n)
  assert sorted(idx_SxW[valid_SxW]) == list(range(n * n))  # every token exactly once
  for s in range(2 * n - 1):
    rows, cols = np.unravel_index(idx_SxW[s][valid_SxW[s]], (n, n))
    assert np.all(rows + cols == s) and valid_SxW[s].sum() == min(s, 2 * n - 2 - s) + 1
  assert nar.forward_passes(nar.nar_order((n, n))) == 2 * n - 1
  assert nar.forward_passes(nar.raster_order((n, n))) == n * n
  fed = [s for a, e, w in nar.width_segments(nar.nar_order((n, n))) for s in range(a, e)
         if valid_SxW[s].sum() <= w <= n]
  assert fed == list(range(2 * n - 2))  # every fed step once, in order, in a block that fits


@pytest.mark.parametrize("t,n", [(1, 3), (2, 3), (4, 16), (3, 2)])
def test_schedule_3d_takes_2n_plus_t_minus_2_steps(t, n):
  idx_SxW, valid_SxW = nar.nar_schedule((t, n, n))
  assert idx_SxW.shape[0] == 2 * n + t - 2
  assert sorted(idx_SxW[valid_SxW]) == list(range(t * n * n))
  d_N = np.stack(np.unravel_index(nar.manhattan_order((t, n, n)), (t, n, n))).sum(0)
  assert np.all(np.diff(d_N) >= 0)


@pytest.mark.parametrize("shape,n_cond", [((3, 4), 2), ((2, 2, 3), 1)])
def test_mask_equals_brute_force(shape, n_cond):
  order = nar.nar_order(shape, n_cond)
  mask_LxL = np.asarray(nar.order_mask(order, 2))[1]
  coords = [None] * n_cond + list(itertools.product(*map(range, shape)))
  l = order.seq_len
  want = np.zeros((l, l), bool)
  for a, b in itertools.product(range(l), range(l)):
    if a < n_cond:
      want[a, b] = b <= a  # condition tokens: causal among themselves, never see the grid
    else:
      want[a, b] = b < n_cond or sum(coords[b]) <= sum(coords[a])
  np.testing.assert_array_equal(mask_LxL, want)
  raster = nar.raster_order(shape, n_cond)
  np.testing.assert_array_equal(np.asarray(nar.order_mask(raster))[0], np.tril(np.ones((l, l))))


def test_mix_weights_average_available_neighbours():
  order = nar.nar_order((3, 3), 1)
  w = nar.mix_weights(order.valid_NxH, order.src_NxH, 1)
  np.testing.assert_allclose(w[0], [0.5, 0.5])  # origin: both heads at the condition token
  np.testing.assert_allclose(w[1], [0, 1])  # first row: horizontal (backbone) head only
  np.testing.assert_allclose(w[3], [1, 0])  # first column: vertical head only
  np.testing.assert_allclose(w[4], [0.5, 0.5])
  assert order.src_NxH[4].tolist() == [1 + 1, 1 + 3]  # up (0,1) and left (1,0) of (1,1)
  np.testing.assert_allclose(nar.mix_weights(order.valid_NxH, order.src_NxH, 1, head=1)[4], [0, 1])
  np.testing.assert_allclose(nar.mix_weights(order.valid_NxH, order.src_NxH, 1, head=1)[0],
                             [0.5, 0.5])


def _model(shape, vocab=10, **kw):
  cfg = nar.grid_model_config(shape, vocab, d_model=48, n_layers=2, n_heads=4, d_ff=64,
                              head_dim=12, init_std=0.3, **kw)
  return Model.from_module(init_model(cfg, 0))


def _tokens(order, b=3, seed=0, grid_vocab=8, cond=9):
  rng = np.random.default_rng(seed)
  return jnp.asarray(np.concatenate([np.full((b, order.n_cond), cond),
                                     rng.integers(0, grid_vocab, (b, order.n_tokens))], 1),
                     jnp.int32)


@pytest.mark.parametrize("shape,kind", [((4, 4), "nar"), ((2, 3, 3), "nar"), ((3, 3), "raster")])
def test_cached_step_decoding_equals_teacher_forced_logits(shape, kind):
  model = _model(shape)
  order = (nar.nar_order if kind == "nar" else nar.raster_order)(shape, 2)
  tokens = _tokens(order)
  full = nar.grid_logits(model, order, tokens, 8)
  cached = nar.cached_grid_logits(model, order, tokens, 8)
  assert float(jnp.std(full)) > 0.1  # a model whose logits are far from uniform
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-4)


def test_targets_see_only_earlier_steps():
  """Changing every token at step >= d leaves the logits of step-d targets unchanged."""
  shape = (4, 4)
  model = _model(shape)
  order = nar.nar_order(shape, 1)
  a, b = _tokens(order, 1, seed=1), _tokens(order, 1, seed=2)
  steps_N = order.step_L[1:]
  for d in (1, 3, 5):
    mixed = jnp.where(jnp.asarray(order.step_L >= d)[None], b, a)
    la = nar.grid_logits(model, order, a, 8)[0, steps_N == d]
    lb = nar.grid_logits(model, order, mixed, 8)[0, steps_N == d]
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), atol=1e-5)
    assert not np.allclose(nar.grid_logits(model, order, mixed, 8)[0, steps_N == d + 1],
                           nar.grid_logits(model, order, a, 8)[0, steps_N == d + 1])


def test_greedy_guided_generation_is_the_argmax_of_teacher_forced_guided_logits():
  shape = (3, 4)
  model = _model(shape)
  order = nar.nar_order(shape, 1)
  cond = jnp.array([[9], [8]], jnp.int32)
  grid = nar.generate_grid(model, order, cond, jax.random.key(0), grid_vocab=8,
                                  temperature=0.0, cfg_scale=2.0, null_cond=8)
  with_cond = nar.grid_logits(model, order, jnp.concatenate([cond, grid], 1), 8)
  with_null = nar.grid_logits(model, order, jnp.concatenate([jnp.full_like(cond, 8), grid],
                                                                 1), 8)
  guided = with_null + 2.0 * (with_cond - with_null)
  np.testing.assert_array_equal(np.asarray(grid), np.asarray(jnp.argmax(guided, -1)))
  again = nar.nar_generate(model, shape, cond, jax.random.key(1), grid_vocab=8,
                                  temperature=0.0, cfg_scale=2.0, null_cond=8)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(grid))


def test_bad_inputs_raise_naming_the_argument():
  with pytest.raises(ConfigError, match="n_cond"):
    nar.nar_order((3, 3), 0)
  with pytest.raises(ConfigError, match="shape"):
    nar.nar_order((3, 0))
  model = _model((3, 3))
  order = nar.nar_order((3, 3))
  with pytest.raises(ValueError, match="tokens_BxL"):
    nar.grid_logits(model, order, jnp.zeros((1, 5), jnp.int32), 8)
  with pytest.raises(ValueError, match="cond_BxC"):
    nar.generate_grid(model, order, jnp.full((1, 1), 10), jax.random.key(0),
                             grid_vocab=8)
  with pytest.raises(ConfigError, match="null_cond"):
    nar.generate_grid(model, order, jnp.full((1, 1), 9), jax.random.key(0),
                             grid_vocab=8, cfg_scale=2.0)
  plain = ModelConfig(vocab_size=10, d_model=32, n_layers=1, n_heads=2, d_ff=32, rope_axes=2)
  plain_model = Model.from_module(init_model(plain, 0))
  with pytest.raises(ValueError, match="extra_heads"):
    nar.grid_logits(plain_model, order, _tokens(order, 1), 8)


def _all_grids(n, v):
  return np.array(list(itertools.product(range(v), repeat=n * n)))


@pytest.mark.parametrize("same_diagonal", [False, True])
def test_field_likelihoods_are_exact_distributions(same_diagonal):
  field = CausalField(3, 2, seed=3, alpha=0.5, same_diagonal=same_diagonal)
  x_MxN = _all_grids(3, 2)
  p_M = np.exp(field.log_prob(x_MxN))
  np.testing.assert_allclose(p_M.sum(), 1.0, atol=1e-12)
  q_M = np.exp(field.nar_log_prob(x_MxN))
  np.testing.assert_allclose(q_M.sum(), 1.0, atol=1e-12)  # a product of per-step marginals
  # Brute force: p(x_c | earlier diagonals) from the joint, for every grid and cell.
  d_N = np.add.outer(np.arange(3), np.arange(3)).reshape(-1)
  brute = np.zeros(len(x_MxN))
  for c in range(9):
    earlier = d_N < d_N[c]
    key_prev = [tuple(r) for r in x_MxN[:, earlier]]
    key_c = [k + (x,) for k, x in zip(key_prev, x_MxN[:, c])]
    mass_prev, mass_c = {}, {}
    for kp, kc, p in zip(key_prev, key_c, p_M):
      mass_prev[kp] = mass_prev.get(kp, 0) + p
      mass_c[kc] = mass_c.get(kc, 0) + p
    brute += np.log([mass_c[kc] / mass_prev[kp] for kp, kc in zip(key_prev, key_c)])
  np.testing.assert_allclose(field.nar_log_prob(x_MxN), brute, atol=1e-9)
  gap = np.sum(p_M * (field.log_prob(x_MxN) - field.nar_log_prob(x_MxN)))  # KL(p || NAR best)
  assert (gap > 1e-3) if same_diagonal else (abs(gap) < 1e-12)
  # Samples follow log_prob.
  samples = field.sample(np.random.default_rng(0), 20000)
  freq = np.bincount(samples @ (2 ** np.arange(8, -1, -1)), minlength=512) / 20000
  assert np.abs(freq - p_M).max() < 4 * np.sqrt(p_M.max() / 20000)


def test_field_source_is_seeded_and_feeds_grid_examples():
  field = CausalField(4, 3, seed=0)
  src = FieldSource(field, seed=5, cond_id=3)
  a, b = src[7], src[7]
  np.testing.assert_array_equal(a["grid"], b["grid"])
  row = nar.to_grid_example(a)
  assert row["inputs"].tolist() == [3] + a["grid"].tolist()
  np.testing.assert_array_equal(row["targets"], a["grid"])
  assert row["weights"].shape == (16,) and int(a["grid"].max()) < 3
