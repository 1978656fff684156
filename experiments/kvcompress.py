"""Experiment ``kvcompress``: KV-cache compression policies on SmolLM2-135M-Instruct.

(a) Passkey retrieval (the needle test of EMS arXiv 2412.08521 and kvpress): filler text with a
5-digit key at a random depth, then the question in the chat template, in kvpress's two
protocols - compress the context then ask (query-agnostic), or compress context + question
(query-aware). First the context length at which the *full* cache answers >= 80% is found
(a task the uncompressed model cannot do measures nothing); then accuracy per policy and budget.
(b) ΔPPL on held-out code (stdlib validation files): compress the first half, score the second.
(c) Memory: cache bytes at each budget (the compressed cache really is smaller: ``resize``),
and the compression step's time against the prefill's.
One prefill per protocol serves every policy and budget (each compresses its own copy).

Papers: EMS (2412.08521), Elastic Cache (2407.18121), SentenceKV (2504.00970), SnapKV
(2404.14469), PyramidKV (2406.02069), H2O (2306.14048), TOVA (2401.06104), StreamingLLM
(2309.17453), KNorm (2406.11430), AdaKV (2407.11550).

kvpress side by side (issue 10 item 6): with ``torch_python`` set (a Python with torch +
transformers + kvpress), the same tokens run through kvpress 0.5.5's presses on the same GGUF
weights for the policies both have (StreamingLLM, SnapKV, PyramidKV, TOVA, KNorm): passkey
accuracy per protocol and budget, ΔPPL (against kvpress's own full cache), and the prefill time
with and without the press beside ours (plain prefill vs observation prefill + compression).
SnapKV and PyramidKV use kvpress's options here (average pooling, kernel 5); their kept slots
then match kvpress's exactly (tests/kvcompress/test_kvpress_parity.py). PyramidKV's per-layer
schedules differ (kvpress: no window term, falls back silently; ours: ``kvcompress.pyramid``);
kvpress's PyramidKV leaves layers of different lengths, which break the CPU sdpa mask of the
next forward (recorded as an error per case, not a number).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok import kvcompress as kc
from jaxtok.cache import init_cache
from jaxtok.config import ConfigError, require
from jaxtok.data import stdlib
from jaxtok.decode import decode_step
from jaxtok.nn.transformer import forward
from jaxtok_experiments import bench_kvcompress  # noqa: F401  (kvpress helper, imported up front)
from jaxtok_experiments.runner import Claim

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
         "memorize it. I will quiz you about the important information there.\n\n")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\n\nWhat is the pass key?"
ANSWER_PREFIX = "The pass key is"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  model: str = "smollm2-135m"  # or "random-tiny" (smoke: a random byte-level model)
  context_lengths: tuple[int, ...] = (1024, 768, 512)  # tried longest first (calibration)
  min_full_accuracy: float = 0.8
  require_calibration: bool = True  # False (smoke): evaluate at the last length tried anyway
  trials: int = 6
  window: int = 8  # observation window (query-agnostic: the context's last tokens)
  policies: tuple[str, ...] = ("random", "streaming_llm", "h2o", "tova", "snapkv", "pyramidkv",
                               "knorm", "elastic_cache", "ems", "sentencekv", "adakv_snapkv")
  keep_ratios: tuple[float, ...] = (0.02, 0.1, 0.25)
  answer_tokens: int = 7
  ppl_half: int = 256  # tokens compressed, then as many scored
  ppl_windows: int = 4
  ppl_ratios: tuple[float, ...] = (0.1, 0.25, 0.5)
  decode_policies: tuple[str, ...] = ("streaming_llm", "h2o", "tova", "elastic_cache")
  decode_ratio: float = 0.25  # budget while reading, as a fraction of the compressed half
  decode_tokens: int = 128  # tokens scored under the decoding-time budget
  decode_every: int = 32  # compress every this many tokens
  pie_edits: int = 4  # code prefixes with one line deleted (PIE), 0: skip
  pie_tokens: int = 16  # greedy continuation compared with full recomputation
  torch_python: str | None = None  # a Python with torch + kvpress: kvpress side by side
  seed: int = 0

  def __post_init__(self):
    require(len(self.context_lengths) > 0 and min(self.context_lengths) > 4 * self.window,
            "context_lengths", f"lengths above 4 x window ({4 * self.window})",
            self.context_lengths)
    require(0 < self.min_full_accuracy <= 1, "min_full_accuracy", "in (0, 1]",
            self.min_full_accuracy)
    require(self.trials > 0 and self.ppl_windows > 0 and self.ppl_half > self.window,
            "trials/ppl_windows/ppl_half", "positive (ppl_half > window)",
            (self.trials, self.ppl_windows, self.ppl_half))
    require(all(0 < r <= 1 for r in self.keep_ratios + self.ppl_ratios), "keep_ratios",
            "ratios in (0, 1]", self.keep_ratios + self.ppl_ratios)
    require(0 < self.decode_every and self.decode_tokens % self.decode_every == 0
            and self.decode_tokens <= self.ppl_half, "decode_tokens",
            "a multiple of decode_every, at most ppl_half", (self.decode_tokens,
                                                           self.decode_every))
    for p in self.policies + self.decode_policies:
      kc.make(p, **({"boundary_ids": (0,)} if p.endswith("sentencekv") else {}))


PRESETS = {
    "smoke": lambda: Config(model="random-tiny", context_lengths=(480,), trials=2, window=4,
                            require_calibration=False,
                            policies=("streaming_llm", "ems", "elastic_cache"),
                            keep_ratios=(0.25,), answer_tokens=3, ppl_half=128, ppl_windows=2,
                            ppl_ratios=(0.5,), pie_edits=2, pie_tokens=4,
                            decode_policies=("elastic_cache",), decode_tokens=8,
                            decode_every=8),
    "cpu": lambda: Config(),
    "pod": lambda: Config(context_lengths=(1400, 1200, 1024), trials=50,
                          keep_ratios=(0.02, 0.05, 0.1, 0.25, 0.5),
                          ppl_half=1024, ppl_windows=32, ppl_ratios=(0.05, 0.1, 0.25, 0.5)),
}


class _Bytes:
  """Byte-level stand-in tokenizer for the random smoke model."""
  vocab_size = 256

  def encode(self, text, add_bos=None):
    return list(text.encode("utf-8", "replace"))

  def decode(self, ids):
    return bytes(int(i) % 256 for i in ids).decode("utf-8", "replace")

  def id_to_token(self, i):
    return chr(i)

  def chat(self, content):
    return "<user>", "</user><assistant>"


def _load(cfg: Config):
  if cfg.model == "random-tiny":
    from flax import nnx
    from jaxtok.nn.config import ModelConfig
    from jaxtok.nn.transformer import init_model
    mcfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                       d_ff=128, max_len=512)
    graphdef, params = nnx.split(init_model(mcfg, cfg.seed), nnx.Param)
    return mcfg, graphdef, params, _Bytes()
  from jaxtok import models
  m = models.load(cfg.model)
  return m.cfg, m.graphdef, m.params, m.tokenizer


def _chat_parts(tok):
  if isinstance(tok, _Bytes):
    return tok.chat("")
  text = tok.apply_chat_template([{"role": "user", "content": "\x00"}])
  head, tail = text.split("\x00")
  return head, tail


def boundary_ids(tok) -> tuple[int, ...]:
  """Sentence ends for SentenceKV: tokens with a newline or ending a sentence ('.', '?', '!');
  for code a sentence is a line."""
  out = []
  for i in range(tok.vocab_size):
    s = tok.id_to_token(i)
    if s is not None and ("Ċ" in s or "\n" in s or s.endswith((".", "?", "!"))):
      out.append(i)
  return tuple(out)


def passkey_batch(tok, n_tokens: int, trials: int, rng: np.random.Generator):
  """(context i32[B, n_tokens], question i32[Q], keys): each row hides a 5-digit key at a
  random depth of the filler; every context has exactly n_tokens tokens."""
  head, tail = _chat_parts(tok)
  pre = tok.encode(head + INTRO)
  filler = tok.encode(FILLER * (n_tokens // 4 + 8))
  unit = len(tok.encode(FILLER))
  question = tok.encode(QUESTION) + tok.encode(tail + ANSWER_PREFIX)
  rows, keys = [], []
  for _ in range(trials):
    key = str(rng.integers(10000, 100000))
    needle = tok.encode(NEEDLE.format(key=key))
    room = n_tokens - len(pre) - len(needle)
    require(room > 2 * unit, "context_lengths", f"room for the needle and filler (> "
            f"{len(pre) + len(needle) + 2 * unit} tokens)", n_tokens)
    cut = int(rng.integers(0, room // unit)) * unit  # a sentence boundary of the filler
    rows.append(pre + filler[:cut] + needle + filler[cut:room])
    keys.append(key)
  return np.asarray(rows, np.int32), np.asarray(question, np.int32), keys


@functools.partial(jax.jit, static_argnames=("graphdef", "n"))
def _greedy(graphdef, params, cache, logits_BxV, *, n):
  def step(carry, _):
    cache, logits = carry
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits, cache = decode_step(graphdef, params, cache, tok)
    return (cache, logits), tok
  _, toks = jax.lax.scan(step, (cache, logits_BxV), None, length=n)
  return toks.T


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _ask(graphdef, params, cache, question_BxQ):
  from jaxtok import cache as cache_lib
  b, q = question_BxQ.shape
  pos = cache.next_pos[:, None] + jnp.arange(q)[None]
  out = forward(graphdef, params, question_BxQ, pos, cache=cache,
                logits_at_BxN=jnp.full((b, 1), q - 1, jnp.int32))
  return out.logits[:, 0], cache_lib.commit(out.cache, jnp.full((b,), q, jnp.int32))


@functools.partial(jax.jit, static_argnames=("graphdef", "window", "capacity"))
def _observe(graphdef, params, tokens_BxT, *, window, capacity):
  from flax import nnx
  mcfg = nnx.merge(graphdef, params).cfg
  return kc.observe(graphdef, params, init_cache(mcfg, tokens_BxT.shape[0], capacity),
                    tokens_BxT, window)


@functools.lru_cache(maxsize=None)
def _compressor(policy):
  return jax.jit(lambda cache, obs, b: kc.compress_arrays(cache, policy, b, obs))


def _policy(name, bids, vocab):
  if name.endswith("sentencekv"):
    return kc.make(name, boundary_ids=bids, vocab_size=vocab)
  if name.endswith(("snapkv", "pyramidkv")):
    return kc.make(name, kernel=5, pool_kind="avg")  # kvpress's options (compared side by side)
  return kc.make(name)


def _shared(cfg):
  from jaxtok_experiments.bench_kvcompress import KVPRESS_POLICIES
  return [p for p in cfg.policies if p in KVPRESS_POLICIES]


def run_kvpress_passkey(cfg, tok, n, ctx, q, keys, log):
  """kvpress's accuracy on the same passkey tokens: {name@ratio: {protocol: accuracy}}."""
  from jaxtok_experiments.bench_kvcompress import kvpress_side
  cases = [["full", "agnostic", n], ["full", "aware", n + len(q)]]
  cases += [[name, proto, max(1, int(r * n))] for name in _shared(cfg) for r in cfg.keep_ratios
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
    acc = float(np.mean(_answers(tok, row["tokens"], keys)))
    table.setdefault(f"{case[0]}@{ratio}", {})[case[1]] = {
        "accuracy": acc, "kept_fraction": row["kept_fraction"]}
  log({"phase": "kvpress_passkey", "s": time.time() - t0, "table": table})
  return table


def _compress(policy, cache, obs, mcfg, tokens: int):
  """(compressed cache, kept fraction, fallback notes) or raises ConfigError (budget too small
  for the policy)."""
  budget = kc.uniform(mcfg.n_layers, mcfg.kv_heads, tokens)
  alloc = policy.allocate(budget, obs)
  # prompt_len is static (host-side allocation only): zero it so every protocol shares a compile
  res = _compressor(policy)(cache, obs.replace(prompt_len=0), kc.budget_arrays(alloc, cache.batch))
  return res, alloc.fallback


def _answers(tok, toks_BxN, keys):
  return [k in tok.decode(row) for row, k in zip(np.asarray(toks_BxN).tolist(), keys)]


def run_passkey(cfg, mcfg, graphdef, params, tok, bids, log):
  rng = np.random.default_rng(cfg.seed)
  calib, chosen = {}, None
  for n in sorted(cfg.context_lengths, reverse=True):
    ctx, q, keys = passkey_batch(tok, n, cfg.trials, rng)
    cap = n + len(q) + cfg.answer_tokens + 1
    t0 = time.time()
    _, cache, obs = _observe(graphdef, params, jnp.asarray(ctx), window=cfg.window, capacity=cap)
    logits, c2 = _ask(graphdef, params, cache, jnp.broadcast_to(jnp.asarray(q), (cfg.trials,
                                                                                 len(q))))
    acc = float(np.mean(_answers(tok, _greedy(graphdef, params, c2, logits,
                                              n=cfg.answer_tokens), keys)))
    calib[n] = acc
    log({"phase": "calibrate", "context": n, "full_accuracy": acc, "s": time.time() - t0})
    chosen = (n, ctx, q, keys, cache, obs, cap)
    if acc >= cfg.min_full_accuracy:
      break
  if max(calib.values()) < cfg.min_full_accuracy and cfg.require_calibration:
    chosen = None
  if chosen is None:
    return {"calibration": calib, "context": None, "table": {}}
  n, ctx, q, keys, cache_qa, obs_qa, cap = chosen
  b = cfg.trials
  q_BxQ = jnp.broadcast_to(jnp.asarray(q), (b, len(q)))
  # Query-aware: observe context + question once, its window being the question's tail.
  full_qa = jnp.concatenate([jnp.asarray(ctx), q_BxQ], axis=1)
  t0 = time.time()
  logits_aw, cache_aw, obs_aw = _observe(graphdef, params, full_qa, window=cfg.window,
                                         capacity=cap)
  jax.block_until_ready(logits_aw)
  prefill_s = time.time() - t0
  table, timing = {}, {}
  for name in ("full",) + tuple(cfg.policies):
    policy = kc.Full() if name == "full" else _policy(name, bids, mcfg.vocab_size)
    for ratio in cfg.keep_ratios:
      tokens = max(1, int(ratio * n))
      row = {}
      for proto, cache, obs in (("agnostic", cache_qa, obs_qa), ("aware", cache_aw, obs_aw)):
        try:
          t0 = time.time()
          res, fallback = _compress(policy, cache, obs, mcfg, tokens)
          jax.block_until_ready(res.cache.layers[-1].k)
          timing[(name, proto)] = time.time() - t0
        except ConfigError as e:
          row[proto] = {"accuracy": None, "error": str(e)}
          continue
        if proto == "agnostic":
          logits, c2 = _ask(graphdef, params, res.cache, q_BxQ)
        else:
          logits, c2 = logits_aw, res.cache
        acc = float(np.mean(_answers(tok, _greedy(graphdef, params, c2, logits,
                                                  n=cfg.answer_tokens), keys)))
        row[proto] = {"accuracy": acc, "kept_fraction": float(res.kept_fraction),
                      "fallback": list(fallback)}
      table[f"{name}@{ratio}"] = row
      log({"phase": "passkey", "policy": name, "ratio": ratio, **{
          p: v.get("accuracy") for p, v in row.items()}})
      if name == "full":
        break
  res = {"calibration": calib, "context": n, "calibrated": max(calib.values()) >=
         cfg.min_full_accuracy, "table": table, "prefill_s": prefill_s,
         "compress_s": {f"{k[0]}/{k[1]}": v for k, v in timing.items()}}
  if cfg.torch_python:
    res["kvpress"] = run_kvpress_passkey(cfg, tok, n, ctx, q, keys, log)
    res["timing"] = run_timing(cfg, mcfg, graphdef, params, ctx, log)
  return res


def run_timing(cfg, mcfg, graphdef, params, ctx, log):
  """Warm prefill times on the passkey contexts (query-agnostic, the 10%-nearest budget):
  ours - plain prefill vs observation prefill + compression; kvpress - plain prefill vs prefill
  with the press (it compresses inside the forward's hooks)."""
  from jaxtok import decode as decode_lib
  from jaxtok_experiments.bench_kvcompress import _best, kvpress_side
  b, n = ctx.shape
  r10 = min(cfg.keep_ratios, key=lambda r: abs(r - 0.1))
  tokens = max(1, int(r10 * n))
  x = jnp.asarray(ctx)
  lens = jnp.full((b,), n, jnp.int32)
  plain = jax.jit(lambda p, t: decode_lib.prefill(graphdef, p, init_cache(mcfg, b, n), t, lens))
  ours = {"full": _best(lambda: plain(params, x), 2)[0]}
  obs_s, (_, cache, obs) = _best(lambda: _observe(graphdef, params, x, window=cfg.window,
                                                  capacity=n), 2)
  for name in _shared(cfg):
    policy = _policy(name, (), mcfg.vocab_size)
    comp_s, _ = _best(lambda: _compress(policy, cache, obs, mcfg, tokens)[0].cache.layers[-1].k,
                      2)
    ours[name] = obs_s + comp_s
  kp = kvpress_side(cfg.torch_python, {"window": cfg.window, "timing": {
      "tokens": np.asarray(ctx).tolist(), "repeats": 1,
      "cases": [["full", n]] + [[name, tokens] for name in _shared(cfg)]}})
  kv = {row["policy"]: row["prefill_s"] for row in kp["timing"]}
  out = {"context": n, "batch": b, "ratio": r10, "ours_s": ours, "kvpress_s": kv}
  log({"phase": "timing", **out})
  return out



def _code_windows(tok, cfg):
  text = "\n".join(d.decode("utf-8", "replace") for d in stdlib.documents("val", 0.05, 400_000))
  ids = np.asarray(tok.encode(text), np.int32)
  span = 2 * cfg.ppl_half
  require(len(ids) >= span * cfg.ppl_windows, "ppl_windows", f"at most "
          f"{len(ids) // span} windows of {span} tokens", cfg.ppl_windows)
  starts = np.linspace(0, len(ids) - span, cfg.ppl_windows).astype(int)
  return np.stack([ids[s:s + span] for s in starts])


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _nll(graphdef, params, cache, logits_BxV, rest_BxH):
  """Mean NLL of the H tokens ``rest`` given the cache: the first from ``logits``, the others
  teacher-forced in one forward."""
  b, h = rest_BxH.shape
  pos = cache.next_pos[:, None] + jnp.arange(h - 1)[None]
  out = forward(graphdef, params, rest_BxH[:, :-1], pos, cache=cache)
  logits = jnp.concatenate([logits_BxV[:, None], out.logits], axis=1)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, rest_BxH[..., None], axis=-1))


