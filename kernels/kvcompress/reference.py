"""Plan application (merge + compaction) - the jnp reference (kv_and_tree.md "Which loops become
Pallas kernels", K3).

For every (row, kv head) and destination slot m < S:
  k_sum[m] = sum_j [dest_j = m] mass_j k_j,  v_sum[m] likewise,  mass_sum[m] = sum_j [dest_j = m] mass_j
dest_j = S (or any value outside [0, S)) is the trash class (EMS's zero class, arXiv
2412.08521): it contributes nothing. Compaction is the special case where every kept slot's
destination is its rank and nothing merges. The means (k_sum / mass_sum) are taken by the caller,
which keeps unmerged slots bit-exact (jaxtok.kvcompress.apply).

The reference is the equation as written, segment sums: O(S Dh), so it is also the fast path
where there is no kernel (the dispatcher's "xla"). The kernels contract a one-hot destination
matrix instead (a matmul on the MXU / tensor cores); both are exact for integer-valued inputs in
fp32, which the tests use to compare bit for bit.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def mass_sums(x_BxKxS, dest_BxKxS: Int[Array, "B K S"]):
  """f32 sum_j [dest_j = m] x_j per destination m < S, for x [B, K, S] or [B, K, S, Dh] (the
  mass, a per-slot statistic, or mass-weighted keys)."""
  s = dest_BxKxS.shape[-1]
  d = jnp.where((dest_BxKxS >= 0) & (dest_BxKxS < s), dest_BxKxS, s)
  fn = lambda x, i: jax.ops.segment_sum(x, i, num_segments=s + 1)[:s]  # noqa: E731
  return jax.vmap(jax.vmap(fn))(x_BxKxS.astype(jnp.float32), d)


def merge_slots_reference(k_BxKxSxDh: Float[Array, "B K S Dh"], v_BxKxSxDh: Float[Array, "B K S Dh"],
                          mass_BxKxS: Float[Array, "B K S"], dest_BxKxS: Int[Array, "B K S"]):
  """(k_sum f32[B, K, S, Dh], v_sum f32[B, K, S, Dh], mass_sum f32[B, K, S])."""
  w_BxKxSx1 = mass_BxKxS.astype(jnp.float32)[..., None]
  return (mass_sums(w_BxKxSx1 * k_BxKxSxDh.astype(jnp.float32), dest_BxKxS),
          mass_sums(w_BxKxSx1 * v_BxKxSxDh.astype(jnp.float32), dest_BxKxS),
          mass_sums(mass_BxKxS, dest_BxKxS))
