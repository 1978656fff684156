"""Plan application (merge + compaction) - the jnp reference (kv_and_tree.md "Which loops become
Pallas kernels", K3).

For every (row, kv head) and destination slot m < S:
  k_sum[m] = sum_j [dest_j = m] mass_j k_j,  v_sum[m] likewise,  mass_sum[m] = sum_j [dest_j = m] mass_j
dest_j = S (or any value outside [0, S)) is the trash class (EMS's zero class, arXiv
2412.08521): it contributes nothing. Compaction is the special case where every kept slot's
destination is its rank and nothing merges. The means (k_sum / mass_sum) are taken by the caller,
which keeps unmerged slots bit-exact (jaxtok.kvcompress.apply).

The one-hot contraction is the kernels' algorithm (a matmul on the MXU / tensor cores); its
sums are exact for integer-valued inputs in fp32, which the tests use to compare bit for bit.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def merge_slots_reference(k_BxKxSxDh: Float[Array, "B K S Dh"], v_BxKxSxDh: Float[Array, "B K S Dh"],
                          mass_BxKxS: Float[Array, "B K S"], dest_BxKxS: Int[Array, "B K S"]):
  """(k_sum f32[B, K, S, Dh], v_sum f32[B, K, S, Dh], mass_sum f32[B, K, S])."""
  s = k_BxKxSxDh.shape[2]
  w_BxKxSxM = jax.nn.one_hot(dest_BxKxS, s, dtype=jnp.float32) * mass_BxKxS[..., None]
  hi = jax.lax.Precision.HIGHEST
  k_sum = jnp.einsum("bksm,bksd->bkmd", w_BxKxSxM, k_BxKxSxDh.astype(jnp.float32), precision=hi)
  v_sum = jnp.einsum("bksm,bksd->bkmd", w_BxKxSxM, v_BxKxSxDh.astype(jnp.float32), precision=hi)
  return k_sum, v_sum, w_BxKxSxM.sum(axis=2)


def mass_sums(mass_BxKxS, dest_BxKxS):
  """sum_j [dest_j = m] mass_j (O(S) segment sums; the kernels leave this small part to XLA)."""
  s = dest_BxKxS.shape[-1]
  d = jnp.where((dest_BxKxS >= 0) & (dest_BxKxS < s), dest_BxKxS, s)
  fn = lambda x, i: jax.ops.segment_sum(x, i, num_segments=s + 1)[:s]
  return jax.vmap(jax.vmap(fn))(mass_BxKxS.astype(jnp.float32), d)