def run_ppl(cfg, mcfg, graphdef, params, tok, bids, log):
  win = jnp.asarray(_code_windows(tok, cfg))
  h = cfg.ppl_half
  logits, cache, obs = _observe(graphdef, params, win[:, :h], window=cfg.window, capacity=2 * h)
  rest = win[:, h:]
  full = float(_nll(graphdef, params, cache, logits, rest))
  table = {}
  names = list(cfg.policies) + (["ems_evict_only"] if "ems" in cfg.policies else [])
  for name in names:
    # ems_evict_only: the merge ablation (every dropped slot to the zero class)
    policy = (kc.EMS(merge_threshold=1.01) if name == "ems_evict_only"
              else _policy(name, bids, mcfg.vocab_size))
    for ratio in cfg.ppl_ratios:
      try:
        res, _ = _compress(policy, cache, obs, mcfg, max(1, int(ratio * h)))
      except ConfigError as e:
        table[f"{name}@{ratio}"] = {"dppl": None, "error": str(e)}
        continue
      nll = float(_nll(graphdef, params, res.cache, logits, rest))
      table[f"{name}@{ratio}"] = {"dppl": math.exp(nll - full) - 1.0, "nll": nll}
      log({"phase": "ppl", "policy": name, "ratio": ratio, "dppl": table[f"{name}@{ratio}"]})
  res = {"full_ppl": math.exp(full), "table": table}
  if cfg.torch_python:
    from jaxtok_experiments.bench_kvcompress import kvpress_side
    cases = [["full", h]] + [[name, max(1, int(r * h))] for name in _shared(cfg)
                             for r in cfg.ppl_ratios]
    out = kvpress_side(cfg.torch_python, {"window": cfg.window, "ppl": {
        "first": np.asarray(win[:, :h]).tolist(), "rest": np.asarray(rest).tolist(),
        "cases": cases}})
    kfull = out["ppl"][0]["nll"]
    kt = {}
    for row, case in zip(out["ppl"][1:], cases[1:]):
      r = cfg.ppl_ratios[[max(1, int(x * h)) for x in cfg.ppl_ratios].index(case[1])]
      kt[f"{case[0]}@{r}"] = ({"dppl": None, "error": row["error"]} if row["nll"] is None else
                              {"dppl": math.exp(row["nll"] - kfull) - 1.0, "nll": row["nll"]})
    res["kvpress"] = {"full_ppl": math.exp(kfull), "table": kt}
    log({"phase": "kvpress_ppl", **res["kvpress"]})
  return res


