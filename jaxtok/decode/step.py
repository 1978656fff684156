"""``extend``: the one place a token block meets a KV cache (DESIGN.md decision 4).

Every cached forward in jaxtok - prefill, a decode step, a speculative tree verify, a KV
compression observation, a NAR diagonal - is one call of ``extend``: the block is written at
``length`` of every (layer, row, kv head) under ``mask`` (causal, a tree's ancestor mask, a step
mask), and, when ``commit_B`` is given, its first ``commit_B[b]`` tokens become visible and
``next_pos`` advances. Logits are unembedded only where asked. ``prefill`` and ``decode_step``
are its two common cases. All of it is traceable: call it inside ``jax.jit``.
"""
from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxtok import cache as cache_lib
from jaxtok.cache import KVCache
from jaxtok.decode.model import Model
from jaxtok.nn import masks
from jaxtok.nn.transformer import Output, forward


def extend(model: Model, cache: KVCache, tokens_BxT: Int[Array, "B T"],
           positions: Int[Array, "B T *P"], mask: masks.Mask = masks.CAUSAL, *,
           commit_B: Int[Array, "B"] | None = None,
           logits_at_BxN: Int[Array, "B N"] | None = None, return_stats: bool = False,
           fresh: bool = False, **forward_kw) -> tuple[Output, KVCache]:
  """Runs a block of T tokens against ``cache`` and writes it at each (row, kv head)'s
  ``length``; returns (the forward's Output, the cache).

  The block attends to the visible slots and to itself under ``mask``. Without ``commit_B``
  the returned cache holds the block written but invisible (speculation commits the accepted
  path itself); with it, the first ``commit_B[b]`` tokens of row b are committed. Positions < 0
  mark padding (written, never committed when ``commit_B`` counts only real tokens).
  ``fresh`` (static): the cache is empty (from ``init_cache``), so nothing in it is scored.
  ``forward_kw``: the Transformer's other keywords (external embeddings, return_hidden).
  """
  out = forward(model.graphdef, model.params, tokens_BxT, positions, mask, cache=cache,
                fresh_cache=fresh, logits_at_BxN=logits_at_BxN, return_stats=return_stats,
                **forward_kw)
  written = out.cache
  return out, written if commit_B is None else cache_lib.commit(written, commit_B)


def block_positions(cache: KVCache, len_B: Int[Array, "B"], t: int) -> Int[Array, "B T"]:
  """Positions ``next_pos + 0..t-1`` of a right-padded block; -1 past each row's length."""
  offset_BxT = jnp.arange(t, dtype=jnp.int32)[None, :]
  return jnp.where(offset_BxT < len_B[:, None], cache.next_pos[:, None] + offset_BxT, -1)


def prefill(model: Model, cache: KVCache, prompt_BxT: Int[Array, "B T"],
            prompt_len_B: Int[Array, "B"], *, fresh: bool = True
            ) -> tuple[Float[Array, "B V"], KVCache]:
  """Runs the (right-padded) prompts at positions ``next_pos + 0..len-1`` and commits each row's
  true length; returns each prompt's last logits and the cache. ``fresh`` (static): the cache
  is empty; False continues a cache (a chunked prefill, a question after a compressed context).
  Callers that need the attention statistics call ``extend`` with ``return_stats``."""
  out, cache = extend(model, cache, prompt_BxT,
                      block_positions(cache, prompt_len_B, prompt_BxT.shape[1]),
                      commit_B=prompt_len_B, logits_at_BxN=(prompt_len_B - 1)[:, None],
                      fresh=fresh)
  return out.logits[:, 0], cache


def decode_step(model: Model, cache: KVCache, token_B: Int[Array, "B"]
                ) -> tuple[Float[Array, "B V"], KVCache]:
  """One token per row at position ``next_pos``, committed; returns its next-token logits and
  the cache."""
  out, cache = extend(model, cache, token_B[:, None], cache.next_pos[:, None],
                      commit_B=jnp.ones_like(token_B))
  return out.logits[:, 0], cache
