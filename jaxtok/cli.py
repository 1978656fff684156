"""The ``jaxtok`` command: list | run | reproduce | bench | aot | generate | kernels check.

Entry points stay thin: each subcommand parses arguments and calls library code.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

# Subcommands owned by other packages: name -> "module:function(argv)".
_DELEGATED = {
    "generate": "jaxtok.models.generate_cli:main",
    "kernels": "jaxtok_kernels.check:main",
    "aot": "jaxtok.aot:main",
}


def _delegate(target: str, argv: list[str]) -> int:
  module, fn = target.split(":")
  return getattr(importlib.import_module(module), fn)(argv) or 0


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxtok", description=__doc__)
  sub = p.add_subparsers(dest="cmd", required=True)
  sub.add_parser("list", help="list experiments and benchmarks")

  run = sub.add_parser("run", help="run one experiment")
  run.add_argument("exp")
  run.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "pod"])
  run.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V")
  run.add_argument("--out", default="runs", help="root directory; writes OUT/EXP/PRESET/")
  run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")

  rep = sub.add_parser("reproduce", help="run every experiment and write OUT/report.md")
  rep.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "pod"])
  rep.add_argument("--out", default="runs")
  rep.add_argument("--only", nargs="*", help="subset of experiments")

  bench = sub.add_parser("bench", help="run a benchmark (prints a table, writes JSON)")
  bench.add_argument("name")
  bench.add_argument("args", nargs=argparse.REMAINDER)

  return p


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] in _DELEGATED:
    return _delegate(_DELEGATED[argv[0]], argv[1:])
  args = _parser().parse_args(argv)
  from jaxtok import runtime
  from jaxtok.config import ConfigError
  from jaxtok_experiments import BENCHES, EXPERIMENTS, runner

  try:
    if args.cmd == "list":
      print("experiments:", " ".join(sorted(EXPERIMENTS)))
      print("benchmarks: ", " ".join(sorted(BENCHES)))
    elif args.cmd == "run":
      runtime.initialize()
      results = runner.run_experiment(args.exp, args.preset, args.overrides, args.out,
                                      resume=args.resume)
      runtime.log(json.dumps(results, indent=2, default=float))
    elif args.cmd == "reproduce":
      runtime.initialize()
      runtime.log(f"report: {runner.reproduce(args.preset, args.out, args.only)}")
    elif args.cmd == "bench":
      if args.name not in BENCHES:
        raise ValueError(f"unknown benchmark {args.name!r}; registered: {sorted(BENCHES)}")
      return _delegate(BENCHES[args.name] + ":main", args.args)
  except (ConfigError, ValueError) as e:
    print(f"jaxtok: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
