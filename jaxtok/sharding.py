"""Sharding declared once (DESIGN.md decision 6): a (data, fsdp, tensor) mesh, logical axis
names on every parameter, and one rule table mapping names to mesh axes.

``param_shardings`` raises when a rule maps two dimensions of one parameter to the same mesh
axis (a silent conflict resolution is how layouts go wrong at scale) or when a sharded dimension
does not divide by its mesh axis. Parameters are created directly in their shards by jitting the
initialiser with ``out_shardings`` (no full copy on one device first).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxtok.config import require

MESH_AXES = ("data", "fsdp", "tensor")

# Logical parameter/activation axis -> mesh axis (or a tuple of mesh axes, or None).
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "vocab": "tensor",
    "head_dim": None,
    "norm": None,
    "pos": None,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
  data: int = -1  # -1: all devices not used by the other axes; fixed sizes may use fewer
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    for name in MESH_AXES:
      v = getattr(self, name)
      require(v == -1 or v >= 1, f"mesh.{name}", "a positive size or -1", v)
    require(sum(getattr(self, n) == -1 for n in MESH_AXES) <= 1, "mesh",
            "at most one axis set to -1", dataclasses.asdict(self))

  def shape(self, n_devices: int) -> tuple[int, int, int]:
    sizes = [getattr(self, n) for n in MESH_AXES]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if n_devices % fixed:
        raise ValueError(f"mesh: {n_devices} devices do not divide by the fixed axes "
                         f"{dataclasses.asdict(self)}")
      sizes = [n_devices // fixed if s == -1 else s for s in sizes]
    if math.prod(sizes) > n_devices:
      raise ValueError(f"mesh: axes {dict(zip(MESH_AXES, sizes))} need {math.prod(sizes)} "
                       f"devices, {n_devices} are available")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  shape = cfg.shape(len(devices))
  # An explicit smaller mesh uses the first devices (e.g. mesh.data=1 on a multi-device host).
  devices = list(devices)[:math.prod(shape)]
  # Auto axes: XLA propagates activation shardings from the parameter and batch layouts.
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                           axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(axes: tuple[str | None, ...], rules=None) -> P:
  rules = RULES if rules is None else rules
  used: dict[str, str] = {}
  spec = []
  for name in axes:
    if name is not None and name not in rules:
      raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
    target = None if name is None else rules[name]
    for mesh_axis in (target,) if isinstance(target, str) else (target or ()):
      if mesh_axis in used:
        raise ValueError(f"sharding rule conflict: logical axes {used[mesh_axis]!r} and "
                         f"{name!r} both map to mesh axis {mesh_axis!r} in {axes}")
      used[mesh_axis] = name
    spec.append(target)
  return P(*spec)


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def _check_divisible(path, shape, spec: P, mesh) -> None:
  for dim, target in zip(shape, spec):
    axes = (target,) if isinstance(target, str) else (target or ())
    size = math.prod(mesh.shape[a] for a in axes)
    if dim % size:
      raise ValueError(f"parameter {jax.tree_util.keystr(path)}: dimension {dim} is sharded over "
                       f"mesh axes {axes} of total size {size}, which does not divide it")


def param_shardings(abstract_params: nnx.State, mesh, rules=None):
  """Tree of NamedShardings (inside the same Variables) for every parameter."""
  def one(path, var):
    axes = var.get_metadata().get("logical_axes")
    if axes is None:
      raise ValueError(f"parameter {jax.tree_util.keystr(path)} has no logical_axes metadata")
    spec = logical_to_spec(axes, rules)
    _check_divisible(path, var.shape, spec, mesh)
    return var.replace(NamedSharding(mesh, spec))
  return jax.tree_util.tree_map_with_path(one, abstract_params, is_leaf=_is_var)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(("batch", None)))


def describe_sharding(params: nnx.State) -> str:
  """One line per parameter: path, shape, dtype, partition spec."""
  rows = []
  def one(path, var):
    value = var[...] if _is_var(var) else var
    sharding = getattr(value, "sharding", None)
    spec = sharding.spec if isinstance(sharding, NamedSharding) else sharding
    rows.append(f"{jax.tree_util.keystr(path):48s} {str(tuple(value.shape)):18s} "
                f"{str(value.dtype):9s} {spec}")
  jax.tree_util.tree_map_with_path(one, params, is_leaf=_is_var)
  return "\n".join(rows)
