"""Selected attention (each (row, kv head) attends only to its chosen cache slots, SentenceKV
arXiv 2504.00970): jnp reference, Pallas TPU and GPU kernels visiting only the cache blocks
that hold a chosen slot, and a strict dispatcher (kernels/tree_attention's file roles)."""
from jaxtok_kernels.selected_attention.gpu import GpuConfig, selected_attention_gpu
from jaxtok_kernels.selected_attention.layout import block_table, from_indices, from_spans
from jaxtok_kernels.selected_attention.ops import selected_attention
from jaxtok_kernels.selected_attention.reference import selected_attention_reference
from jaxtok_kernels.selected_attention.tpu import TpuConfig, selected_attention_tpu

__all__ = ["GpuConfig", "TpuConfig", "block_table", "from_indices", "from_spans",
           "selected_attention", "selected_attention_gpu", "selected_attention_reference",
           "selected_attention_tpu"]
