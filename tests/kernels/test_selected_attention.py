"""Selected attention: equals dense attention over only the selected slots; kernels vs the
reference at ragged selections (empty, one slot, spans across blocks, everything), T=5 (not a
multiple of 8), GQA 4/2, S=300 (not a multiple of the key block); the dispatcher's rules."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok_kernels import selected_attention as sa
from jaxtok_kernels.tree_attention.reference import tree_attention_reference

B, T, H, K, S, DH = 3, 5, 4, 2, 300, 16
reference = jax.jit(sa.selected_attention_reference, static_argnames="return_residuals")
oracle = jax.jit(tree_attention_reference, static_argnames="return_residuals")


def _inputs(seed=0):
  ks = jax.random.split(jax.random.key(seed), 6)
  q = jax.random.normal(ks[0], (B, T, H, DH))
  kc, vc = (jax.random.normal(x, (B, K, S, DH)) for x in ks[1:3])
  kn, vn = (jax.random.normal(x, (B, T, K, DH)) for x in ks[3:5])
  mask = jax.random.bernoulli(ks[5], 0.6, (B, T, T)) | jnp.eye(T, dtype=bool)[None]
  # Per (row, kv head) spans: sinks + a sentence + a recent run; one head selects nothing,
  # one a single slot, one everything.
  starts = jnp.array([[[0, 40, 280], [0, 0, 0]], [[5, 5, 5], [0, 130, 255]],
                      [[0, 0, 0], [127, 129, 299]]])
  ends = jnp.array([[[4, 171, 300], [0, 0, 0]], [[6, 5, 5], [3, 140, 262]],
                    [[300, 0, 0], [128, 257, 300]]])
  selected = sa.from_spans(starts, ends, S)
  return q, kc, vc, selected, kn, vn, mask


def test_equals_dense_attention_over_the_selected_slots_only():
  q, kc, vc, sel, kn, vn, mask = _inputs(1)
  # Unselected slots hold NaN: none of it may reach the output.
  kc_nan = jnp.where(sel[..., None], kc, jnp.nan)
  out, lse = reference(q, kc_nan, vc, sel, kn, vn, mask, return_residuals=True)
  # Oracle: gather each head's selected slots to the front, then tree attention with that
  # many visible cache slots.
  order = jnp.argsort(~sel, axis=-1, stable=True)
  gather = lambda x: jnp.take_along_axis(x, order[..., None], axis=2)  # noqa: E731
  want, want_lse = oracle(q, gather(kc), gather(vc), sel.sum(-1), kn, vn, mask,
                          return_residuals=True)
  np.testing.assert_allclose(out, want, atol=1e-5)
  np.testing.assert_allclose(lse, want_lse, atol=1e-5)


def test_index_lists_and_spans_agree():
  idx = jnp.array([[[3, 7, 7, 299, -1], [0, 1, 2, 9, 9]]])
  n = jnp.array([[4, 3]])
  got = sa.from_indices(idx, n, S)
  want = np.zeros((1, 2, S), bool)
  want[0, 0, [3, 7, 299]] = True
  want[0, 1, [0, 1, 2]] = True
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(
      sa.from_spans(jnp.array([[[3, 7, 299], [0, 0, 0]]]), jnp.array([[[4, 8, 300], [3, 0, 0]]]),
                    S), want)
  table, count = sa.block_table(jnp.asarray(want), 128)
  np.testing.assert_array_equal(count, [[2, 1]])
  np.testing.assert_array_equal(table, [[[0, 2, 2], [0, 0, 0]]])


@pytest.mark.parametrize("kernel,config", [
    (sa.selected_attention_tpu, sa.TpuConfig(block_s=128)),
    (sa.selected_attention_gpu, sa.GpuConfig(block_s=32)),
], ids=["tpu", "gpu"])
def test_kernel_matches_reference(kernel, config):
  q, kc, vc, sel, kn, vn, mask = _inputs(2)
  want, want_lse = reference(q, kc, vc, sel, kn, vn, mask, return_residuals=True)
  # Unselected slots may hold anything, NaN included: the kernels never let it through.
  nan = lambda x: jnp.where(sel[..., None], x, jnp.nan)  # noqa: E731
  out, lse = kernel(q, nan(kc), nan(vc), sel, kn, vn, mask, config=config, interpret=True,
                    return_residuals=True)
  np.testing.assert_allclose(out, want, atol=1e-5)
  np.testing.assert_allclose(lse, want_lse, atol=1e-5)


def test_dispatcher_rules():
  args = _inputs(3)
  want = reference(*args)
  np.testing.assert_allclose(sa.selected_attention(*args, implementation="xla"), want, atol=1e-6)
  np.testing.assert_allclose(sa.selected_attention(*args), want, atol=1e-6)  # CPU: reference
  with pytest.raises(ValueError, match="selected_BxKxS"):
    sa.selected_attention(*args[:3], args[3][:, :, :10], *args[4:])
  with pytest.raises(ValueError, match="implementation"):
    sa.selected_attention(*args, implementation="triton")
  with pytest.raises(ValueError, match="config"):
    sa.selected_attention(*args, implementation="pallas", config=sa.GpuConfig())
