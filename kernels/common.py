"""Shared helpers for jaxtok's Pallas kernels: tiling rules, padding, tolerances, backends.

Every kernel in this package comes in threes (DESIGN.md decision 9): a readable jnp reference,
the Pallas kernel(s), and a dispatcher. The helpers here encode the hardware rules the kernels
share, so a block size that Mosaic would reject is caught with a readable message before
lowering:

* TPU (Mosaic): the last two dimensions of every block must be divisible by (8, 128) - the
  (sublane, lane) shape of a vreg - or span the whole array dimension. bf16 packs two rows per
  sublane, so (16, 128) is the natural bf16 tile; 8 rows is still legal.
* GPU (Triton): every array a kernel touches must have a power-of-two size; ``tl.dot`` needs
  each matmul dimension >= 16.

Nothing here calls JAX at import time.
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import jax.numpy as jnp
import numpy as np

# The one mask value of every attention op (reference and kernels): finite, because -inf would
# turn a fully masked row into NaN (inf - inf) before it is zeroed.
MASKED = -1e30

TPU_SUBLANES = 8
TPU_LANES = 128
TRITON_MIN_DOT = 16

# Base absolute tolerance of a kernel-vs-reference comparison for one reduction of length 1.
# f32 runs in interpret mode agree to ~1e-7; bf16 rounds inputs and p to 8 mantissa bits.
_BASE_TOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 2e-2,
             jnp.dtype(jnp.float16): 5e-3}


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


def broadcastable(shape, target) -> bool:
  """``shape`` broadcasts to ``target`` (numpy rules: trailing axes equal or 1)."""
  if len(shape) > len(target):
    return False
  return all(a in (1, t) for a, t in zip(shape[::-1], target[::-1]))


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


def tolerance(dtype, reduction_size: int = 1) -> float:
  """Absolute tolerance for comparing a kernel with its reference.

  Rounding error of a length-n reduction grows like sqrt(n) for random-sign terms, so the base
  tolerance ({f32: 1e-5, bf16: 2e-2}) is scaled by max(1, sqrt(n / 128)): reductions up to one
  lane tile keep the base value.
  """
  base = _BASE_TOL.get(jnp.dtype(dtype))
  if base is None:
    raise ValueError(f"tolerance: no base tolerance for dtype {dtype}")
  return base * max(1.0, math.sqrt(reduction_size / 128))


# Platform the dispatchers trace for when it is not the process's own (see compile_for).
_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jaxtok_kernels_target_platform", default=None)


@contextlib.contextmanager
def compile_for(platform: str):
  """Dispatchers pick `platform`'s kernels ("tpu" | "gpu" | "cpu") while tracing in this block.

  For ahead-of-time compiles for a device this process cannot see (`jaxtok aot --decode`):
  the default backend is then the CPU, and tracing would otherwise pick the CPU reference.
  Functions jitted outside the block keep what they traced first, so trace each target in
  its own process (as `jaxtok aot` does).
  """
  if platform not in ("tpu", "gpu", "cpu"):
    raise ValueError(f"compile_for: platform must be 'tpu', 'gpu' or 'cpu', got {platform!r}")
  token = _TARGET_PLATFORM.set(platform)
  try:
    yield
  finally:
    _TARGET_PLATFORM.reset(token)


def backend() -> str:
  """'tpu', 'gpu' or 'cpu' - the platform kernels are traced for: compile_for's, else that of
  JAX's default backend (a JAX call: not at import)."""
  forced = _TARGET_PLATFORM.get()
  if forced is not None:
    return forced
  platform = jax.default_backend()
  if platform in ("cuda", "rocm", "gpu"):
    return "gpu"
  return platform


def is_concrete(x) -> bool:
  """True when `x` holds a value at trace time (not a tracer), so it can be range-checked."""
  return not isinstance(x, jax.core.Tracer)


def concrete_int_array(x) -> np.ndarray | None:
  """`x` as a numpy int array when it is concrete, else None."""
  if not is_concrete(x):
    return None
  try:
    return np.asarray(x)
  except Exception:  # noqa: BLE001 - abstract values that escape the Tracer check
    return None
