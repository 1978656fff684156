"""The ``jaxtok`` command: list | run | reproduce | bench | aot | generate | kernels check.

Entry points stay thin: each subcommand parses arguments and calls library code. This package
is the only library code that imports ``jaxtok_experiments`` (the experiment registry). Errors print
one line and a hint (exit 2 for bad input, 1 otherwise); ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

# Subcommands owned by other packages: name -> "module:function(argv)".
_DELEGATED = {
    "generate": "jaxtok.cli.generate:main",
    "kernels": "jaxtok.cli:kernels_main",
    "aot": "jaxtok.cli.aot:main",
}


def kernels_main(argv: list[str]) -> int:
  """``jaxtok kernels check ...``: the kernel compile gate (jaxtok_kernels.check)."""
  if not argv or argv[0] != "check":
    print("usage: jaxtok kernels check [--targets tpu-v5e,tpu-v6e,h100] [--side DIR] "
          "[--dtypes ...] [--json OUT]", file=sys.stderr)
    return 2
  from jaxtok_kernels import check
  return check.main(argv[1:])


def _delegate(target: str, argv: list[str]) -> int:
  module, fn = target.split(":")
  return getattr(importlib.import_module(module), fn)(argv) or 0


_DELEGATED_HELP = {
    "generate": "generate text with a pretrained model",
    "kernels": "kernels check: compile every Pallas kernel for TPU/GPU targets",
    "aot": "compile a train step or generation loop ahead of time for a TPU/GPU target",
}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxtok", description=__doc__)
  p.add_argument("--debug", action="store_true",
                 help="show the full traceback of an error (accepted anywhere on the line)")
  sub = p.add_subparsers(dest="cmd", required=True)
  sub.add_parser("list", help="list experiments and benchmarks")

  run = sub.add_parser("run", help="run one experiment into OUT/EXP/PRESET/")
  run.add_argument("exp")
  run.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "pod"])
  run.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V")
  run.add_argument("--out", default="runs", help="root directory; writes OUT/EXP/PRESET/")
  mode = run.add_mutually_exclusive_group()
  mode.add_argument("--resume", action="store_true",
                    help="continue the run in OUT/EXP/PRESET/ from its latest intact checkpoint "
                         "(its config.json is the base; --set may change train.steps and cadence)")
  mode.add_argument("--overwrite", action="store_true",
                    help="replace the run already in OUT/EXP/PRESET/ (its files are removed)")

  rep = sub.add_parser("reproduce", help="run every experiment and write OUT/report.md")
  rep.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "pod"])
  rep.add_argument("--out", default="runs")
  rep.add_argument("--only", nargs="*", help="subset of experiments")
  mode = rep.add_mutually_exclusive_group()
  mode.add_argument("--resume", action="store_true",
                    help="continue a stopped reproduction: finished runs are kept, others resume")
  mode.add_argument("--overwrite", action="store_true", help="rerun experiments already in OUT")

  bench = sub.add_parser("bench", help="run a benchmark (prints a table, writes JSON)")
  bench.add_argument("name")
  bench.add_argument("args", nargs=argparse.REMAINDER)

  # Listed for --help; main() hands their arguments to their own parsers.
  for name, text in _DELEGATED_HELP.items():
    sub.add_parser(name, help=text, add_help=False)
  return p


def _error(e: BaseException) -> int:
  """One line (our own config/run errors may list several fields), plus a hint."""
  import errno

  from jaxtok.ckpt import short_reason
  from jaxtok.config import ConfigError
  from jaxtok.rundir import RunDirError
  hint = ""
  if isinstance(e, (ConfigError, RunDirError, ValueError)) and not isinstance(e, OSError):
    text, code = str(e), 2
    if len(text) > 2000 or text.count("\n") > 20:  # a foreign ValueError with a dump in it
      text = short_reason(e, 300)
  elif isinstance(e, OSError):
    text, code = short_reason(e, 300), 1
    if e.errno == errno.ENOSPC:
      hint = "free disk space, then continue with --resume (saved checkpoints are intact)"
  else:
    text, code = short_reason(e, 300), 1
  print(f"jaxtok: error: {text}", file=sys.stderr)
  if hint or code == 1:
    print(f"  hint: {hint or 'run again with --debug for the full traceback'}", file=sys.stderr)
  return code


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] in _DELEGATED:
    return _delegate(_DELEGATED[argv[0]], argv[1:])
  debug = "--debug" in argv
  args = _parser().parse_args([a for a in argv if a != "--debug"])
  if not debug:  # orbax logs each failed async save with its traceback; we say it in one line
    import logging
    logging.getLogger("absl").setLevel(logging.CRITICAL)
  from jaxtok import runtime
  from jaxtok.train.loop import Preempted
  from jaxtok_experiments import BENCHES, EXPERIMENTS, runner

  try:
    if args.cmd == "list":
      print("experiments:", " ".join(sorted(EXPERIMENTS)))
      print("benchmarks: ", " ".join(sorted(BENCHES)))
    elif args.cmd == "run":
      runtime.initialize()
      results = runner.run_experiment(args.exp, args.preset, args.overrides, args.out,
                                      resume=args.resume, overwrite=args.overwrite)
      runtime.log(json.dumps(results, indent=2, default=float))
    elif args.cmd == "reproduce":
      runtime.initialize()
      path = runner.reproduce(args.preset, args.out, args.only, resume=args.resume,
                              overwrite=args.overwrite, debug=debug)
      runtime.log(f"report: {path}")
    elif args.cmd == "bench":
      if args.name not in BENCHES:
        raise ValueError(f"unknown benchmark {args.name!r}; registered: {sorted(BENCHES)}")
      return _delegate(BENCHES[args.name] + ":main", args.args)
  except Preempted as e:  # SIGTERM: the checkpoint is saved; 128 + SIGTERM, as schedulers expect
    print(f"jaxtok: {e}", file=sys.stderr)
    return 143
  except KeyboardInterrupt:
    print("jaxtok: interrupted; continue with --resume from the last checkpoint", file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001 -- one clear line; the traceback only with --debug
    if debug:
      raise
    return _error(e)
  return 0


if __name__ == "__main__":
  sys.exit(main())
