"""The tiling rules jaxtok's Pallas kernels share, checked before lowering so that a block the
compiler would reject fails with a readable message:

* TPU (Mosaic): the last two dimensions of every block must be divisible by (8, 128) - the
  (sublane, lane) shape of a vreg - or span the whole array dimension. bf16 packs two rows per
  sublane, so (16, 128) is the natural bf16 tile; 8 rows is still legal.
* GPU (Triton): every array a kernel touches must have a power-of-two size; ``tl.dot`` needs
  each matmul dimension >= 16.

Nothing here calls JAX at import time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

TPU_SUBLANES = 8
TPU_LANES = 128
TRITON_MIN_DOT = 16


class BlockSizeError(ValueError):
  """A block shape that the target's tiling rules reject."""


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def round_up(x: int, multiple: int) -> int:
  return cdiv(x, multiple) * multiple


def next_pow2(x: int) -> int:
  return 1 if x <= 1 else 1 << (x - 1).bit_length()


def is_pow2(x: int) -> bool:
  return x >= 1 and (x & (x - 1)) == 0


def validate_tpu_block(name: str, block_shape: tuple[int, ...],
                       array_shape: tuple[int, ...]) -> None:
  """Raise BlockSizeError unless `block_shape` obeys the TPU (8, 128) tiling rule.

  Only the last two dimensions are constrained; `None` (squeezed) entries count as 1. A block
  dimension equal to the full array dimension is always legal (Mosaic pads it internally).
  """
  if len(block_shape) != len(array_shape):
    raise BlockSizeError(f"{name}: block rank {len(block_shape)} != array rank "
                         f"{len(array_shape)} (block {block_shape}, array {array_shape})")
  dims = [1 if b is None else b for b in block_shape]
  for d, (b, a) in enumerate(zip(dims, array_shape)):
    if b < 1 or b > a:
      raise BlockSizeError(f"{name}: block dim {d} = {b} must be in [1, {a}] "
                           f"(block {block_shape}, array {array_shape})")
  rules = ((len(dims) - 2, TPU_SUBLANES), (len(dims) - 1, TPU_LANES))
  for d, multiple in rules:
    if d < 0:
      continue
    if dims[d] != array_shape[d] and dims[d] % multiple:
      raise BlockSizeError(
          f"{name}: block dim {d} = {dims[d]} must be a multiple of {multiple} or equal the "
          f"full dimension {array_shape[d]} (TPU (8,128) tiling; block {block_shape}, "
          f"array {array_shape})")


def validate_pow2(name: str, value: int, minimum: int = 1) -> None:
  """Raise BlockSizeError unless `value` is a power of two >= `minimum` (Triton's rule)."""
  if not is_pow2(value) or value < minimum:
    raise BlockSizeError(f"{name} = {value} must be a power of two >= {minimum} (Triton "
                         "lowering needs power-of-two array sizes)")


def require_triton_head_dim(kernel: str, head_dim: int) -> None:
  """NotImplementedError unless Triton can tile the head dim (a power of two >= 16): a shape the
  kernel cannot take, not a bad argument, so the automatic dispatcher runs the reference."""
  if not is_pow2(head_dim) or head_dim < TRITON_MIN_DOT:
    raise NotImplementedError(f"{kernel}: head dim Dh={head_dim} must be a power of two >= "
                              f"{TRITON_MIN_DOT} (Triton)")


def pad_axis(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  """Pad `x` along `axis` at the end up to `size` (no-op when already that size)."""
  extra = size - x.shape[axis]
  if extra < 0:
    raise ValueError(f"pad_axis: axis {axis} has size {x.shape[axis]} > target {size}")
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)
