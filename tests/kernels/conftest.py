"""Shared fixtures for the kernel tests: random tree-attention inputs."""
import pytest
import jax
import jax.numpy as jnp
import numpy as np


def make_inputs(b, t, h, k, s, dh, dtype=jnp.float32, seed=0, lens=None, mask_p=0.5):
  keys = jax.random.split(jax.random.key(seed), 6)
  q = jax.random.normal(keys[0], (b, t, h, dh), dtype)
  # kv-head-major cache [B, K, S, Dh], as jaxtok.cache stores it.
  k_cache = jax.random.normal(keys[1], (b, k, s, dh), dtype)
  v_cache = jax.random.normal(keys[2], (b, k, s, dh), dtype)
  k_new = jax.random.normal(keys[3], (b, t, k, dh), dtype)
  v_new = jax.random.normal(keys[4], (b, t, k, dh), dtype)
  mask = jax.random.bernoulli(keys[5], mask_p, (b, t, t))
  if lens is None:
    lens = np.random.RandomState(seed).randint(0, s + 1, size=b)
  return q, k_cache, v_cache, jnp.asarray(lens, jnp.int32), k_new, v_new, mask


@pytest.fixture(name="make_inputs")
def _make_inputs_fixture():
  return make_inputs
