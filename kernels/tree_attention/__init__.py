"""Tree attention over a KV cache: jnp reference, Pallas TPU and GPU kernels, dispatcher."""
from jaxtok_kernels.tree_attention.gpu import GpuConfig, tree_attention_gpu
from jaxtok_kernels.tree_attention.ops import tree_attention
from jaxtok_kernels.tree_attention.reference import tree_attention_reference
from jaxtok_kernels.tree_attention.tpu import TpuConfig, tree_attention_tpu

__all__ = ["tree_attention", "tree_attention_reference", "tree_attention_tpu",
           "tree_attention_gpu", "TpuConfig", "GpuConfig"]
