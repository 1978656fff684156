"""Drafters by name, for command lines (``jaxtok generate --speculate tr|suffix|pld``)."""
from __future__ import annotations

DRAFTERS = ("tr", "suffix", "pld")


def make_drafter(name: str, n_nodes: int | None = None):
  """A fresh drafter: ``tr`` Token Recycling (default 8 nodes, the best size on a CPU),
  ``suffix`` SuffixDecoding (16 nodes, verify buckets 4 / 16), ``pld`` prompt lookup (8)."""
  from jaxtok.speculative.lookup import PromptLookup
  from jaxtok.speculative.recycling import TokenRecycling
  from jaxtok.speculative.suffix import SuffixDecoding

  if name == "tr":
    return TokenRecycling(n_nodes=n_nodes or 8)
  if name == "suffix":
    return SuffixDecoding(n_nodes=n_nodes or 16, buckets=(4,))
  if name == "pld":
    return PromptLookup(n_nodes=n_nodes or 8)
  raise ValueError(f"--speculate: expected one of {'|'.join(DRAFTERS)}, got {name!r}")
