"""Attention statistics per cache slot (column sums of the softmax over queries, the last
query's row) from the forward's softmax residual: jnp reference, Pallas TPU and GPU kernels,
a strict dispatcher (kernels/tree_attention's file roles), and ``fused`` - the XLA path that
computes attention and its statistics in one pass."""
from jaxtok_kernels.attn_stats.gpu import GpuConfig, attn_stats_gpu
from jaxtok_kernels.attn_stats.ops import attn_stats
from jaxtok_kernels.attn_stats.reference import attn_stats_reference
from jaxtok_kernels.attn_stats.tpu import TpuConfig, attn_stats_tpu

__all__ = ["GpuConfig", "TpuConfig", "attn_stats", "attn_stats_gpu", "attn_stats_reference",
           "attn_stats_tpu"]
