"""``jaxtok aot``: the command line of jaxtok.aot (it resolves experiment configs, so it lives with
the experiments; the library never imports them).

  jaxtok aot --exp lm --preset pod --topology v5e:4x4 [--side .side]
  jaxtok aot --decode smollm2-135m --target tpu-v5e|tpu-v6e|h100 [--side .side]
  jaxtok aot --decode smollm2-135m --target tpu-v5e|h100 --speculate tr [--tree-nodes 80]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from jaxtok.aot import (compile_decode, compile_train_step, decode_report, device_drafter, passes,
                        report)


def _side_folder(side: str, argv: list[str]) -> str:
  """The side install a subprocess needs: cuda/ for a GPU --target, else tpu/."""
  from jaxtok_kernels.targets import GPU_TARGETS

  target = argv[argv.index("--target") + 1] if "--target" in argv[:-1] else ""
  return os.path.join(side, "cuda" if target in GPU_TARGETS else "tpu")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxtok aot", description=__doc__.split("\n")[0])
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
    rest = list(argv if argv is not None else sys.argv[1:])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1",
           "PYTHONPATH": os.pathsep.join(x for x in (_side_folder(args.side, rest),
                                                     os.environ.get("PYTHONPATH")) if x)}
    env.pop("XLA_FLAGS", None)
    env.pop("JAXTOK_COMPILE_SIDE", None)
    i = rest.index("--side") if "--side" in rest else None
    if i is not None:
      del rest[i:i + 2]
    return subprocess.call([sys.executable, "-m", "jaxtok_experiments.aot_cli", *rest], env=env)
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
