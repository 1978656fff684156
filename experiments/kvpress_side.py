"""kvpress side by side for the ``kvcompress`` experiment and ``jaxtok bench kvcompress``
(issue 10 item 6).

With a Python that has torch + transformers + kvpress (``torch_python``; torch is never a
jaxtok dependency), the same tokens run through kvpress 0.5.5's presses on the same GGUF
weights (dequantised to fp32 by transformers) for the policies both have (StreamingLLM, SnapKV,
PyramidKV, TOVA, KNorm): passkey accuracy per protocol and budget, ΔPPL (against kvpress's own
full cache), and the prefill time with and without the press beside ours (plain prefill vs
observation prefill + compression). SnapKV and PyramidKV use kvpress's options (average
pooling, kernel 5); their kept slots then match kvpress's exactly
(tests/kvcompress/test_kvpress_parity.py). PyramidKV's per-layer schedules differ (kvpress: no
window term, falls back silently; ours: ``kvcompress.pyramid``); kvpress's PyramidKV leaves
layers of different lengths, which break the CPU sdpa mask of the next forward (recorded as an
error per case, not a number). The torch side is ``refs/kvpress_helper.py``.
"""
from __future__ import annotations

import time

import numpy as np

from jaxtok.data import passkey
from jaxtok_experiments.runner import Claim
from jaxtok_experiments.timing import best

# kvpress presses by jaxtok policy name; SnapKV/PyramidKV with kvpress's defaults except the
# window (the caller's), which jaxtok's SnapKV(kernel=5, pool_kind="avg") matches slot for slot.
KVPRESS_POLICIES = ("streaming_llm", "snapkv", "pyramidkv", "tova", "knorm")


def kvpress_side(python: str, job: dict) -> dict:
  """Runs kvpress on the same GGUF weights and tokens (``refs/kvpress_helper.py``'s job:
  ``window``, optional ``passkey`` {ctx, question, answer_tokens, cases [(policy, protocol,
  n_kept)]}, ``ppl`` {first, rest, cases [(policy, n_kept)]}, ``timing`` {tokens, repeats,
  new_tokens, cases [(policy, n_kept)]}; policy "full" = no press). Returns its JSON."""
  from jaxtok.models import registry
  from jaxtok_experiments.torch_ref import run_json
  return run_json(python, "kvpress_helper.py", {"gguf": str(registry.resolve("smollm2-135m")),
                                                **job})


def shared(cfg) -> list[str]:
  return [p for p in cfg.policies if p in KVPRESS_POLICIES]


def run_passkey(cfg, tok, n, ctx, q, keys, log):
  """kvpress's accuracy on the same passkey tokens: {name@ratio: {protocol: accuracy}}."""
  cases = [["full", "agnostic", n], ["full", "aware", n + len(q)]]
  cases += [[name, proto, max(1, int(r * n))] for name in shared(cfg) for r in cfg.keep_ratios
            for proto in ("agnostic", "aware")]
  t0 = time.time()
  out = kvpress_side(cfg.torch_python, {"window": cfg.window, "passkey": {
      "ctx": np.asarray(ctx).tolist(), "question": np.asarray(q).tolist(),
      "answer_tokens": cfg.answer_tokens, "cases": cases}})
  table = {}
  for row, case in zip(out["passkey"], cases):
    ratio = "full" if case[0] == "full" else cfg.keep_ratios[
        [max(1, int(r * n)) for r in cfg.keep_ratios].index(case[2])]
    if "error" in row:
      table.setdefault(f"{case[0]}@{ratio}", {})[case[1]] = {"accuracy": None,
                                                             "error": row["error"]}
      continue
    acc = float(np.mean(passkey.answers(tok, row["tokens"], keys)))
    table.setdefault(f"{case[0]}@{ratio}", {})[case[1]] = {
        "accuracy": acc, "kept_fraction": row["kept_fraction"]}
  log({"phase": "kvpress_passkey", "s": time.time() - t0, "table": table})
  return table


