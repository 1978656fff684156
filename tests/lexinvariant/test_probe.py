"""The linear deciphering probe (arXiv 2305.16349 Sec. 4.2): features of a frozen LM and the
closed-form ridge probe on them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import lexinvariant as lex
from jaxtok.config import ConfigError
from jaxtok.decode import Model
from jaxtok.nn import init_model

V, D, T = 6, 16, 8


def _model(lexinvariant: bool) -> Model:
  cfg = lex.model_config(V, T, lexinvariant=lexinvariant, d_model=D, n_layers=2, n_heads=2,
                         d_ff=32)
  return Model.from_module(init_model(cfg, 0))


def test_ridge_probe_separates_linear_classes_and_not_random_labels():
  rng = np.random.default_rng(0)
  centers_KxF = rng.normal(size=(4, 10))
  y = rng.integers(0, 4, 400)
  x = centers_KxF[y] + 0.05 * rng.normal(size=(400, 10))
  pred = lex.ridge_probe(x[:300], y[:300], x[300:], 4, 1e-3)
  assert np.mean(pred == y[300:]) == 1.0
  shuffled = rng.permutation(y)  # labels unrelated to the features: near chance
  pred = lex.ridge_probe(x[:300], shuffled[:300], x[300:], 4, 1e-3)
  assert np.mean(pred == shuffled[300:]) < 0.5
  with pytest.raises(ConfigError, match="y_train_N"):
    lex.ridge_probe(x[:300], y[:299], x[300:], 4, 1e-3)


@pytest.mark.parametrize("lexinvariant", [False, True])
def test_probe_features_and_accuracy(lexinvariant):
  model = _model(lexinvariant)
  tokens = np.random.default_rng(1).integers(0, V, (40, T)).astype(np.int32)
  feats = lex.probe_features(model, tokens, jax.random.PRNGKey(5), lexinvariant=lexinvariant)
  kv_width = model.cfg.kv_heads * model.cfg.dh
  assert feats.shape == (40, T, 2 * kv_width + D) and feats.dtype == np.float64
  # Layer 0's values are a linear map of the current token's (normalised) embedding, so a
  # probe reads the token back exactly -- for the lexinvariant LM too, whose table is fixed
  # per sequence: decoding the input is what the cipher probe asks.
  acc_T = lex.probe_accuracy(model, tokens, tokens, 30, jax.random.PRNGKey(5),
                             lexinvariant=lexinvariant, ridge=1e-4)
  assert acc_T.shape == (T,)
  if not lexinvariant:
    assert acc_T.min() == 1.0
  # Labels unrelated to the inputs are not decodable: the check can fail.
  other = np.random.default_rng(2).integers(0, V, (40, T))
  wrong_T = lex.probe_accuracy(model, tokens, other, 30, jax.random.PRNGKey(5),
                               lexinvariant=lexinvariant, ridge=1e-4)
  assert wrong_T.mean() < 0.5
  with pytest.raises(ConfigError, match="n_train"):
    lex.probe_accuracy(model, tokens, tokens, 40, jax.random.PRNGKey(5),
                       lexinvariant=lexinvariant)
  with pytest.raises(ConfigError, match="tokens_BxT"):
    lex.probe_features(model, jnp.zeros((T,), jnp.int32), jax.random.PRNGKey(5),
                       lexinvariant=lexinvariant)
