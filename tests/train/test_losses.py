"""The loss seam: a paper's loss (external per-sequence embeddings, a prefix mask, its own RNG
draws) trains through the one train_step; the default loss is the plain next-token loss."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtok.nn import ModelConfig, default_positions, forward, init_model, masks
from jaxtok.train.config import TrainConfig
from jaxtok.train.loop import split_params
from jaxtok.train.losses import LossAux, cross_entropy, next_token_loss, weighted_mean
from jaxtok.train.step import TrainState, make_optimizer, train_step

V, D, T, B = 11, 32, 12, 8


def random_embedding_loss(graphdef, params, batch, key):
  """Fresh Gaussian embeddings per sequence per step (lexinvariant-style), logits tied to the
  same table, under a prefix mask: only the context can carry the tokens' identity."""
  b, t = batch["inputs"].shape
  table_BxVxD = jax.random.normal(key, (b, V, D))
  emb_BxTxD = jnp.take_along_axis(table_BxVxD, batch["inputs"][..., None], axis=1)
  out = forward(graphdef, params, batch["inputs"], default_positions(b, t),
                masks.prefix(t, batch["prefix_len"]), embeddings_BxTxD=emb_BxTxD,
                return_hidden=True)
  nll_BxT = cross_entropy(jnp.einsum("btd,bvd->btv", out.hidden, table_BxVxD), batch["targets"])
  return weighted_mean(nll_BxT, batch["weights"]), LossAux(nll_BxT, batch["weights"],
                                                           {"emb_norm": jnp.abs(emb_BxTxD).mean()})


def _copy_batch(seed):
  """Second half repeats the first: predictable only from in-context co-occurrence."""
  rng = np.random.default_rng(seed)
  half = rng.integers(0, V, (B, T // 2 + 1))
  seq = np.concatenate([half, half], axis=1)[:, :T + 1].astype(np.int32)
  w = np.zeros((B, T), np.float32)
  w[:, T // 2:] = 1.0
  return {"inputs": seq[:, :-1], "targets": seq[:, 1:], "weights": w,
          "prefix_len": np.full((B,), 3, np.int32)}


def test_a_loss_with_external_embeddings_and_a_prefix_mask_trains():
  cfg = ModelConfig(vocab_size=V, d_model=D, n_layers=2, n_heads=4, d_ff=64, max_len=T,
                    embedding="external", tie_embeddings=False)
  graphdef, params = split_params(init_model(cfg, 0))
  tx = make_optimizer(TrainConfig(steps=150, lr=3e-3, warmup_steps=10))
  state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                     key=jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(train_step, graphdef, tx, random_embedding_loss))
  losses = []
  for i in range(150):
    key_before = state.key
    state, metrics = step(state, _copy_batch(i))
    losses.append(float(metrics["loss"]))
  assert "emb_norm" in metrics and not np.array_equal(key_before, state.key)
  assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10]), losses[::15]


def test_default_loss_is_the_next_token_cross_entropy():
  cfg = ModelConfig(vocab_size=V, d_model=D, n_layers=1, n_heads=2, d_ff=32, max_len=T)
  graphdef, params = split_params(init_model(cfg, 0))
  batch = {k: jnp.asarray(v) for k, v in _copy_batch(0).items()}
  loss, aux = next_token_loss(graphdef, params, batch, None)
  logits = forward(graphdef, params, batch["inputs"], default_positions(B, T)).logits
  ref = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  np.testing.assert_allclose(aux.nll_BxT, ref, rtol=1e-6)
  np.testing.assert_allclose(loss, (ref * batch["weights"]).sum() / batch["weights"].sum(),
                             rtol=1e-6)


def test_a_schedule_that_is_all_warmup():
  from jaxtok.train.step import lr_schedule
  schedule = lr_schedule(TrainConfig(steps=10, lr=1e-2, warmup_steps=10))
  np.testing.assert_allclose([float(schedule(0)), float(schedule(5)), float(schedule(10))],
                             [0.0, 5e-3, 1e-2], rtol=1e-6)
