"""Configuration of jaxtok's one transformer (DESIGN.md decision 3)."""
from __future__ import annotations

import dataclasses
from typing import Literal

from jaxtok.config import require


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  vocab_size: int = 256
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int | None = None  # None: multi-head attention (= n_heads); fewer: GQA
  head_dim: int | None = None  # None: d_model // n_heads (Llama-family files may differ)
  d_ff: int = 512
  max_len: int = 1024  # learned-position table size and default KV-cache capacity
  embedding: Literal["learned", "external"] = "learned"  # external: caller passes vectors
  positions: Literal["rope", "learned", "none"] = "rope"
  rope_theta: float = 10_000.0
  rope_axes: int = 1  # >1: N-D RoPE over coordinates positions_BxTxP (head dim split per axis)
  tie_embeddings: bool = True
  extra_heads: tuple[int, ...] = ()  # vocab sizes of additional output heads (e.g. NAR axes)
  norm_eps: float = 1e-5
  dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; parameters stay fp32
  # Attention over a cache: "auto" = Pallas kernel on TPU/GPU, jnp reference elsewhere;
  # "pallas" raises where the kernel cannot run; "xla" = always the reference.
  attention_impl: Literal["auto", "xla", "pallas"] = "auto"
  init_std: float = 0.02

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len", "rope_axes"):
      require(getattr(self, name) > 0, f"model.{name}", "a positive integer", getattr(self, name))
    require(self.kv_heads > 0 and self.n_heads % self.kv_heads == 0, "model.n_kv_heads",
            f"a positive divisor of n_heads={self.n_heads}", self.n_kv_heads)
    if self.head_dim is None:
      require(self.d_model % self.n_heads == 0, "model.n_heads",
              f"a divisor of d_model={self.d_model} (or set model.head_dim)", self.n_heads)
    require(self.dh > 0 and self.dh % 2 == 0, "model.head_dim", "a positive even integer", self.dh)
    if self.positions == "rope":
      require(self.dh % (2 * self.rope_axes) == 0, "model.rope_axes",
              f"a divisor of head_dim/2={self.dh // 2}", self.rope_axes)
    require(self.rope_axes == 1 or self.positions == "rope", "model.rope_axes",
            "1 unless positions='rope'", self.rope_axes)
    require(self.rope_theta > 0, "model.rope_theta", "> 0", self.rope_theta)
    require(all(v > 0 for v in self.extra_heads), "model.extra_heads",
            "positive vocab sizes", self.extra_heads)
    require(not (self.tie_embeddings and self.embedding == "external"), "model.tie_embeddings",
            "False when embedding='external' (there is no input table to tie)", True)

  @property
  def kv_heads(self) -> int:
    return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

  @property
  def dh(self) -> int:
    return self.head_dim if self.head_dim is not None else self.d_model // max(self.n_heads, 1)

  def param_count(self) -> int:
    d, f, v, dh = self.d_model, self.d_ff, self.vocab_size, self.dh
    attn = d * dh * (self.n_heads * 2 + self.kv_heads * 2)
    per_layer = attn + 3 * d * f + 2 * d
    emb = v * d * (1 if self.tie_embeddings else 2) if self.embedding == "learned" else v * d
    return self.n_layers * per_layer + emb + d + sum(d * e for e in self.extra_heads) + (
        self.max_len * d if self.positions == "learned" else 0)

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (fwd + bwd = 3x fwd): 6 N matmul + causal attention scores."""
    d, f, dh = self.d_model, self.d_ff, self.dh
    matmul = self.n_layers * (d * dh * (self.n_heads * 2 + self.kv_heads * 2) + 3 * d * f)
    matmul += d * (self.vocab_size + sum(self.extra_heads))
    # QK^T and PV over the causal half of the scores (the useful work; masked-out pairs excluded).
    attn = self.n_layers * 2 * self.n_heads * dh * seq_len
    return 6.0 * matmul + 3.0 * attn
