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


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shape:
  """A representative shape (the legend of DESIGN.md): B rows, T new tokens (queries), H query
  heads, K kv heads, S cache slots, Dh head dim; T and H are None for kernels without queries."""
  label: str
  b: int
  k: int
  s: int
  dh: int
  t: int | None = None
  h: int | None = None

  @property
  def name(self) -> str:
    return f"{self.label} B{self.b} T{self.t} H{self.h}/K{self.k} S{self.s} Dh{self.dh}"


@dataclasses.dataclass(frozen=True)
class KernelSpec:
  name: str
  entry: Callable[[str], Callable]  # target family ("tpu" | "gpu") -> jittable kernel function
  cases: Callable[[list[str]], list[Case]]  # dtype names -> cases


def _tree_attention_entry(family: str):
  from jaxtok_kernels.tree_attention import tree_attention_gpu, tree_attention_tpu
  return {"tpu": tree_attention_tpu, "gpu": tree_attention_gpu}[family]


# Decode, tree verification, chunked prefill; GQA groups 1/3/4/8.
# Every shape but "verify" also compiles with the softmax residuals (attention statistics)
# requested. "verify": speculative verification of an N-node draft tree under its ancestor mask
# over a SmolLM2-135M cache (9/3 heads, Dh 64; context 8192), N = 16/32/64/80 (80: Token
# Recycling's static tree, arXiv 2408.08696, not a power of two: the GPU kernel pads it to 128);
# the verify forward asks for no attention statistics, so no +lse variants.
_TREE_SHAPES = [
    Shape(label="decode", b=8, t=1, h=32, k=8, s=4096, dh=128),
    Shape(label="decode", b=4, t=1, h=8, k=8, s=1024, dh=64),
    Shape(label="tree", b=2, t=64, h=8, k=2, s=1024, dh=128),
    Shape(label="tree", b=2, t=64, h=16, k=2, s=4096, dh=64),
    Shape(label="tree", b=1, t=128, h=32, k=8, s=4096, dh=128),
    Shape(label="prefill", b=1, t=128, h=8, k=8, s=4096, dh=64),
    Shape(label="decode", b=8, t=1, h=9, k=3, s=8192, dh=64),  # SmolLM2-135M: GQA group 3
    Shape(label="verify", b=1, t=16, h=9, k=3, s=8192, dh=64),
    Shape(label="verify", b=8, t=32, h=9, k=3, s=2048, dh=64),
    Shape(label="verify", b=1, t=64, h=9, k=3, s=8192, dh=64),
    Shape(label="verify", b=8, t=80, h=9, k=3, s=2048, dh=64),
    Shape(label="verify", b=1, t=80, h=9, k=3, s=8192, dh=64),
]


def _tree_attention_cases(dtypes: list[str]) -> list[Case]:
  cases = []
  for sh in _TREE_SHAPES:
    b, t, h, k, s, dh = sh.b, sh.t, sh.h, sh.k, sh.s, sh.dh
    for dt in dtypes:
      # The cache is kv-head-major [B, K, S, Dh] with a length per (row, kv head), as
      # jaxtok.cache stores it.
      args = (((b, t, h, dh), dt), ((b, k, s, dh), dt), ((b, k, s, dh), dt), ((b, k), "int32"),
              ((b, t, k, dh), dt), ((b, t, k, dh), dt), ((b, t, t), "bool"))
      cases.append(Case(sh.name, args))
      if sh.label != "verify":
        cases.append(Case(f"{sh.name} +lse", args, (("return_residuals", True),)))
  return cases


def _kvcompress_merge_entry(family: str):
  from jaxtok_kernels.kvcompress import merge_slots_gpu, merge_slots_tpu
  return {"tpu": merge_slots_tpu, "gpu": merge_slots_gpu}[family]


