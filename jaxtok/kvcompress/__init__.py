"""KV-cache compression: policies (scores or keep/merge plans per (layer, kv head)), budgets,
the prompt's observation, plan application, compression while decoding (a ``Compactor`` of the
one decode loop), PIE re-rotation.

``make(name, **fields)`` builds a policy by name; ``POLICIES`` lists them. Each policy's module
names its paper. One prefill, many policies::

    logits, cache, obs = observe(model, init_cache(model.cfg, b, t), tokens, window=32)
    res = compress(cache, make("snapkv"), from_ratio(cfg.n_layers, cfg.kv_heads, t, 0.1), obs)

Compressed decoding is the engine's decoding with a compactor::

    decode.generate(model, prompt, max_new_tokens=64,
                    compactor=compactor("h2o", budget_tokens=256, every=16))
"""
from __future__ import annotations

from jaxtok.cache import resize
from jaxtok.kvcompress.adakv import AdaKV
from jaxtok.kvcompress.apply import (Result, apply_plans, budget_arrays, cache_bytes, compress,
                                     compress_arrays, compress_tokens)
from jaxtok.kvcompress.budget import Budget, from_ratio, pyramid, uniform
from jaxtok.kvcompress.compactor import CompactState, KVCompactor, compactor
from jaxtok.kvcompress.elastic_cache import ElasticCache
from jaxtok.kvcompress.ems import EMS
from jaxtok.kvcompress.full import Full
from jaxtok.kvcompress.h2o import H2O
from jaxtok.kvcompress.knorm import KNorm
from jaxtok.kvcompress.observe import Observation, observe
from jaxtok.kvcompress.policy import LayerPlan, Policy, top_plan
from jaxtok.kvcompress.pyramidkv import PyramidKV
from jaxtok.kvcompress.random_policy import Random
from jaxtok.kvcompress.sentencekv import SentenceKV
from jaxtok.kvcompress.snapkv import SnapKV
from jaxtok.kvcompress.streaming_llm import StreamingLLM
from jaxtok.kvcompress.tova import TOVA

POLICIES = {p.name: p for p in (Full, Random, StreamingLLM, H2O, TOVA, SnapKV, PyramidKV, KNorm,
                                ElasticCache, EMS, SentenceKV)}


def make(name: str, **fields) -> Policy:
  """A policy by name; ``adakv_<name>`` wraps a scorer in AdaKV's head-wise allocation."""
  if name.startswith("adakv_"):
    return AdaKV(inner=make(name[len("adakv_"):], **fields))
  if name not in POLICIES:
    raise ValueError(f"policy: unknown name {name!r}; known: {sorted(POLICIES)} (or "
                     "'adakv_<name>')")
  return POLICIES[name](**fields)


__all__ = ["AdaKV", "Budget", "CompactState", "EMS", "ElasticCache", "Full", "H2O", "KNorm",
           "KVCompactor", "LayerPlan", "Observation", "POLICIES", "Policy", "PyramidKV", "Random",
           "Result", "SentenceKV", "SnapKV", "StreamingLLM", "TOVA", "apply_plans",
           "budget_arrays", "cache_bytes", "compactor", "compress", "compress_arrays",
           "compress_tokens",
           "from_ratio", "make", "observe", "pyramid", "resize", "top_plan", "uniform"]
