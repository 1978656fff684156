"""Plan application (merge + compaction) - the dispatcher (reference | Pallas TPU | Pallas GPU).

``merge_slots(k, v, mass, dest)`` returns the per-destination sums of a compression plan
(reference.py has the exact semantics). ``implementation=None`` picks the platform's Pallas
kernel (Mosaic on TPU, Triton on GPU) and the reference elsewhere or where the kernel cannot
take the shape; ``"pallas"`` never falls back (NotImplementedError names the reason; on CPU it
runs the TPU kernel in interpret mode); ``"xla"`` is the reference. The mass sums are O(S)
segment sums and always run in XLA.
"""
from __future__ import annotations

from typing import Literal

from jaxtok_kernels import common
from jaxtok_kernels.kvcompress import layout
from jaxtok_kernels.kvcompress.gpu import GpuConfig, merge_slots_gpu
from jaxtok_kernels.kvcompress.reference import mass_sums, merge_slots_reference
from jaxtok_kernels.kvcompress.tpu import TpuConfig, merge_slots_tpu

Implementation = Literal["pallas", "xla"] | None


def merge_slots(k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS, *,
                implementation: Implementation = None, config=None):
  """(k_sum f32[B, K, S, Dh], v_sum, mass_sum f32[B, K, S])."""
  if implementation not in (None, "pallas", "xla"):
    raise ValueError(f"implementation must be 'pallas', 'xla' or None, got {implementation!r}")
  if config is not None and not isinstance(config, (TpuConfig, GpuConfig)):
    raise ValueError(f"config must be a TpuConfig or GpuConfig, got {type(config).__name__}")
  layout.validate(k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS)
  args = (k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS)
  if implementation == "xla":
    return merge_slots_reference(*args)
  platform = common.backend()
  if implementation is None and platform not in ("tpu", "gpu"):
    return merge_slots_reference(*args)
  try:
    if platform == "gpu":
      if isinstance(config, TpuConfig):
        raise ValueError("config: the GPU kernel takes a GpuConfig, got a TpuConfig")
      k, v = merge_slots_gpu(*args, config=config or GpuConfig())
    else:
      if isinstance(config, GpuConfig):
        raise ValueError(f"config: the {platform} path runs the TPU kernel, which takes a "
                         "TpuConfig, got a GpuConfig")
      k, v = merge_slots_tpu(*args, config=config or TpuConfig(), interpret=platform != "tpu")
  except NotImplementedError:
    if implementation == "pallas":
      raise
    return merge_slots_reference(*args)
  return k, v, mass_sums(mass_BxKxS, dest_BxKxS)
