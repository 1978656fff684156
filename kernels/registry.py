"""Registry of jaxtok's Pallas kernels and the shapes the compile gate builds them at.

Each entry names a kernel, its per-target entry points ("tpu": Mosaic, "gpu": Triton) and the
representative cases (decode, tree verification, chunked prefill; short and long caches;
Dh 64/128; GQA groups). `kernels/check.py` compiles every case for every target, no device.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Case:
  label: str                                   # e.g. "tree B2 T64 H8/K2 S1024 Dh128"
  args: tuple[tuple[tuple[int, ...], str], ...]  # (shape, dtype name) per positional argument
  options: tuple[tuple[str, object], ...] = ()  # static keyword arguments of the entry point


@dataclasses.dataclass(frozen=True)
class KernelSpec:
  name: str
  entry: Callable[[str], Callable]  # target family ("tpu" | "gpu") -> jittable kernel function
  cases: Callable[[list[str]], list[Case]]  # dtype names -> cases


def _tree_attention_entry(family: str):
  from jaxtok_kernels.tree_attention import tree_attention_gpu, tree_attention_tpu
  return {"tpu": tree_attention_tpu, "gpu": tree_attention_gpu}[family]


# (label, B, T, H, K, S, Dh): decode, tree verification, chunked prefill; GQA groups 1/3/4/8.
# Every shape but "verify" also compiles with the softmax residuals (attention statistics)
# requested. "verify": speculative verification of an N-node draft tree under its ancestor mask
# over a SmolLM2-135M cache (9/3 heads, Dh 64; context 8192), N = 16/32/64/80 (80: Token
# Recycling's static tree, arXiv 2408.08696, not a power of two: the GPU kernel pads it to 128);
# the verify forward asks for no attention statistics, so no +lse variants.
_TREE_SHAPES = [
    ("decode", 8, 1, 32, 8, 4096, 128),
    ("decode", 4, 1, 8, 8, 1024, 64),
    ("tree", 2, 64, 8, 2, 1024, 128),
    ("tree", 2, 64, 16, 2, 4096, 64),
    ("tree", 1, 128, 32, 8, 4096, 128),
    ("prefill", 1, 128, 8, 8, 4096, 64),
    ("decode", 8, 1, 9, 3, 8192, 64),  # SmolLM2-135M: GQA group 3
    ("verify", 1, 16, 9, 3, 8192, 64),
    ("verify", 8, 32, 9, 3, 2048, 64),
    ("verify", 1, 64, 9, 3, 8192, 64),
    ("verify", 8, 80, 9, 3, 2048, 64),
    ("verify", 1, 80, 9, 3, 8192, 64),
]


def _tree_attention_cases(dtypes: list[str]) -> list[Case]:
  cases = []
  for label, b, t, h, k, s, dh in _TREE_SHAPES:
    for dt in dtypes:
      # The cache is kv-head-major [B, K, S, Dh] with a length per (row, kv head), as
      # jaxtok.cache stores it.
      args = (((b, t, h, dh), dt), ((b, k, s, dh), dt), ((b, k, s, dh), dt), ((b, k), "int32"),
              ((b, t, k, dh), dt), ((b, t, k, dh), dt), ((b, t, t), "bool"))
      name = f"{label} B{b} T{t} H{h}/K{k} S{s} Dh{dh}"
      cases.append(Case(name, args))
      if label != "verify":
        cases.append(Case(f"{name} +lse", args, (("return_residuals", True),)))
  return cases


def _kvcompress_merge_entry(family: str):
  from jaxtok_kernels.kvcompress import merge_slots_gpu, merge_slots_tpu
  return {"tpu": merge_slots_tpu, "gpu": merge_slots_gpu}[family]


# (B, K, S, Dh): compression plans applied to SmolLM2-shaped and larger caches (S ragged too).
_MERGE_SHAPES = [(1, 3, 8192, 64), (8, 3, 2048, 64), (4, 8, 4096, 128), (2, 2, 1000, 64)]


def _kvcompress_merge_cases(dtypes: list[str]) -> list[Case]:
  cases = []
  for b, k, s, dh in _MERGE_SHAPES:
    for dt in dtypes:
      args = (((b, k, s, dh), dt), ((b, k, s, dh), dt), ((b, k, s), "float32"),
              ((b, k, s), "int32"))
      cases.append(Case(f"merge B{b} K{k} S{s} Dh{dh}", args))
  return cases


def _attn_stats_entry(family: str):
  from jaxtok_kernels.attn_stats import attn_stats_gpu, attn_stats_tpu
  return {"tpu": attn_stats_tpu, "gpu": attn_stats_gpu}[family]


# (label, B, T, H, K, S, Dh): SmolLM2 prefills (GQA 3, the prompt's own slots, T = S), the
# observation window over a long cache, a ragged T and S, Dh 128 with GQA 4.
_STATS_SHAPES = [("prefill", 1, 2048, 9, 3, 2048, 64), ("prefill", 1, 8192, 9, 3, 8192, 64),
                 ("window", 8, 32, 9, 3, 8192, 64), ("ragged", 2, 500, 8, 2, 1000, 64),
                 ("prefill", 2, 1024, 32, 8, 4096, 128)]


def _attn_stats_cases(dtypes: list[str]) -> list[Case]:
  cases = []
  for label, b, t, h, k, s, dh in _STATS_SHAPES:
    for dt in dtypes:
      args = (((b, t, h, dh), dt), ((b, k, s, dh), dt), ((b, k), "int32"), ((b, t, h), "float32"),
              ((b, t), "bool"))
      cases.append(Case(f"stats {label} B{b} T{t} H{h}/K{k} S{s} Dh{dh}", args))
  return cases


def _selected_attention_entry(family: str):
  from jaxtok_kernels.selected_attention import selected_attention_gpu, selected_attention_tpu
  return {"tpu": selected_attention_tpu, "gpu": selected_attention_gpu}[family]


# (B, T, H, K, S, Dh): SentenceKV decoding over SmolLM2-shaped and larger caches, a short
# block (T = 4), a ragged S.
_SELECTED_SHAPES = [(8, 1, 9, 3, 8192, 64), (4, 1, 32, 8, 4096, 128), (2, 4, 8, 2, 2048, 128),
                    (1, 1, 9, 3, 1000, 64)]


def _selected_attention_cases(dtypes: list[str]) -> list[Case]:
  cases = []
  for b, t, h, k, s, dh in _SELECTED_SHAPES:
    for dt in dtypes:
      args = (((b, t, h, dh), dt), ((b, k, s, dh), dt), ((b, k, s, dh), dt), ((b, k, s), "bool"),
              ((b, t, k, dh), dt), ((b, t, k, dh), dt), ((b, t, t), "bool"))
      cases.append(Case(f"selected B{b} T{t} H{h}/K{k} S{s} Dh{dh}", args))
  return cases


KERNELS = [KernelSpec("tree_attention", _tree_attention_entry, _tree_attention_cases),
           KernelSpec("kvcompress_merge", _kvcompress_merge_entry, _kvcompress_merge_cases),
           KernelSpec("attn_stats", _attn_stats_entry, _attn_stats_cases),
           KernelSpec("selected_attention", _selected_attention_entry, _selected_attention_cases)]


def dtype(name: str):
  return jnp.dtype(name)
