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
import importlib.util
import json
import sys
from pathlib import Path

from jaxtok_experiments.torch_ref import run_json

_TORCH_HELPER = r'''
import json, sys, time
import torch
from pathlib import Path
from transformers import AutoModelForCausalLM
job = json.loads(sys.argv[1])
path = Path(job["model"])
where = ({"pretrained_model_name_or_path": path.parent, "gguf_file": path.name}
         if path.suffix == ".gguf" else {"pretrained_model_name_or_path": path})
model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32).eval()
rows = []
for w, prompts in job["prompts"].items():
  for mode in ("greedy", "pld"):
    extra = {"prompt_lookup_num_tokens": job["pld_tokens"]} if mode == "pld" else {}
    tokens = wall = 0
    for rep in range(2):  # the first round warms up
      tokens = wall = 0
      for ids in prompts:
        x = torch.tensor([ids])
        t0 = time.perf_counter()
        with torch.no_grad():
          out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                               max_new_tokens=job["new_tokens"], pad_token_id=0,
                               eos_token_id=job["eos_id"], **extra)
        wall += time.perf_counter() - t0
        tokens += out.shape[1] - x.shape[1]
    rows.append({"mode": mode, "workload": w, "tokens_per_s": tokens / wall})
print("JSON:" + json.dumps({"torch": torch.__version__, "rows": rows}))
'''


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxtok bench speculative", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--smoke", action="store_true", help="the experiment's smoke preset")
  p.add_argument("--model", default=None, help="override the preset's model")
  p.add_argument("--new-tokens", type=int, default=None)
  p.add_argument("--tr-sweep", default=None,
                 help="comma-separated extra Token Recycling sizes N, on the code workload")
  p.add_argument("--torch-python", default=None)
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--out", default="bench_speculative.json")
  return p


def _hf_rows(cfg, python: str) -> dict:
  from jaxtok.models import registry
  from jaxtok_experiments import speculative as exp

  _, _, tok, eos = exp.load_model(cfg.model)
  path = Path(cfg.model) if Path(cfg.model).exists() else registry.resolve(cfg.model)
  job = {"model": str(path.resolve()), "prompts": exp.build_requests(cfg, tok),
         "new_tokens": cfg.new_tokens, "eos_id": eos, "pld_tokens": cfg.pld_nodes - 1}
  return run_json(python, _TORCH_HELPER, job)


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
  print(f"speculative bench: {cfg.model}, {cfg.new_tokens} new tokens", file=sys.stderr)
  rows, meta = exp.measure(cfg, log=lambda s: print(s, file=sys.stderr))
  keys = ("drafter", "workload", "tree_nodes", "mat", "acceptance_rate", "tokens_per_s",
          "speedup_vs_greedy", "lossless")
  out_rows = [{k: r[k] for k in keys} | {"greedy_tokens_per_s": r["greedy_tokens_per_s"],
                                        "cpu_time_speedup": r["cpu_time_speedup"]}
              for r in rows]
  lines = exp.table_lines(rows)
  ref = None
  python = args.torch_python or (sys.executable if importlib.util.find_spec("torch") else None)
  if python and not args.no_torch and cfg.model != "tiny":
    try:
      ref = _hf_rows(cfg, python)
    except (RuntimeError, ValueError, OSError) as e:
      print(f"  transformers reference skipped: {e}", file=sys.stderr)
  if ref:
    hf = {(r["mode"], r["workload"]): r["tokens_per_s"] for r in ref["rows"]}
    lines += ["", "| workload | HF greedy tok/s | HF prompt lookup tok/s | HF PLD speed-up |",
              "|---|---|---|---|"]
    for w in sorted({w for _, w in hf}):
      g, p = hf.get(("greedy", w)), hf.get(("pld", w))
      lines.append(f"| {w} | {g:.1f} | {p:.1f} | {p / g:.2f}x |")
  print("\n".join(lines))
  Path(args.out).write_text(json.dumps({"model": cfg.model, "new_tokens": cfg.new_tokens,
                                        "rows": out_rows, "transformers": ref, **meta,
                                        "table": lines}, indent=2, default=float))
  print(f"wrote {args.out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
