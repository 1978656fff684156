"""The linear deciphering probe of lexinvariant LMs (Huang et al., arXiv 2305.16349, Sec. 4.2:
a probe on the frozen model recovers the plaintext of a substitution cipher, 99.6%).

``probe_features`` reads every layer's attention values and the final hidden state of a trained
LM on enciphered sequences; ``ridge_probe`` is a closed-form ridge regression of the plaintext
ids onto them; ``probe_accuracy`` fits on the first sequences and scores per position on the rest.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.config import require
from jaxtok.decode.model import Model
from jaxtok.lexinvariant.tables import embed, sequence_keys, sequence_tables
from jaxtok.nn.transformer import default_positions, forward


def probe_features(model: Model, tokens_BxT, key: jax.Array, *, lexinvariant: bool,
                   scale: float = 1.0) -> np.ndarray:
  """Frozen features f64[B, T, F]: every layer's attention values (a linear map of that layer's
  normalised residual stream) and the final hidden state. A lexinvariant LM embeds sequence b
  with the table of ``sequence_keys(key, b)``."""
  tokens_BxT = jnp.asarray(tokens_BxT)
  require(tokens_BxT.ndim == 2, "tokens_BxT", "token ids [B, T]", tokens_BxT.shape)
  b, t = tokens_BxT.shape
  cfg = model.cfg
  emb = None
  if lexinvariant:
    tables = sequence_tables(sequence_keys(key, jnp.arange(b)), cfg.vocab_size, cfg.d_model,
                             scale=scale)
    emb = embed(tables, tokens_BxT)
  out = forward(model.graphdef, model.params, tokens_BxT, default_positions(b, t),
                embeddings_BxTxD=emb, return_hidden=True)
  feats = [v.reshape(b, t, -1) for _, v in out.kv] + [out.hidden]
  return np.asarray(jnp.concatenate(feats, -1), np.float64)


def ridge_probe(x_train_NxF, y_train_N, x_test_MxF, n_classes: int, ridge: float) -> np.ndarray:
  """Closed-form ridge regression onto one-hot labels (standardised features, a bias); returns
  the predicted class of each test row."""
  require(len(x_train_NxF) == len(y_train_N), "y_train_N", f"{len(x_train_NxF)} labels",
          len(y_train_N))
  require(ridge >= 0, "ridge", ">= 0", ridge)
  mu, sd = x_train_NxF.mean(0), x_train_NxF.std(0) + 1e-6
  f = lambda x: np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
  a, y = f(x_train_NxF), np.eye(n_classes)[y_train_N]
  w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ y)
  return np.argmax(f(x_test_MxF) @ w, 1)


def probe_accuracy(model: Model, cipher_NxT, plain_NxT, n_train: int, key: jax.Array, *,
                   lexinvariant: bool, scale: float = 1.0, ridge: float = 1e-3) -> np.ndarray:
  """Per-position plaintext accuracy [T] of a probe fitted on the first ``n_train`` enciphered
  sequences and scored on the rest."""
  n, t = np.shape(plain_NxT)
  require(0 < n_train < n, "n_train", f"in (0, {n})", n_train)
  feats = probe_features(model, cipher_NxT, key, lexinvariant=lexinvariant, scale=scale)
  plain_NxT = np.asarray(plain_NxT)
  pred = ridge_probe(feats[:n_train].reshape(n_train * t, -1), plain_NxT[:n_train].reshape(-1),
                     feats[n_train:].reshape((n - n_train) * t, -1), model.cfg.vocab_size, ridge)
  return (pred.reshape(n - n_train, t) == plain_NxT[n_train:]).mean(0)
