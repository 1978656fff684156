"""Plan application (merge + compaction) - the dispatcher (reference | Pallas TPU | Pallas GPU).

``merge_slots(k, v, mass, dest)`` returns the per-destination sums of a compression plan
(reference.py has the exact semantics); dispatch is kernels/dispatch.py's. The mass sums are
O(S) segment sums and always run in XLA.
"""
from __future__ import annotations

from jaxtok_kernels import dispatch
from jaxtok_kernels.kvcompress import layout
from jaxtok_kernels.kvcompress.gpu import GpuConfig, merge_slots_gpu
from jaxtok_kernels.kvcompress.reference import merge_slots_reference
from jaxtok_kernels.kvcompress.tpu import TpuConfig, merge_slots_tpu

IMPLEMENTATIONS = dispatch.implementations(
    xla=merge_slots_reference,
    pallas=dispatch.Pallas(tpu=merge_slots_tpu, gpu=merge_slots_gpu, tpu_config=TpuConfig,
                           gpu_config=GpuConfig))


def merge_slots(k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS, *,
                implementation: dispatch.Implementation = None, config=None):
  """(k_sum f32[B, K, S, Dh], v_sum, mass_sum f32[B, K, S])."""
  dispatch.check(IMPLEMENTATIONS, implementation, config)
  layout.validate(k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS)
  return dispatch.run("merge_slots", IMPLEMENTATIONS, implementation, k_BxKxSxDh, v_BxKxSxDh,
                      mass_BxKxS, dest_BxKxS, config=config)