def run_timing(cfg, model, ctx, log):
  """Warm prefill times on the passkey contexts (query-agnostic, the 10%-nearest budget):
  ours - plain prefill vs observation prefill + compression; kvpress - plain prefill vs prefill
  with the press (it compresses inside the forward's hooks)."""
  import jax
  import jax.numpy as jnp
  from jaxtok import decode
  from jaxtok import kvcompress as kc
  from jaxtok.cache import init_cache
  from jaxtok_experiments import kvcompress as exp
  b, n = ctx.shape
  r10 = min(cfg.keep_ratios, key=lambda r: abs(r - 0.1))
  tokens = max(1, int(r10 * n))
  x = jnp.asarray(ctx)
  lens = jnp.full((b,), n, jnp.int32)
  plain = jax.jit(lambda m, x: decode.prefill(m, init_cache(m.cfg, b, n), x, lens))
  ours = {"full": best(lambda: plain(model, x), 2)[0]}
  obs_s, (_, cache, obs) = best(lambda: exp.observe(model, x, window=cfg.window, capacity=n), 2)
  for name in shared(cfg):
    policy = exp.policy_for(name, (), model.cfg.vocab_size)
    comp_s, _ = best(lambda: kc.compress_tokens(cache, policy, tokens, obs)[0]
                     .cache.layers[-1].k, 2)
    ours[name] = obs_s + comp_s
  kp = kvpress_side(cfg.torch_python, {"window": cfg.window, "timing": {
      "tokens": np.asarray(ctx).tolist(), "repeats": 1,
      "cases": [["full", n]] + [[name, tokens] for name in shared(cfg)]}})
  kv = {row["policy"]: row["prefill_s"] for row in kp["timing"]}
  out = {"context": n, "batch": b, "ratio": r10, "ours_s": ours, "kvpress_s": kv}
  log({"phase": "timing", **out})
  return out


def run_ppl(cfg, first, rest, log):
  """kvpress's ΔPPL (against its own full cache) on the same windows and budgets."""
  import math
  h = cfg.ppl_half
  cases = [["full", h]] + [[name, max(1, int(r * h))] for name in shared(cfg)
                           for r in cfg.ppl_ratios]
  out = kvpress_side(cfg.torch_python, {"window": cfg.window, "ppl": {
      "first": np.asarray(first).tolist(), "rest": np.asarray(rest).tolist(), "cases": cases}})
  kfull = out["ppl"][0]["nll"]
  kt = {}
  for row, case in zip(out["ppl"][1:], cases[1:]):
    r = cfg.ppl_ratios[[max(1, int(x * h)) for x in cfg.ppl_ratios].index(case[1])]
    kt[f"{case[0]}@{r}"] = ({"dppl": None, "error": row["error"]} if row["nll"] is None else
                            {"dppl": math.exp(row["nll"] - kfull) - 1.0, "nll": row["nll"]})
  res = {"full_ppl": math.exp(kfull), "table": kt}
  log({"phase": "kvpress_ppl", **res})
  return res


def _fmt(x, pct=True):
  return "-" if x is None else (f"{x:.2f}" if pct else f"{x:+.3f}")


