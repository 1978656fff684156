"""Ahead-of-time compiles for TPU and GPU targets on a CPU machine: train step and decoding.

``jaxtok aot --exp lm --preset pod --topology v5e:4x4 [--side .side]`` builds the same mesh,
parameter shardings and ``train_step`` that the pod run uses, on libtpu's compile-only devices,
and prints per-device memory against the chip's HBM, so an out-of-memory shows before pod time.

``jaxtok aot --decode smollm2-135m --target tpu-v5e|tpu-v6e|h100 [--batch 8 --prompt-len 512
--new-tokens 128 --dtype bfloat16] [--side .side]`` compiles the whole generation loop of a
pretrained model (abstract weights: nothing is loaded but the config) for one device of the
target, with the dispatchers choosing that target's Pallas kernel, and reports its memory,
whether the kernel is called in every loop step, and whether a step copies any layer's KV cache
(the command fails otherwise). ``--speculate tr [--tree-nodes 80]`` compiles the Token Recycling
loop instead (arXiv 2408.08696; ``jaxtok.speculative.loop.generate_on_device``, one verify of the
static tree per step) under the same checks.

libtpu and the jax-cuda12 plugin live in a side folder (``pip install --target .side/tpu
"libtpu==0.0.50.*"``, as .ci/compile_kernels.sh does); the command runs
the compile in a subprocess with the target's plugin on
the path.
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

  from jaxtok.train.loop import (compile_train_step as jit_step, fresh_state, setup,
                                 transformer_factory)

  topo = topologies.get_topology_desc(topology, "tpu")
  s = setup(transformer_factory(cfg.model), cfg.train, cfg.mesh, devices=topo.devices)
  state_sds = jax.eval_shape(lambda: fresh_state(s, cfg.train.seed))
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


def compile_decode(model: str, target: str, *, batch: int, prompt_len: int, new_tokens: int,
                   dtype: str, speculate: str | None = None, tree_nodes: int | None = None) -> dict:
  """Compile the generation loop of pretrained `model` for one device of `target`: plain
  decoding (``decode.generate_on_device``) or, with ``speculate`` (a device drafter's name, e.g.
  "tr"), the tree speculative loop (``speculative.loop.generate_on_device``, ``tree_nodes``
  nodes per verify; default: the drafter's paper-sized tree). Memory and HLO facts."""
  from jaxtok.models import gguf_loader, registry

  drafter = None if speculate is None else device_drafter(speculate, tree_nodes)
  path = registry.resolve(model) if not os.path.exists(model) else model
  meta, _ = gguf_loader.read_header(path)
  cfg = gguf_loader.config_from_metadata(meta, dtype=dtype, path=path, max_len=None)
  result = compile_generation(cfg, target, batch=batch, prompt_len=prompt_len,
                              new_tokens=new_tokens, drafter=drafter)
  return {"model": model, **result}


# The paper's static tree (Token Recycling arXiv 2408.08696 §3.2: 80 drafted nodes); the CPU
# default of make_drafter (4 nodes) is tuned for a 2-core CPU, not for an accelerator.
PAPER_TREE_NODES = {"tr": 80}


def device_drafter(name: str, tree_nodes: int | None = None):
  """The drafter ``name`` for an on-device loop; ValueError naming ``--speculate`` /
  ``--tree-nodes`` for an unknown name, a host drafter or a bad node count."""
  from jaxtok.config import require
  from jaxtok.speculative import DeviceDrafter, make_drafter

  if tree_nodes is not None:
    require(tree_nodes >= 2, "--tree-nodes", ">= 2 (the root and at least one draft)",
            tree_nodes)
  drafter = make_drafter(name, tree_nodes or PAPER_TREE_NODES.get(name))
  if not isinstance(drafter, DeviceDrafter):
    raise ValueError(f"--speculate: {name!r} drafts on the host between steps, so there is no "
                     f"single on-device loop to compile; expected one of "
                     f"{'|'.join(sorted(PAPER_TREE_NODES))}")
  return drafter


def compile_generation(cfg, target: str, *, batch: int, prompt_len: int, new_tokens: int,
                       drafter=None) -> dict:
  """Compile the generation loop of model config `cfg` with abstract weights for one device of
  `target` ("cpu": this process's CPU, the dispatchers choosing the reference), and read the
  program: memory, tree-attention kernel calls, copies of a layer's KV cache inside the loop.

  ``drafter``: None for ``decode.generate_on_device``; a device drafter (static template tree)
  for ``speculative.loop.generate_on_device`` with greedy verification.
  """
  import contextlib

  import jax
  from flax import nnx

  from jaxtok import decode
  from jaxtok.nn.transformer import init_model
  from jaxtok_kernels import dispatch, targets

  n_nodes = 1 if drafter is None else drafter.n_nodes
  if drafter is None:
    capacity = prompt_len + new_tokens
  else:
    from jaxtok.speculative import min_capacity
    capacity = min_capacity(prompt_len, new_tokens, n_nodes)
  if capacity > cfg.max_len:
    raise ValueError(f"--prompt-len {prompt_len} + --new-tokens {new_tokens}"
                     + (f" + a {n_nodes}-node tree" if drafter is not None else "")
                     + f" needs {capacity} cache slots, more than the model context "
                     f"{cfg.max_len}")
  abstract = decode.Model.from_module(nnx.eval_shape(lambda: init_model(cfg)))
  if target == "cpu":
    ctx, sharding, family = contextlib.nullcontext(), None, "cpu"
  else:
    (ctx, sharding), family = targets.abstract_placement(target), targets.family(target)

  def place(x, dt=None):
    return jax.ShapeDtypeStruct(x.shape, dt or x.dtype, sharding=sharding)
  # Weights in the compute dtype, as load(dtype=...) stores them.
  model = jax.tree.map(lambda x: place(x, cfg.dtype if x.dtype == "float32" else None),
                       abstract)
  prompt = jax.ShapeDtypeStruct((batch, prompt_len), "int32", sharding=sharding)
  lens = jax.ShapeDtypeStruct((batch,), "int32", sharding=sharding)
  key = place(jax.eval_shape(lambda: jax.random.key(0)))
  statics = dict(capacity=capacity, max_new_tokens=new_tokens, sampling=decode.Sampling(),
                 eos_id=None)
  with ctx, dispatch.compile_for(family):
    if drafter is None:
      traced = decode.generate_on_device.trace(model, prompt, lens, key, **statics)
    else:
      from jaxtok.speculative import loop
      state = jax.tree.map(place, jax.eval_shape(lambda: drafter.init(cfg.vocab_size)))
      traced = loop.generate_on_device.trace(model, drafter, state, prompt, lens, key,
                                             **statics)
    compiled = traced.lower().compile()
  cache_shape = (batch, cfg.kv_heads, capacity, cfg.dh)
  return {"target": target, "cfg": cfg, "cache_shape": cache_shape,
          "speculate": None if drafter is None else type(drafter).__name__,
          "tree_nodes": n_nodes, **program_facts(compiled, cfg.dtype, cache_shape)}


_KERNEL = r"tree_attention_(?:tpu|gpu)"  # the Pallas entry points' names


def program_facts(compiled, dtype: str, cache_shape: tuple[int, ...]) -> dict:
  """What a compiled generation loop must show: its memory, the tree-attention Pallas kernel's
  calls, and the copies of a `dtype[cache_shape]` layer cache inside any while-loop body (one
  would cost a full pass over the cache per layer per step)."""
  from jaxtok import hlo

  text = compiled.as_text()
  mem = compiled.memory_analysis()
  cache_dtype = {"float32": "f32", "bfloat16": "bf16"}[str(dtype)]
  body = hlo.while_body_lines(text)
  return {"argument_bytes": mem.argument_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
          "kernel_calls": len(hlo.custom_calls_named(text.splitlines(), _KERNEL)),
          "loop_kernel_calls": len(hlo.custom_calls_named(body, _KERNEL)),
          "loop_cache_copies": len(hlo.copies_of(body, cache_dtype, cache_shape))}


def passes(r: dict) -> bool:
  """The gate of ``jaxtok aot --decode``: the tree-attention kernel is called in the loop step
  (decode / verify) and no loop step copies a layer's KV cache."""
  return bool(r["loop_kernel_calls"]) and not r["loop_cache_copies"]


def decode_report(r: dict) -> str:
  gib = 2**30
  cfg = r["cfg"]
  step = "decode step" if r.get("speculate") is None else "verify step"
  loop = ("" if r.get("speculate") is None
          else f"; speculative loop: {r['speculate']}, {r['tree_nodes']}-node tree")
  return "\n".join([
      f"{r.get('model', 'model')} on {r['target']}: {cfg.n_layers} layers, d={cfg.d_model}, "
      f"{cfg.n_heads}/{cfg.kv_heads} heads, {cfg.dtype}; cache per layer {r['cache_shape']}{loop}",
      f"memory: arguments {r['argument_bytes'] / gib:.3f} GiB, temporaries "
      f"{r['temp_bytes'] / gib:.3f} GiB",
      f"tree-attention kernel in the program: {'yes' if r['kernel_calls'] else 'NO'} "
      f"({r['loop_kernel_calls']} calls per {step}); "
      f"KV-cache copies per {step}: {r['loop_cache_copies']}"])


# ---- the command line -----------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxtok aot", description=__doc__.split("\n\n")[0])
  p.add_argument("--exp", default="lm")
  p.add_argument("--preset", default="pod", choices=["smoke", "cpu", "pod"])
  p.add_argument("--topology", default="v5e:4x4", help="libtpu topology, e.g. v5e:4x4, v6e:8x8")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V")
  p.add_argument("--side", default=os.environ.get("JAXTOK_COMPILE_SIDE"),
                 help="folder holding tpu/ and cuda/ (installed with pip --target)")
  p.add_argument("--decode", default=None, metavar="MODEL",
                 help="compile generation of this pretrained model instead of a train step")
  p.add_argument("--target", default="tpu-v5e", help="--decode: tpu-v5e, tpu-v6e or h100")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt-len", type=int, default=512)
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
  p.add_argument("--speculate", default=None, metavar="DRAFTER",
                 help="--decode: compile the tree speculative loop of this device drafter (tr)")
  p.add_argument("--tree-nodes", type=int, default=None,
                 help="--speculate: nodes per draft tree, root included (default: the paper's 80)")
  return p


def main(argv: list[str] | None = None) -> int:
  args = parser().parse_args(argv)
  if args.side:
    from jaxtok_kernels.check import side_env
    from jaxtok_kernels.targets import GPU_TARGETS

    rest = list(argv if argv is not None else sys.argv[1:])
    # The side install this compile needs: cuda/ for a GPU --target, else tpu/.
    gpu = args.decode is not None and args.target in GPU_TARGETS
    env = side_env(args.side, "gpu" if gpu else "tpu")
    env.pop("JAXTOK_COMPILE_SIDE", None)
    i = rest.index("--side") if "--side" in rest else None
    if i is not None:
      del rest[i:i + 2]
    return subprocess.call([sys.executable, "-m", "jaxtok.cli.aot", *rest], env=env)
  if args.decode is not None:
    return _decode_main(args)

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


def _decode_main(args) -> int:
  from jaxtok_kernels import targets

  for name in ("batch", "prompt_len", "new_tokens"):
    if getattr(args, name) <= 0:
      print(f"jaxtok aot: error: --{name.replace('_', '-')} must be positive, got "
            f"{getattr(args, name)}", file=sys.stderr)
      return 2
  try:
    if args.tree_nodes is not None and args.speculate is None:
      raise ValueError("--tree-nodes: only meaningful with --speculate")
    if args.speculate is not None:
      device_drafter(args.speculate, args.tree_nodes)  # bad names fail before the model loads
    targets.family(args.target)
    result = compile_decode(args.decode, args.target, batch=args.batch,
                            prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                            dtype=args.dtype, speculate=args.speculate,
                            tree_nodes=args.tree_nodes)
  except (ValueError, ModuleNotFoundError, FileNotFoundError) as e:
    print(f"jaxtok aot: error: {e}", file=sys.stderr)
    return 2
  print(decode_report(result))
  return 0 if passes(result) else 1


if __name__ == "__main__":
  sys.exit(main())
