"""jaxtok's Pallas kernels (import name `jaxtok_kernels`).

Each kernel comes in threes (DESIGN.md decision 9): a readable jnp reference (the oracle), the
Pallas kernels (Mosaic TPU, Triton GPU), and a dispatcher choosing "pallas" | "xla" (automatic:
Pallas on TPU/GPU, the reference elsewhere). Importing this package makes no JAX calls.
"""
from jaxtok_kernels.tree_attention import tree_attention, tree_attention_reference

__all__ = ["tree_attention", "tree_attention_reference"]
