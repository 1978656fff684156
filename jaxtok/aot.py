"""Ahead-of-time compile of an experiment's sharded train step for a TPU topology, on a CPU.

``jaxtok aot --exp lm --preset pod --topology v5e:4x4 [--side .side]`` builds the same mesh,
parameter shardings and ``train_step`` that the pod run uses, on libtpu's compile-only devices,
and prints per-device memory against the chip's HBM, so an out-of-memory shows before pod time.
libtpu lives in a side folder (``pip install --target .side/tpu "libtpu==0.0.50.*"``, as
.ci/compile_kernels.sh does); with ``--side`` the compile runs in a subprocess with it on the path.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

# HBM per chip (GiB), public spec sheets.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


def compile_train_step(cfg, topology: str) -> dict:
  import jax
  from jax.experimental import topologies

  from jaxtok.train.loop import compile_train_step as jit_step, setup

  topo = topologies.get_topology_desc(topology, "tpu")
  s = setup(cfg.model, cfg.train, cfg.mesh, devices=topo.devices)
  state_sds = jax.eval_shape(
      lambda: _abstract_state(s, cfg.model, cfg.train.seed))
  state_sds = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                           state_sds, s.state_shardings)
  b, t = cfg.data.batch_size, cfg.data.seq_len
  batch = {k: jax.ShapeDtypeStruct((b, t), dt, sharding=s.batch_sharding)
           for k, dt in (("inputs", "int32"), ("targets", "int32"), ("weights", "float32"))}
  compiled = jit_step(s).trace(state_sds, batch).lower().compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {"mesh": dict(s.mesh.shape), "devices": len(topo.devices),
          "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
          "temp_bytes": mem.temp_size_in_bytes, "code_bytes": mem.generated_code_size_in_bytes,
          "flops_per_device": (cost or {}).get("flops", float("nan"))}


def _abstract_state(s, model_cfg, seed):
  from flax import nnx

  from jaxtok.nn.transformer import init_model
  from jaxtok.train.step import TrainState
  import jax.numpy as jnp

  params = nnx.split(init_model(model_cfg, seed))[1]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=s.tx.init(params))


def report(result: dict, topology: str) -> str:
  gib = 2**30
  # Donated state aliases its output, so live memory is arguments + temporaries.
  live = result["argument_bytes"] + result["temp_bytes"]
  hbm = HBM_GIB.get(topology.split(":")[0])
  lines = [f"topology {topology}: {result['devices']} devices, mesh {result['mesh']}",
           f"per device: arguments {result['argument_bytes'] / gib:.2f} GiB, outputs "
           f"{result['output_bytes'] / gib:.2f} GiB, temporaries {result['temp_bytes'] / gib:.2f}"
           f" GiB, code {result['code_bytes'] / 2**20:.1f} MiB",
           f"per device live estimate {live / gib:.2f} GiB" +
           (f" of {hbm} GiB HBM -> {'FITS' if live < hbm * gib else 'OUT OF MEMORY'}"
            if hbm else ""),
           f"per device FLOPs per step {result['flops_per_device']:.3e}"]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="jaxtok aot", description=__doc__.split("\n")[0])
  p.add_argument("--exp", default="lm")
  p.add_argument("--preset", default="pod", choices=["smoke", "cpu", "pod"])
  p.add_argument("--topology", default="v5e:4x4", help="libtpu topology, e.g. v5e:4x4, v6e:8x8")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V")
  p.add_argument("--side", default=os.environ.get("JAXTOK_COMPILE_SIDE"),
                 help="folder holding tpu/ (libtpu installed with pip --target)")
  args = p.parse_args(argv)
  if args.side:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1",
           "PYTHONPATH": os.pathsep.join(x for x in (os.path.join(args.side, "tpu"),
                                                     os.environ.get("PYTHONPATH")) if x)}
    env.pop("XLA_FLAGS", None)
    env.pop("JAXTOK_COMPILE_SIDE", None)
    rest = [a for a in (argv if argv is not None else sys.argv[1:])]
    i = rest.index("--side") if "--side" in rest else None
    if i is not None:
      del rest[i:i + 2]
    return subprocess.call([sys.executable, "-m", "jaxtok.aot", *rest], env=env)

  from jaxtok_experiments import runner
  try:
    cfg = runner.make_config(args.exp, args.preset, args.overrides)
    import libtpu  # noqa: F401  (only to give a clear message when it is missing)
  except ImportError:
    print("jaxtok aot: libtpu is not importable; install it into a side folder with\n"
          '  pip install --target .side/tpu "libtpu==0.0.50.*"\nand pass --side .side',
          file=sys.stderr)
    return 2
  except ValueError as e:
    print(f"jaxtok aot: error: {e}", file=sys.stderr)
    return 2
  try:
    result = compile_train_step(cfg, args.topology)
  except Exception as e:  # the compiler's own OOM report is the answer the user asked for
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    print(f"topology {args.topology}: OUT OF MEMORY at compile time:\n  {str(e).splitlines()[0]}")
    return 1
  print(report(result, args.topology))
  return 0


if __name__ == "__main__":
  sys.exit(main())
