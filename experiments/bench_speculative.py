"""``jaxtok bench speculative``: tree speculative decoding against plain greedy, side by side.

Runs the ``speculative`` experiment's measurement (Token Recycling, prompt lookup and
SuffixDecoding over the code / agentic / chat workloads, batch 1, greedy, compiled before
timing) and writes one JSON row per drafter x workload:
``{"drafter", "workload", "tree_nodes", "mat", "acceptance_rate", "tokens_per_s",
"speedup_vs_greedy", "lossless"}`` (acceptance rate = accepted draft tokens / drafted tokens).
With ``--torch-python PATH`` (an interpreter with torch + transformers), or when torch is
importable here, Hugging Face transformers runs plain greedy and prompt-lookup generate
(``prompt_lookup_num_tokens``) on the same weights and prompts in the same run, so the
speed-ups are side by side (DESIGN.md decision 11).

  jaxtok bench speculative --smoke          # a tiny random model, seconds
  jaxtok bench speculative                  # SmolLM2-135M, the experiment's cpu preset
  jaxtok bench speculative --tr-sweep 4,16  # plus Token Recycling at N = 4 and 16 (code)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxtok bench speculative", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--smoke", action="store_true", help="the experiment's smoke preset")
  p.add_argument("--model", default=None, help="override the preset's model")
  p.add_argument("--new-tokens", type=int, default=None)
  p.add_argument("--tr-sweep", default=None,
                 help="comma-separated extra Token Recycling sizes N, on the code workload")
  p.add_argument("--baseline-buckets", default=None,
                 help="comma-separated verify buckets: also run prompt lookup and suffix with "
                      "them (a before/after in one run)")
  p.add_argument("--torch-python", default=None,
                 help="an interpreter with torch + transformers (default: $JAXTOK_TORCH_PYTHON, "
                      "or this one if torch is importable)")
  p.add_argument("--no-torch", action="store_true", help="skip the transformers reference")
  p.add_argument("--out", default="bench_speculative.json")
  return p


def main(argv: list[str] | None = None) -> int:
  from jaxtok_experiments import speculative as exp

  args = _parser().parse_args(argv)
  cfg = exp.smoke() if args.smoke else exp.cpu()
  if args.model:
    cfg = dataclasses.replace(cfg, model=args.model)
  if args.new_tokens:
    cfg = dataclasses.replace(cfg, new_tokens=args.new_tokens)
  if args.tr_sweep:
    cfg = dataclasses.replace(cfg, tr_ablate_nodes=tuple(int(n) for n in
                                                         args.tr_sweep.split(",")))
  if args.baseline_buckets:
    cfg = dataclasses.replace(cfg, baseline_buckets=tuple(int(n) for n in
                                                          args.baseline_buckets.split(",")))
  if args.no_torch or args.torch_python:
    cfg = dataclasses.replace(cfg, torch_python="" if args.no_torch else args.torch_python)
  print(f"speculative bench: {cfg.model}, {cfg.new_tokens} new tokens", file=sys.stderr)
  rows, meta = exp.measure(cfg, log=lambda s: print(s, file=sys.stderr))
  keys = ("drafter", "workload", "tree_nodes", "mat", "acceptance_rate", "tokens_per_s",
          "speedup_vs_greedy", "lossless")
  extra = ("greedy_tokens_per_s", "cpu_time_speedup", "draft_ms_per_step", "verify_ms_per_step",
           "hf_greedy_tokens_per_s", "hf_pld_tokens_per_s", "hf_pld_speedup",
           "speedup_vs_hf_greedy", "speedup_vs_hf_pld")
  out_rows = [{k: r[k] for k in keys} | {k: r[k] for k in extra if k in r} for r in rows]
  lines = exp.table_lines(rows, meta["transformers"])
  print("\n".join(lines))
  Path(args.out).write_text(json.dumps({"model": cfg.model, "new_tokens": cfg.new_tokens,
                                        "rows": out_rows, **meta,
                                        "table": lines}, indent=2, default=float))
  print(f"wrote {args.out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
