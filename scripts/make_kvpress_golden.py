"""Writes tests/fixtures/kvpress_golden.npz: the KV slots NVIDIA kvpress keeps per (layer, kv head)
on SmolLM2-135M-Instruct for one ~200-token prompt, so tests/kvcompress/test_kvpress_parity.py can
check jaxtok's policies against kvpress in CI without torch (issue 10 item 7).

Run with the side environment that has torch + transformers + kvpress (torch is never a jaxtok
dependency), from a neutral directory (this repo's kernels/ folder shadows the hub ``kernels``
package transformers probes for)::

    cd /tmp && /work/torchvenv/bin/python /work/main/scripts/make_kvpress_golden.py \
        --gguf $(/work/main/.venv/bin/python -c "from jaxtok.models import registry; \
                 print(registry.resolve('smollm2-135m'))")

How the kept slots are recorded: each press runs through its own forward hook
(``with press(model): model(ids, past_key_values=DynamicCache())``) on the fp32 model loaded from
the same GGUF jaxtok loads; the press's ``score`` is wrapped to record its per-(layer, kv head)
scores, and the kept slots are the ``topk(n_kept)`` of those scores - the same call
``ScorerPress.compress`` makes before gathering the kept keys (PyramidKV: its per-layer
``n_kept``). The recorded kept keys are also checked against the compressed cache the hook left
(so the record is what kvpress really kept).

Fixture keys (all small): ``ids`` i32[T]; ``window`` (SnapKV/PyramidKV window), ``kernel``;
``ratios`` f32[R] (kvpress compression ratios); per press P and ratio index r:
``P/kept_r`` bool[L, K, T] (packed with np.packbits on the last axis, ``P/shape``), ``P/n_kept_r``
i32[L]; ``snapkv/scores`` f16[L, K, T] (SnapKV's scores at the first ratio).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "kvpress_golden.npz"

PROMPT = ("The harbour town woke before the sun. Fishermen checked their nets, a baker pulled the "
          "first loaves from the oven, and the ferry captain wrote the day's code in chalk: the "
          "pass key is 48213. Children ran along the sea wall while gulls argued over scraps.\n"
          "def checksum(data):\n    total = 0\n    for i, byte in enumerate(data):\n"
          "        total = (total * 31 + byte + i) % 65521\n    return total\n"
          "By noon the market was loud with prices and gossip. A storm came in from the west, the "
          "boats returned early, and the harbour master counted them twice against his ledger. "
          "Nobody remembered the chalk code "
          "except the captain, who repeated it twice: 48213, 48213. What is the pass key?")

WINDOW = 16
KERNEL = 5
RATIOS = (0.5, 0.8)  # kvpress compression ratios: keep 50% and 20%


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--gguf", required=True, type=Path)
  ap.add_argument("--out", type=Path, default=OUT)
  args = ap.parse_args()

  import torch
  import transformers
  from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
  from kvpress import KnormPress, PyramidKVPress, SnapKVPress, StreamingLLMPress, TOVAPress

  transformers.utils.logging.disable_progress_bar()
  transformers.utils.logging.set_verbosity_error()
  torch.manual_seed(0)
  path = args.gguf
  tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                               dtype=torch.float32).eval()
  ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
  t = ids.shape[1]
  print(f"prompt: {t} tokens")
  n_layers = model.config.num_hidden_layers

  presses = {
      "streaming_llm": lambda r: StreamingLLMPress(compression_ratio=r, n_sink=4),
      "snapkv": lambda r: SnapKVPress(compression_ratio=r, window_size=WINDOW,
                                      kernel_size=KERNEL),
      "pyramidkv": lambda r: PyramidKVPress(compression_ratio=r, window_size=WINDOW,
                                            kernel_size=KERNEL),
      "tova": lambda r: TOVAPress(compression_ratio=r),
      "knorm": lambda r: KnormPress(compression_ratio=r),
  }
  out = {"ids": ids[0].numpy().astype(np.int32), "window": np.int32(WINDOW),
         "kernel": np.int32(KERNEL), "ratios": np.asarray(RATIOS, np.float32)}
  for name, build in presses.items():
    for ri, ratio in enumerate(RATIOS):
      press = build(ratio)
      scores = {}
      orig = press.score

      def rec(module, hidden_states, keys, values, attentions, kwargs, orig=orig, scores=scores):
        s = orig(module, hidden_states, keys, values, attentions, kwargs)
        scores[module.layer_idx] = s.detach().float().clone()
        return s
      press.score = rec
      n_kept = {}
      if isinstance(press, PyramidKVPress):
        orig_budget = press.get_layer_budget

        def budget(module, q_len, orig_budget=orig_budget, n_kept=n_kept):
          n = orig_budget(module, q_len)
          n_kept[module.layer_idx] = n
          return n
        press.get_layer_budget = budget
      cache = DynamicCache()
      with torch.no_grad(), press(model):
        model(ids, past_key_values=cache)
      kept = np.zeros((n_layers, model.config.num_key_value_heads, t), bool)
      nk = np.zeros(n_layers, np.int32)
      for l in range(n_layers):
        n = n_kept.get(l, max(1, int(t * (1 - ratio))))
        idx = scores[l].topk(n, dim=-1).indices[0]  # [K, n], as ScorerPress.compress
        for k in range(idx.shape[0]):
          kept[l, k, idx[k].numpy()] = True
        nk[l] = n
        # the record must be what the hook really left in the cache (same keys, kvpress order)
        got = cache.layers[l].keys[0]
        assert got.shape[1] == n, (name, l, got.shape, n)
        full = torch.gather(_full_keys(model, ids, l), 1,
                            idx[..., None].expand(-1, -1, got.shape[-1]))
        assert torch.allclose(got, full, atol=1e-5), (name, l)
      out[f"{name}/kept_{ri}"] = np.packbits(kept, axis=-1)
      out[f"{name}/n_kept_{ri}"] = nk
      out[f"{name}/shape"] = np.asarray(kept.shape, np.int32)
      if ri == 0 and name == "snapkv":
        out[f"{name}/scores"] = np.stack([scores[l][0].numpy() for l in range(n_layers)]
                                         ).astype(np.float16)
      print(f"{name} ratio {ratio}: kept per layer {nk[:3]}...{nk[-3:]}")
  args.out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


_FULL = {}


def _full_keys(model, ids, layer):
  """Post-RoPE keys of every prompt token at ``layer`` (an uncompressed prefill, cached)."""
  import torch
  from transformers import DynamicCache
  if "cache" not in _FULL:
    cache = DynamicCache()
    with torch.no_grad():
      model(ids, past_key_values=cache)
    _FULL["cache"] = cache
  return _FULL["cache"].layers[layer].keys[0]


if __name__ == "__main__":
  main()
