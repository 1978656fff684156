"""The dispatch policy of every kernel op (DESIGN.md decision 9), written once.

Each op lists its implementations in a table, as tokamax does (``IMPLEMENTATIONS`` in
``tokamax/_src/ops/gated_linear_unit/api.py``), and ``run`` tries them in order:

* ``"xla"``: the jnp reference, the oracle; it runs everywhere.
* ``"pallas"``: the kernel of the platform the trace targets - Mosaic on TPU, Triton on GPU, and
  on a CPU the TPU kernel in interpret mode (slow: for tests). A kernel raises
  ``NotImplementedError`` with the reason for a shape it cannot tile.
* ``None`` (automatic): ``("pallas", "xla")`` on TPU/GPU - the reference where the kernel
  cannot take the shape - and ``("xla",)`` elsewhere.

An explicit ``"pallas"`` never falls back: when no implementation in the order can run, ``run``
raises ``NoImplementation`` with every reason, so a benchmark can never time the reference and
call it the kernel. The platform is JAX's default backend unless ``compile_for`` names another
(ahead-of-time compiles for a device this process cannot see). Nothing here calls JAX at import.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Callable, Literal, Mapping

import jax

Implementation = Literal["pallas", "xla"] | None

# The platform the dispatchers trace for when it is not the process's own (see compile_for).
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


class NoImplementation(ExceptionGroup, NotImplementedError):
  """No implementation in the order could run. An ExceptionGroup of their NotImplementedErrors
  (tokamax's 'all implementations failed'), whose message repeats each reason; and itself a
  NotImplementedError, the contract of an explicit ``"pallas"`` that cannot run."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pallas:
  """An op's ``"pallas"`` implementation: its two kernels and their tiling configs.

  tpu: the Mosaic entry point, ``tpu(*args, config=tpu_config, interpret=bool, **kwargs)``;
  gpu: the Triton entry point, ``gpu(*args, config=gpu_config, **kwargs)``.
  """
  tpu: Callable[..., Any]
  gpu: Callable[..., Any]
  tpu_config: type
  gpu_config: type

  def __call__(self, *args, config=None, **kwargs):
    platform = backend()
    if platform == "gpu":
      if isinstance(config, self.tpu_config):
        raise ValueError("config: the GPU kernel takes a GpuConfig, got a TpuConfig")
      return self.gpu(*args, config=config or self.gpu_config(), **kwargs)
    if isinstance(config, self.gpu_config):
      raise ValueError(f"config: the {platform} path runs the TPU kernel, which takes a "
                       "TpuConfig, got a GpuConfig")
    # TPU compiles the Mosaic kernel; elsewhere the same kernel runs in the interpreter.
    return self.tpu(*args, config=config or self.tpu_config(), interpret=platform != "tpu",
                    **kwargs)


def implementations(*, xla: Callable[..., Any], pallas: Pallas) -> dict[str, Callable[..., Any]]:
  """An op's table: implementation name -> ``fn(*args, config=..., **kwargs)``. The reference
  has no tiling, so its entry drops ``config``."""
  def reference(*args, config=None, **kwargs):
    del config
    return xla(*args, **kwargs)
  return {"pallas": pallas, "xla": reference}


def check(table: Mapping[str, Callable[..., Any]], implementation: Implementation,
          config) -> None:
  """ValueError naming the argument for an unknown implementation or a config of neither
  kernel's type; run it before the op validates its operands."""
  if implementation is not None and implementation not in table:
    raise ValueError(f"implementation must be {', '.join(map(repr, table))} or None, got "
                     f"{implementation!r}")
  pallas = table["pallas"]
  if config is not None and not isinstance(config, (pallas.tpu_config, pallas.gpu_config)):
    raise ValueError(f"config must be a TpuConfig or GpuConfig, got {type(config).__name__}")


def run(op: str, table: Mapping[str, Callable[..., Any]], implementation: Implementation,
        *args, config=None, **kwargs):
  """Runs the first implementation in the order that can (module docstring); ``op`` names the
  op in the error."""
  if implementation is not None:
    order = (implementation,)
  elif backend() in ("tpu", "gpu"):
    order = ("pallas", "xla")
  else:
    order = ("xla",)
  errors = []
  for name in order:
    try:
      return table[name](*args, config=config, **kwargs)
    except NotImplementedError as e:
      errors.append(e)
  reasons = "; ".join(f"{name}: {e}" for name, e in zip(order, errors))
  raise NoImplementation(f"{op}: no implementation could run ({reasons})", errors)
