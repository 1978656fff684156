"""Plan-application kernels against the reference in interpret mode (ragged, non-multiple-of-
block sizes; integer-valued inputs so fp32 sums are exact and must agree bit for bit)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok_kernels import kvcompress as kk


def _inputs(b, k, s, dh, seed=0, monotone=False):
  key = jax.random.key(seed)
  x = jax.random.randint(key, (b, k, s, dh), -8, 8).astype(jnp.float32)
  y = jax.random.randint(jax.random.fold_in(key, 1), (b, k, s, dh), -8, 8).astype(jnp.float32)
  mass = jax.random.randint(jax.random.fold_in(key, 2), (b, k, s), 1, 4).astype(jnp.float32)
  if monotone:  # a compaction: kept slots to their rank, the rest to the trash class
    kept = jax.random.bernoulli(jax.random.fold_in(key, 3), 0.3, (b, k, s))
    dest = jnp.where(kept, jnp.cumsum(kept, -1) - 1, s)
  else:  # merges anywhere, some trash (s) and out-of-range (-1) destinations
    dest = jax.random.randint(jax.random.fold_in(key, 3), (b, k, s), -1, s + 1)
  return x, y, mass, dest


@pytest.mark.parametrize("shape,monotone", [((1, 2, 200, 64), False), ((2, 1, 300, 32), True)])
def test_tpu_kernel_matches_reference_in_interpret_mode(shape, monotone):
  args = _inputs(*shape, monotone=monotone)
  ref = kk.merge_slots_reference(*args)
  got = kk.merge_slots_tpu(*args, config=kk.TpuConfig(block=128), interpret=True)
  np.testing.assert_array_equal(got[0], ref[0])
  np.testing.assert_array_equal(got[1], ref[1])
  np.testing.assert_array_equal(kk.mass_sums(args[2], args[3]), ref[2])


def test_gpu_kernel_matches_reference_in_interpret_mode():
  args = _inputs(1, 2, 90, 32, seed=1)
  ref = kk.merge_slots_reference(*args)
  got = kk.merge_slots_gpu(*args, config=kk.GpuConfig(block=32), interpret=True)
  np.testing.assert_array_equal(got[0], ref[0])
  np.testing.assert_array_equal(got[1], ref[1])


def test_dispatcher_is_strict():
  args = _inputs(1, 1, 20, 16)
  out = kk.merge_slots(*args, implementation="xla")
  np.testing.assert_array_equal(out[2], kk.mass_sums(args[2], args[3]))
  with pytest.raises(ValueError, match="implementation"):
    kk.merge_slots(*args, implementation="cuda")
  with pytest.raises(ValueError, match="dest_BxKxS"):
    kk.merge_slots(*args[:3], args[3][..., :5])
  with pytest.raises(Exception, match="multiple of 128"):
    kk.TpuConfig(block=100)