def _line_spans(tok, ids):
  """(start, length) of the lines (between newline-bearing tokens) of a token sequence."""
  nl = [i for i, t in enumerate(ids) if "Ċ" in (tok.id_to_token(int(t)) or "") or
        "\n" in (tok.id_to_token(int(t)) or "")]
  return [(a + 1, b - a) for a, b in zip(nl, nl[1:]) if b - a >= 2]


def run_pie(cfg, mcfg, graphdef, params, tok, log):
  """Delete one line in the middle of a cached code prefix, then continue greedily: PIE
  (re-rotate the later keys, encode nothing), a naive splice (drop the slots, stale rotations)
  and full recomputation of the edited prefix; agreement of the continuations with the full
  recomputation's."""
  from jaxtok import decode as decode_lib
  from jaxtok.kvcompress import pie
  win = _code_windows(tok, cfg)
  h = cfg.ppl_half
  n_new = cfg.pie_tokens
  cap = h + n_new + 1
  rng = np.random.default_rng(cfg.seed + 1)
  prefill = jax.jit(lambda t, n: decode_lib.prefill(graphdef, params, init_cache(mcfg, 1, cap),
                                                    t, n))
  agree = {"pie": [], "splice": []}
  exact = {"pie": [], "splice": []}
  deleted = []
  for row in win[:cfg.pie_edits]:
    ids = row[:h]
    spans = [sp for sp in _line_spans(tok, ids) if h // 8 <= sp[0] and sum(sp) < h - 1]
    if not spans:
      continue
    start, n = spans[int(rng.integers(len(spans)))]
    edited = np.concatenate([ids[:start], ids[start + n:]])
    padded = np.zeros((1, h), np.int32)
    padded[0, :len(edited)] = edited
    logits_full, c_full = prefill(jnp.asarray(padded), jnp.array([len(edited)], jnp.int32))
    ref = np.asarray(_greedy(graphdef, params, c_full, logits_full, n=n_new))[0]
    logits_orig, c_orig = prefill(jnp.asarray(ids[None]), jnp.array([h], jnp.int32))
    for name, c in (("pie", pie.delete(c_orig, start, n, mcfg.rope_theta)),
                    ("splice", pie.splice(c_orig, start, n))):
      got = np.asarray(_greedy(graphdef, params, c, logits_orig, n=n_new))[0]
      agree[name].append(float(np.mean(got == ref)))
      exact[name].append(bool(np.all(got == ref)))
    deleted.append(int(n))
    log({"phase": "pie", "deleted": int(n), "pie": agree["pie"][-1],
         "splice": agree["splice"][-1]})
  return {"edits": len(deleted), "deleted_tokens": deleted, "encoded_tokens": 0,
          "token_agreement": {k: float(np.mean(v)) if v else None for k, v in agree.items()},
          "exact_match": {k: float(np.mean(v)) if v else None for k, v in exact.items()}}


def run_decode_ppl(cfg, mcfg, graphdef, params, tok, log):
  """ΔPPL with the budget kept while reading (compression during decoding): the first half is
  compressed to ``decode_ratio`` of it, then ``decode_tokens`` tokens are read teacher-forced
  with the cache compacted back to the budget every ``decode_every`` tokens."""
  from jaxtok.kvcompress import decoding
  win = jnp.asarray(_code_windows(tok, cfg))[:, :cfg.ppl_half + cfg.decode_tokens]
  budget = max(cfg.window + 1, int(cfg.decode_ratio * cfg.ppl_half))
  full = decoding.score(graphdef, params, win, cfg.ppl_half, policy=kc.Full(),
                        budget_tokens=cfg.ppl_half + cfg.decode_tokens, every=cfg.decode_every)
  table = {}
  for name in cfg.decode_policies:
    t0 = time.time()
    nll = decoding.score(graphdef, params, win, cfg.ppl_half, policy=kc.make(name),
                         budget_tokens=budget, every=cfg.decode_every)
    table[name] = {"dppl": math.exp(nll - full) - 1.0, "nll": nll, "s": time.time() - t0}
    log({"phase": "decode_ppl", "policy": name, **table[name]})
  return {"budget_tokens": budget, "full_ppl": math.exp(full), "table": table}


def memory(mcfg, context: int, ratios) -> dict:
  """Cache bytes of the full cache and of compressed caches resized to their budget."""
  full = kc.cache_bytes(init_cache(mcfg, 1, context))
  return {"full_bytes": full, **{f"{r}": kc.cache_bytes(init_cache(mcfg, 1, max(1, int(
      r * context)))) / full for r in ratios}}


def _plot(pk, ppl, cfg, out_dir):
  from jaxtok_experiments import plots  # noqa: F401  (Agg backend)
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for proto, ax in zip(("agnostic", "aware"), axes[:2]):
    for name in cfg.policies:
      xs, ys = [], []
      for r in cfg.keep_ratios:
        a = pk["table"].get(f"{name}@{r}", {}).get(proto, {}).get("accuracy")
        if a is not None:
          xs.append(r), ys.append(a)
      ax.plot(xs, ys, "o-", label=name)
    ax.set_xscale("log"), ax.set_title(f"passkey, query-{proto} (context {pk['context']})")
    ax.set_xlabel("fraction of context kept"), ax.set_ylabel("accuracy")
  axes[0].legend(fontsize=7)
  for name in cfg.policies:
    xs = [r for r in cfg.ppl_ratios if ppl["table"].get(f"{name}@{r}", {}).get("dppl") is not None]
    axes[2].plot(xs, [ppl["table"][f"{name}@{r}"]["dppl"] for r in xs], "o-", label=name)
  axes[2].set_xscale("log"), axes[2].set_yscale("symlog", linthresh=0.01)
  axes[2].set_title("ΔPPL on held-out code"), axes[2].set_xlabel("fraction kept")
  fig.tight_layout()
  fig.savefig(out_dir / "kvcompress.png", dpi=100)
  plt.close(fig)


def _acc(pk, name, ratio, proto):
  return pk["table"].get(f"{name}@{ratio}", {}).get(proto, {}).get("accuracy")


def run(cfg: Config, out_dir: Path, resume: bool = False) -> list[Claim]:
  mcfg, graphdef, params, tok = _load(cfg)
  bids = boundary_ids(tok)
  metrics = open(out_dir / "metrics.jsonl", "w")

  def log(row):
    metrics.write(json.dumps(row, default=str) + "\n")
    metrics.flush()
  t0 = time.time()
  pk = run_passkey(cfg, mcfg, graphdef, params, tok, bids, log)
  ppl = run_ppl(cfg, mcfg, graphdef, params, tok, bids, log)
  dec = run_decode_ppl(cfg, mcfg, graphdef, params, tok, log) if cfg.decode_policies else None
  pie_res = run_pie(cfg, mcfg, graphdef, params, tok, log) if cfg.pie_edits else None
  mem = memory(mcfg, pk["context"] or max(cfg.context_lengths), cfg.keep_ratios)
  summary = {"passkey": pk, "ppl": ppl, "decode_ppl": dec, "pie": pie_res, "memory": mem,
             "seconds": time.time() - t0}
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
  metrics.close()
  if pk["context"] is not None:
    _plot(pk, ppl, cfg, out_dir)
  if "kvpress" in pk or "kvpress" in ppl:
    text = side_by_side(cfg, pk, ppl)
    (out_dir / "kvpress_table.md").write_text(text)
    print(text, flush=True)
  return claims(cfg, pk, ppl, mem, pie_res, dec)


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
  for name in _shared(cfg):
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


def kvpress_claims(cfg, pk, ppl) -> list[Claim]:
  """Ours beside kvpress on the policies whose kept slots match exactly (PyramidKV is left out:
  the two per-layer schedules differ). Passkey: within one trial (a greedy argmax may still
  flip between torch's and XLA's fp32 sums); ΔPPL: within 10% relative or 0.005."""
  out = []
  same = [p for p in _shared(cfg) if p != "pyramidkv"]
  if "kvpress" in pk:
    cases = [(_acc(pk, n, r, pr), pk["kvpress"].get(f"{n}@{r}", {}).get(pr, {}).get("accuracy"))
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


def claims(cfg, pk, ppl, mem, pie_res=None, dec=None) -> list[Claim]:
  out = [Claim("full-cache-calibrated", "kvpress notes (SmolLM2-135M: ~1000-1200 tokens)",
               f"the full cache retrieves the passkey >= {cfg.min_full_accuracy:.0%} at some "
               f"context length in {list(cfg.context_lengths)}", cfg.min_full_accuracy,
               pk["calibration"], "max accuracy >= paper_value", bool(pk.get("calibrated")))]
  if pie_res and pie_res["edits"]:
    a, b = pie_res["token_agreement"]["pie"], pie_res["token_agreement"]["splice"]
    out.append(Claim("pie-beats-naive-splice", "PIE (arXiv 2407.03157)", "after deleting a line, "
                     "PIE's continuation agrees with full recomputation more than a naive splice's "
                     "(token agreement), encoding no token", b, round(a, 4),
                     "ours > paper_value (the splice's)", a > b))
  if dec and {"elastic_cache", "h2o", "streaming_llm"} <= set(dec["table"]):
    e, h, st = (dec["table"][n]["dppl"] for n in ("elastic_cache", "h2o", "streaming_llm"))
    out.append(Claim("elastic-beats-h2o-streaming-decoding", "Elastic Cache (arXiv 2407.18121)",
                     f"teacher-forced ΔPPL with a {dec['budget_tokens']}-token budget kept while "
                     "reading code: Elastic Cache below H2O and StreamingLLM",
                     round(min(h, st), 4), round(e, 4), "ours < paper_value", e < min(h, st)))
  if pk["context"] is None:
    return out
  lo = min(cfg.keep_ratios)
  ems = _acc(pk, "ems", lo, "aware")
  out.append(Claim("ems-needle-2pct", "EMS (arXiv 2412.08521)", f"needle retrieval with a budget "
                   f"of {lo:.0%} of the context, query-aware", 0.95, ems, "ours >= 0.95",
                   ems is not None and ems >= 0.95))
  wins = []
  for r in cfg.keep_ratios:
    for proto in ("agnostic", "aware"):
      e, h, s = (_acc(pk, n, r, proto) for n in ("elastic_cache", "h2o", "streaming_llm"))
      if None not in (e, h, s):
        wins.append((e >= max(h, s), e > max(h, s)))
  out.append(Claim("elastic-beats-h2o-streaming", "Elastic Cache (arXiv 2407.18121)",
                   "Elastic Cache >= H2O and StreamingLLM at every ratio and protocol, and "
                   "strictly better somewhere (passkey; ties at 0 prove nothing)", "every ratio",
                   f"{sum(w for w, _ in wins)}/{len(wins)} not worse, "
                   f"{sum(b for _, b in wins)} better", "all not worse, one better",
                   bool(wins) and all(w for w, _ in wins) and any(b for _, b in wins)))
  sk_ok = []
  full = _acc(pk, "full", cfg.keep_ratios[0], "aware")
  for r in cfg.keep_ratios:
    a, s = _acc(pk, "sentencekv", r, "aware"), _acc(pk, "snapkv", r, "aware")
    if a is not None and s is not None and s < full:
      sk_ok.append(a >= full - 1e-9)
  out.append(Claim("sentencekv-matches-full-where-snapkv-loses", "SentenceKV (arXiv 2504.00970)",
                   "where SnapKV falls below the full cache, SentenceKV matches it (query-aware)",
                   "all such ratios", f"{sum(sk_ok)}/{len(sk_ok)}", "all cases (vacuous if none)",
                   all(sk_ok)))
  # ΔPPL: scorers that read attention beat Random by >= 10% relative at the middle ratio
  mid = sorted(cfg.ppl_ratios)[len(cfg.ppl_ratios) // 2]
  rnd = ppl["table"].get(f"random@{mid}", {}).get("dppl")
  for name in ("h2o", "snapkv", "ems"):
    d = ppl["table"].get(f"{name}@{mid}", {}).get("dppl")
    if d is not None and rnd is not None:
      out.append(Claim(f"{name}-beats-random-dppl", "kv_and_tree.md §F", f"{name} ΔPPL at "
                       f"{mid:.0%} kept is >= 10% below Random's on held-out code", rnd,
                       round(d, 4), "ours <= 0.9 x paper_value", d <= 0.9 * rnd))
  ev = [(ppl["table"].get(f"ems@{r}", {}).get("dppl"),
         ppl["table"].get(f"ems_evict_only@{r}", {}).get("dppl")) for r in cfg.ppl_ratios]
  ev = [(a, b) for a, b in ev if a is not None and b is not None]
  if ev:
    out.append(Claim("ems-merge-beats-evict", "EMS (arXiv 2412.08521)", "evict-then-merge ΔPPL <= "
                     "evict-only at every ratio (held-out code)", [round(b, 4) for _, b in ev],
                     [round(a, 4) for a, _ in ev], "ours <= paper_value at each ratio",
                     all(a <= b for a, b in ev)))
  out += kvpress_claims(cfg, pk, ppl)
  r10 = min(cfg.keep_ratios, key=lambda r: abs(r - 0.1))
  out.append(Claim("memory-freed", "issue 10", f"a cache resized to {r10:.0%} of the context "
                   "holds <= 12% of the full cache's bytes", 0.12, round(mem[f"{r10}"], 4),
                   "ours <= paper_value (at the 10% budget)", mem[f"{r10}"] <= 0.12))
  return out