# Compression plans applied to SmolLM2-shaped and larger caches (S ragged too).
_MERGE_SHAPES = [Shape(label="merge", b=1, k=3, s=8192, dh=64),
                 Shape(label="merge", b=8, k=3, s=2048, dh=64),
                 Shape(label="merge", b=4, k=8, s=4096, dh=128),
                 Shape(label="merge", b=2, k=2, s=1000, dh=64)]


def _kvcompress_merge_cases(dtypes: list[str]) -> list[Case]:
  cases = []
  for sh in _MERGE_SHAPES:
    b, k, s, dh = sh.b, sh.k, sh.s, sh.dh
    for dt in dtypes:
      args = (((b, k, s, dh), dt), ((b, k, s, dh), dt), ((b, k, s), "float32"),
              ((b, k, s), "int32"))
      cases.append(Case(f"{sh.label} B{b} K{k} S{s} Dh{dh}", args))
  return cases


def _attn_stats_entry(family: str):
  from jaxtok_kernels.attn_stats import attn_stats_gpu, attn_stats_tpu
  return {"tpu": attn_stats_tpu, "gpu": attn_stats_gpu}[family]


# SmolLM2 prefills (GQA 3, the prompt's own slots, T = S), the observation window over a long
# cache, a ragged T and S, Dh 128 with GQA 4.
_STATS_SHAPES = [Shape(label="prefill", b=1, t=2048, h=9, k=3, s=2048, dh=64),
                 Shape(label="prefill", b=1, t=8192, h=9, k=3, s=8192, dh=64),
                 Shape(label="window", b=8, t=32, h=9, k=3, s=8192, dh=64),
                 Shape(label="ragged", b=2, t=500, h=8, k=2, s=1000, dh=64),
                 Shape(label="prefill", b=2, t=1024, h=32, k=8, s=4096, dh=128)]


def _attn_stats_cases(dtypes: list[str]) -> list[Case]:
  cases = []
  for sh in _STATS_SHAPES:
    b, t, h, k, s, dh = sh.b, sh.t, sh.h, sh.k, sh.s, sh.dh
    for dt in dtypes:
      args = (((b, t, h, dh), dt), ((b, k, s, dh), dt), ((b, k), "int32"), ((b, t, h), "float32"),
              ((b, t), "bool"))
      cases.append(Case(f"stats {sh.name}", args))
  return cases


def _selected_attention_entry(family: str):
  from jaxtok_kernels.selected_attention import selected_attention_gpu, selected_attention_tpu
  return {"tpu": selected_attention_tpu, "gpu": selected_attention_gpu}[family]


# SentenceKV decoding over SmolLM2-shaped and larger caches, a short block (T = 4), a ragged S.
_SELECTED_SHAPES = [Shape(label="selected", b=8, t=1, h=9, k=3, s=8192, dh=64),
                    Shape(label="selected", b=4, t=1, h=32, k=8, s=4096, dh=128),
                    Shape(label="selected", b=2, t=4, h=8, k=2, s=2048, dh=128),
                    Shape(label="selected", b=1, t=1, h=9, k=3, s=1000, dh=64)]


def _selected_attention_cases(dtypes: list[str]) -> list[Case]:
  cases = []
  for sh in _SELECTED_SHAPES:
    b, t, h, k, s, dh = sh.b, sh.t, sh.h, sh.k, sh.s, sh.dh
    for dt in dtypes:
      args = (((b, t, h, dh), dt), ((b, k, s, dh), dt), ((b, k, s, dh), dt), ((b, k, s), "bool"),
              ((b, t, k, dh), dt), ((b, t, k, dh), dt), ((b, t, t), "bool"))
      cases.append(Case(sh.name, args))
  return cases


KERNELS = [KernelSpec("tree_attention", _tree_attention_entry, _tree_attention_cases),
           KernelSpec("kvcompress_merge", _kvcompress_merge_entry, _kvcompress_merge_cases),
           KernelSpec("attn_stats", _attn_stats_entry, _attn_stats_cases),
           KernelSpec("selected_attention", _selected_attention_entry, _selected_attention_cases)]


def dtype(name: str):
  return jnp.dtype(name)
