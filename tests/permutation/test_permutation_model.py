"""The disentangled model (arXiv 2509.24125): hand constructions, Lemma 1, the train seam."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok import permutation as pm
from jaxtok.decode import Model
from jaxtok.nn import ModelConfig, init_model, masks
from jaxtok.nn.transformer import default_positions, forward
from jaxtok.permutation import VectorModel, hand_construction, vector_forward, vector_loss
from jaxtok.train.config import TrainConfig
from jaxtok.train.step import TrainState, make_optimizer, train_step

N = 6


def _batch(variant, m, size=512, seed=0):
  b = pm.vector_batch(np.random.default_rng(seed), size, N, n_scratch=m)
  b["mask"] = pm.mask_for(variant, N, m, size)
  return {k: jnp.asarray(v) for k, v in b.items() if k != "perm"}


# One compile per model definition and input shape: a Model's parameters are its only leaves.
_loss = jax.jit(lambda m, b: vector_loss(m.graphdef, m.params, b, None)[0])
_forward = jax.jit(lambda m, x, mask: vector_forward(m.graphdef, m.params, x, mask))


def _sse(model, batch):
  return float(_loss(Model.from_module(model), batch))


@pytest.mark.parametrize("variant,m", [("unmasked", 0), ("scratch", N), ("scratch", 2 * N)])
def test_hand_construction_inverts(variant, m):
  batch = _batch(variant, m)
  assert _sse(hand_construction(N, m, beta=60.0), batch) < 1e-4
  # Soft attention leaks ~T e^{-beta}: a small beta is measurably worse, so the check can fail.
  assert _sse(hand_construction(N, m, beta=3.0), batch) > 1e-2


def test_hand_construction_under_causal_mask_stays_above_bound():
  batch = _batch("causal", 0, size=4096)
  assert _sse(hand_construction(N, 0, beta=60.0), batch) >= pm.causal_mse_lower_bound(N)


@pytest.mark.parametrize("m", [N])
def test_lemma1_vector_model_bit_exact(m):
  t = 2 * N + m
  model = Model.from_module(VectorModel(N, t, init_std=0.3, seed=1))
  x = jnp.asarray(pm.vector_batch(np.random.default_rng(0), 4, N, n_scratch=m)["x"])
  causal = jnp.asarray(pm.mask_for("causal", N, m, 4))
  apply = lambda x: _forward(model, x, causal)
  for t_cut in (N - 1, t - 2):
    x2 = pm.perturb_rows_after(jax.random.key(t_cut), x, t_cut)
    assert pm.lemma1_violation(apply, x, x2, t_cut) == 0.0
    # ...and the perturbation does reach the later rows (the check is not vacuous).
    assert float(jnp.max(jnp.abs(apply(x)[:, t_cut + 1:] - apply(x2)[:, t_cut + 1:]))) > 0
  unmasked = jnp.asarray(pm.mask_for("unmasked", N, m, 4))
  x2 = pm.perturb_rows_after(jax.random.key(9), x, N)
  assert pm.lemma1_violation(lambda x: _forward(model, x, unmasked), x, x2, N) > 0


def test_lemma1_transformer_bit_exact():
  n, k, m = 4, 3, 4
  cfg = ModelConfig(vocab_size=pm.token_vocab(n, k)["size"], d_model=32, n_layers=2, n_heads=2,
                    d_ff=64, max_len=32)
  g, p = nnx.split(init_model(cfg, seed=0), nnx.Param)
  tokens = jnp.asarray(pm.token_batch(np.random.default_rng(0), 3, n, k, n_scratch=m)["inputs"])
  t = tokens.shape[1]
  pos = default_positions(3, t)
  hidden = jax.jit(lambda x, mask: forward(g, p, x, pos, mask, return_hidden=True).hidden)
  run = lambda mask: (lambda x: hidden(x, mask))
  causal = run(masks.causal(t, 3))  # the token variants carry this dense mask
  for t_cut in (1, 2 * n - 1, t - 3):
    x2 = pm.perturb_rows_after(jax.random.key(t_cut), tokens, t_cut, vocab=cfg.vocab_size)
    assert pm.lemma1_violation(causal, tokens, x2, t_cut) == 0.0
  # The prefix mask leaks inside the input block (why the prefix variant can invert).
  prefix = run(masks.prefix(t, jnp.full((3,), 2 * n)))
  x2 = pm.perturb_rows_after(jax.random.key(0), tokens, n, vocab=cfg.vocab_size)
  assert pm.lemma1_violation(prefix, tokens, x2, n) > 0


def test_vector_model_trains_through_the_one_train_step():
  m = N
  model = VectorModel(N, 2 * N + m)
  g, params = nnx.split(model, nnx.Param)
  tx = make_optimizer(TrainConfig(steps=40, lr=3e-2, warmup_steps=0, weight_decay=0.0))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     key=jax.random.key_data(jax.random.key(0)))
  step = jax.jit(functools.partial(train_step, g, tx, vector_loss))
  first = None
  for i in range(40):
    state, metrics = step(state, _batch("scratch", m, size=64, seed=i))
    first = float(metrics["loss"]) if first is None else first
  assert float(metrics["loss"]) < 0.7 * first