def side_by_side(cfg, pk, ppl) -> str:
  """Markdown: passkey accuracy (both protocols) and ΔPPL per shared policy and budget, ours
  beside kvpress's, then the prefill/compression times."""
  kp, kq = pk.get("kvpress", {}), ppl.get("kvpress", {}).get("table", {})
  lines = [f"passkey (context {pk['context']}, {cfg.trials} trials) and ΔPPL on held-out code "
           f"(half {cfg.ppl_half}, {cfg.ppl_windows} windows): ours | kvpress", "",
           "| policy | kept | agnostic ours | agnostic kvpress | aware ours | aware kvpress |"
           " ΔPPL kept | ΔPPL ours | ΔPPL kvpress |", "|" + "---|" * 9]
  full = pk["table"].get(f"full@{cfg.keep_ratios[0]}", {})
  kf = kp.get("full@full", {})
  lines.append(f"| full | 1 | {_fmt(full.get('agnostic', {}).get('accuracy'))} | "
               f"{_fmt(kf.get('agnostic', {}).get('accuracy'))} | "
               f"{_fmt(full.get('aware', {}).get('accuracy'))} | "
               f"{_fmt(kf.get('aware', {}).get('accuracy'))} | - | "
               f"ppl {ppl['full_ppl']:.3f} | ppl {ppl.get('kvpress', {}).get('full_ppl', 0):.3f} |")
  for name in shared(cfg):
    for i in range(max(len(cfg.keep_ratios), len(cfg.ppl_ratios))):
      r = cfg.keep_ratios[i] if i < len(cfg.keep_ratios) else None
      o, k = pk["table"].get(f"{name}@{r}", {}), kp.get(f"{name}@{r}", {})
      rp = cfg.ppl_ratios[i] if i < len(cfg.ppl_ratios) else None
      a = lambda d, pr: d.get(pr, {}).get("accuracy")
      lines.append(f"| {name} | {r if r is not None else '-'} | {_fmt(a(o, 'agnostic'))} | "
                   f"{_fmt(a(k, 'agnostic'))} | {_fmt(a(o, 'aware'))} | {_fmt(a(k, 'aware'))} |"
                   f" {rp if rp is not None else '-'} | "
                   f"{_fmt(ppl['table'].get(f'{name}@{rp}', {}).get('dppl'), False)} | "
                   f"{_fmt(kq.get(f'{name}@{rp}', {}).get('dppl'), False)} |")
  tm = pk.get("timing")
  if tm:
    lines += ["", f"prefill time, batch {tm['batch']} x {tm['context']} tokens, budget "
              f"{tm['ratio']:.0%} (s; ours: observation prefill + compression, kvpress: "
              "prefill with the press)", "", "| policy | ours s | ours / plain | kvpress s | "
              "kvpress / plain |", "|---|---|---|---|---|"]
    for name, t in tm["ours_s"].items():
      kv = tm["kvpress_s"].get(name)
      lines.append(f"| {name if name != 'full' else 'plain prefill'} | {t:.3f} | "
                   f"{t / tm['ours_s']['full']:.2f} | {kv:.3f} | "
                   f"{kv / tm['kvpress_s']['full']:.2f} |")
  return "\n".join(lines) + "\n"


def accuracy(pk, name, ratio, proto):
  return pk["table"].get(f"{name}@{ratio}", {}).get(proto, {}).get("accuracy")


def claims(cfg, pk, ppl) -> list[Claim]:
  """Ours beside kvpress on the policies whose kept slots match exactly (PyramidKV is left out:
  the two per-layer schedules differ). Passkey: within one trial (a greedy argmax may still
  flip between torch's and XLA's fp32 sums); ΔPPL: within 10% relative or 0.005."""
  out = []
  same = [p for p in shared(cfg) if p != "pyramidkv"]
  if "kvpress" in pk:
    cases = [(accuracy(pk, n, r, pr), pk["kvpress"].get(f"{n}@{r}", {}).get(pr, {}).get("accuracy"))
             for n in same for r in cfg.keep_ratios for pr in ("agnostic", "aware")]
    cases = [(a, b) for a, b in cases if a is not None and b is not None]
    eq = sum(abs(a - b) < 1e-9 for a, b in cases)
    near = all(abs(a - b) <= 1 / cfg.trials + 1e-9 for a, b in cases)
    out.append(Claim("passkey-matches-kvpress", "kvpress 0.5.5 (same weights and tokens)",
                     f"passkey accuracy of {same} equals kvpress's per ratio and protocol "
                     "(within one trial)", f"{len(cases)} cases", f"{eq} equal",
                     "every |ours - kvpress| <= 1/trials", bool(cases) and near))
  if "kvpress" in ppl:
    cases = [(ppl["table"].get(f"{n}@{r}", {}).get("dppl"),
              ppl["kvpress"]["table"].get(f"{n}@{r}", {}).get("dppl"))
             for n in same for r in cfg.ppl_ratios]
    cases = [(a, b) for a, b in cases if a is not None and b is not None]
    worst = max((abs(a - b) - 0.1 * abs(b) for a, b in cases), default=None)
    out.append(Claim("dppl-matches-kvpress", "kvpress 0.5.5 (same weights and tokens)",
                     f"ΔPPL of {same} on held-out code equals kvpress's (within 10% or 0.005)",
                     [round(b, 4) for _, b in cases], [round(a, 4) for a, _ in cases],
                     "|ours - kvpress| <= 0.1 |kvpress| + 0.005 each",
                     bool(cases) and worst <= 0.005))
  return out
