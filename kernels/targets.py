"""Compile-only device descriptions for the kernel compile gate (no accelerator needed).

TPU: libtpu's compile-only topologies (`jax.experimental.topologies.get_topology_desc`).
NVIDIA: the jax-cuda12 plugin with an XLA `GpuTargetConfigProto` text describing the card
(values as XLA's own H100 SXM spec; jax-ml/jax issue #28376 shows the recipe); XLA then runs the
machine's CUDA `ptxas`/`nvlink` to build real cubins.
"""
from __future__ import annotations

TPU_TOPOLOGIES = {"tpu-v5e": "v5e:2x2", "tpu-v6e": "v6e:2x2", "tpu-v5p": "v5p:2x2x1",
                  "tpu-v4": "v4:2x2x1"}
GPU_TARGETS = ("h100",)

H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {
    major: 9
  }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
runtime_version: {
  major: 12
  minor: 8
  patch: 0
}
platform_name: "CUDA"
dnn_version_info {
  major: 9
  minor: 7
}
device_description_str: "NVIDIA H100 80GB HBM3"
"""


def family(target: str) -> str:
  if target in TPU_TOPOLOGIES:
    return "tpu"
  if target in GPU_TARGETS:
    return "gpu"
  raise ValueError(f"--targets: unknown target {target!r}; choose from "
                   f"{sorted(TPU_TOPOLOGIES) + list(GPU_TARGETS)}")


def abstract_placement(target: str):
  """(context manager, sharding) for ShapeDtypeStructs placed on a compile-only device."""
  import contextlib

  import jax
  import numpy as np
  from jax.experimental import topologies

  if family(target) == "tpu":
    topo = topologies.get_topology_desc(TPU_TOPOLOGIES[target], "tpu")
    return contextlib.nullcontext(), jax.sharding.SingleDeviceSharding(topo.devices[0])
  topo = topologies.get_topology_desc(platform="cuda", target_config=H100_TARGET_CONFIG,
                                      topology="1x1x1")
  # jax 0.12 needs an explicit-axes mesh of the topology's devices set as the current mesh
  # before it lowers for a GPU it cannot see (environment.md §2).
  mesh = jax.sharding.Mesh(np.array(topo.devices), ("d",),
                           axis_types=(jax.sharding.AxisType.Explicit,))
  return jax.set_mesh(mesh), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
