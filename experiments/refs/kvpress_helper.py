"""kvpress reference for ``jaxtok bench kvcompress`` and the ``kvcompress`` experiment (run by
``torch_ref.run_json`` in an interpreter with torch + transformers + kvpress; it needs no
jaxtok). argv[1] is the JSON job (``experiments/kvpress_side.py`` documents it): the GGUF file,
the observation window, and optional ``passkey``, ``ppl`` and ``timing`` sections. Prints one
``JSON:`` line with passkey answers, NLLs and prefill/decode timings per press."""
import json, sys, time
from pathlib import Path
import torch, transformers
from transformers import AutoModelForCausalLM, DynamicCache
import kvpress
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
torch.set_grad_enabled(False)
job = json.loads(sys.argv[1])
path = Path(job["gguf"])
model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                             dtype=torch.float32).eval()
W, KS, SINKS = job["window"], job.get("kernel", 5), job.get("sinks", 4)

def make(name, n_kept, k_len):
  if name == "full":
    return None
  # kvpress keeps max(1, int(k_len * (1 - ratio))): half a token of slack makes that n_kept
  r = 1.0 - (n_kept + 0.5) / k_len
  return {"streaming_llm": lambda: kvpress.StreamingLLMPress(compression_ratio=r, n_sink=SINKS),
          "snapkv": lambda: kvpress.SnapKVPress(compression_ratio=r, window_size=W,
                                                kernel_size=KS),
          "pyramidkv": lambda: kvpress.PyramidKVPress(compression_ratio=r, window_size=W,
                                                      kernel_size=KS),
          "tova": lambda: kvpress.TOVAPress(compression_ratio=r),
          "knorm": lambda: kvpress.KnormPress(compression_ratio=r)}[name]()

def prefill(ids, press):
  cache = DynamicCache()
  if press is None:
    out = model(ids, past_key_values=cache, logits_to_keep=1)
  else:
    with press(model):
      out = model(ids, past_key_values=cache, logits_to_keep=1)
  return out.logits[:, -1], cache

def kept(cache):
  return sum(l.keys.shape[2] for l in cache.layers) / len(cache.layers)

def greedy(logits, cache, pos, n):
  # as kvpress's pipeline: explicit position ids continue from the uncompressed length
  toks = []
  for i in range(n):
    tok = logits.argmax(-1)
    toks.append(tok)
    if i + 1 < n:
      p = torch.full((tok.shape[0], 1), pos + i, dtype=torch.long)
      logits = model(tok[:, None], past_key_values=cache, position_ids=p).logits[:, -1]
  return torch.stack(toks, 1).tolist()

res = {"passkey": [], "ppl": [], "timing": []}
pk = job.get("passkey")
if pk:
  ctx = torch.tensor(pk["ctx"]); q = torch.tensor(pk["question"])[None].expand(ctx.shape[0], -1)
  n, nq = ctx.shape[1], q.shape[1]
  for name, proto, n_kept in pk["cases"]:
   try:
    if proto == "agnostic":
      logits, cache = prefill(ctx, make(name, n_kept, n))
      kf = kept(cache) / n
      p = torch.arange(n, n + nq)[None].expand(ctx.shape[0], -1)
      logits = model(q, past_key_values=cache, position_ids=p).logits[:, -1]
    else:
      logits, cache = prefill(torch.cat([ctx, q], 1), make(name, n_kept, n + nq))
      kf = kept(cache) / (n + nq)
    toks = greedy(logits, cache, n + nq, pk["answer_tokens"])
    res["passkey"].append({"policy": name, "protocol": proto, "n_kept": n_kept,
                           "kept_fraction": kf, "tokens": toks})
   except RuntimeError as e:  # e.g. PyramidKV's uneven layer lengths break CPU sdpa masks
    res["passkey"].append({"policy": name, "protocol": proto, "n_kept": n_kept,
                           "error": str(e)[:300]})
pp = job.get("ppl")
if pp:
  first = torch.tensor(pp["first"]); rest = torch.tensor(pp["rest"])
  h, m = first.shape[1], rest.shape[1]
  for name, n_kept in pp["cases"]:
   try:
    logits, cache = prefill(first, make(name, n_kept, h))
    p = torch.arange(h, h + m - 1)[None].expand(first.shape[0], -1)
    out = model(rest[:, :-1], past_key_values=cache, position_ids=p).logits
    lg = torch.cat([logits[:, None], out], 1).log_softmax(-1)
    nll = -lg.gather(-1, rest[..., None]).mean().item()
    res["ppl"].append({"policy": name, "n_kept": n_kept, "nll": nll})
   except RuntimeError as e:
    res["ppl"].append({"policy": name, "n_kept": n_kept, "nll": None, "error": str(e)[:300]})
tm = job.get("timing")
if tm:
  ids = torch.tensor(tm["tokens"])
  b, n = ids.shape
  def best(fn):
    fn()
    t = float("inf")
    for _ in range(tm.get("repeats", 2)):
      t0 = time.perf_counter(); out = fn(); t = min(t, time.perf_counter() - t0)
    return t, out
  for name, n_kept in tm["cases"]:
    s, (logits, cache) = best(lambda: prefill(ids, make(name, n_kept, n)))
    row = {"policy": name, "n_kept": n_kept, "prefill_s": s}
    nd = tm.get("new_tokens", 0)
    if nd > 1:
      # decode rate on copies of this cache: n steps minus one step, as the jaxtok side
      import copy
      def dec(k):
        c = copy.deepcopy(cache); t0 = time.perf_counter(); greedy(logits, c, n, k)
        return time.perf_counter() - t0
      dec(2)
      t1 = min(dec(1) for _ in range(2)); tn = min(dec(nd) for _ in range(2))
      row["decode_tok_s"] = b * (nd - 1) / (tn - t1) if tn > t1 else float("nan")
    res["timing"].append(row)
print("JSON:" + json.dumps(res))
