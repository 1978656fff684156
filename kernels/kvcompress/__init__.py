"""KV-compression kernels: plan application (merge + compaction) as a jnp reference, a Pallas
TPU kernel, a Pallas GPU kernel and a strict dispatcher (kernels/tree_attention's file roles)."""
from jaxtok_kernels.kvcompress.gpu import GpuConfig, merge_slots_gpu
from jaxtok_kernels.kvcompress.ops import merge_slots
from jaxtok_kernels.kvcompress.reference import mass_sums, merge_slots_reference
from jaxtok_kernels.kvcompress.tpu import TpuConfig, merge_slots_tpu

__all__ = ["GpuConfig", "TpuConfig", "mass_sums", "merge_slots", "merge_slots_gpu",
           "merge_slots_reference", "merge_slots_tpu"]
