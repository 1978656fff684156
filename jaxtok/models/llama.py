"""Llama-family checkpoint tensors <-> jaxtok's Transformer parameter tree.

The canonical interchange layout is Hugging Face ``LlamaForCausalLM`` (Touvron et al., arXiv
2302.13971): ``model.layers.{i}.self_attn.q_proj.weight`` [H*Dh, D] (PyTorch ``nn.Linear`` stores
[out, in]), rotate-half RoPE. GGUF files are translated into this layout first
(jaxtok.models.gguf_loader), so one mapping serves both formats.

jaxtok layout: ``embed`` [V, D]; ``blocks[i].attn.wq`` [D, H, Dh], ``wk``/``wv`` [D, K, Dh],
``wo`` [H, Dh, D]; ``blocks[i].mlp.w_gate``/``w_up`` [D, F], ``w_down`` [F, D]; RMSNorm scales
[D]; ``unembed`` [D, V] only when the checkpoint does not tie it to the embedding.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxtok.ckpt import CheckpointError
from jaxtok.nn.config import ModelConfig


_SUPPORTED_ACT = ("silu", "swish")  # SwiGLU's gate: the only MLP activation the model has


def config_from_hf(hf: Mapping[str, Any], *, dtype: str = "float32",
                   max_len: int | None = None, source: str = "config.json") -> ModelConfig:
  """Builds a ModelConfig from a Hugging Face Llama ``config.json`` dictionary."""
  arch = hf.get("architectures") or [hf.get("model_type", "?")]
  model_type = hf.get("model_type", "llama")
  if model_type not in ("llama", "mistral") and "LlamaForCausalLM" not in arch:
    raise CheckpointError(f"{source}: unsupported architecture {arch} (model_type={model_type!r});"
                          " jaxtok loads Llama-family decoders (model_type 'llama')")
  act = hf.get("hidden_act", "silu")
  if act not in _SUPPORTED_ACT:
    raise CheckpointError(f"{source}: hidden_act={act!r} is unsupported (expected silu/SwiGLU)")
  if hf.get("attention_bias") or hf.get("mlp_bias"):
    raise CheckpointError(f"{source}: attention_bias/mlp_bias are unsupported (Llama has none)")
  scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
  if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
    raise CheckpointError(f"{source}: rope_scaling={scaling} is unsupported (jaxtok implements "
                          "plain RoPE)")
  if hf.get("sliding_window"):
    raise CheckpointError(f"{source}: sliding_window attention is unsupported")
  try:
    d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    theta = hf.get("rope_theta")
    if theta is None:  # transformers 5 nests it under rope_parameters
      theta = (hf.get("rope_parameters") or {}).get("rope_theta", 10_000.0)
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]), d_model=d, n_layers=int(hf["num_hidden_layers"]),
        n_heads=h, n_kv_heads=int(hf.get("num_key_value_heads") or h),
        head_dim=int(hf.get("head_dim") or d // h), d_ff=int(hf["intermediate_size"]),
        max_len=int(max_len or hf.get("max_position_embeddings", 2048)), positions="rope",
        rope_theta=float(theta), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), dtype=dtype)
  except KeyError as e:
    raise CheckpointError(f"{source}: missing required field {e.args[0]!r}") from None


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.dh, "intermediate_size": cfg.d_ff,
      "max_position_embeddings": cfg.max_len, "rope_theta": cfg.rope_theta,
      "tie_word_embeddings": cfg.tie_embeddings, "rms_norm_eps": cfg.norm_eps,
      "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
  }


def _take(tensors: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...],
          source: str) -> np.ndarray:
  if name not in tensors:
    raise CheckpointError(f"{source}: missing tensor {name!r}")
  x = np.asarray(tensors[name])
  if x.shape != shape:
    raise CheckpointError(f"{source}: tensor {name!r} has shape {x.shape}, expected {shape} "
                          "from the config")
  return x


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, *,
                   source: str = "checkpoint") -> dict:
  """HF-named [out, in] tensors -> jaxtok pure parameter dict (numpy fp32)."""
  d, h, k, dh, f, v = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh, cfg.d_ff, cfg.vocab_size

  def t(name, shape):
    return _take(tensors, name, shape, source).astype(np.float32)

  blocks = {}
  for i in range(cfg.n_layers):
    p = f"model.layers.{i}."
    blocks[i] = {
        "attn_norm": {"scale": t(p + "input_layernorm.weight", (d,))},
        "attn": {
            "wq": t(p + "self_attn.q_proj.weight", (h * dh, d)).T.reshape(d, h, dh),
            "wk": t(p + "self_attn.k_proj.weight", (k * dh, d)).T.reshape(d, k, dh),
            "wv": t(p + "self_attn.v_proj.weight", (k * dh, d)).T.reshape(d, k, dh),
            "wo": t(p + "self_attn.o_proj.weight", (d, h * dh)).T.reshape(h, dh, d),
        },
        "mlp_norm": {"scale": t(p + "post_attention_layernorm.weight", (d,))},
        "mlp": {
            "w_gate": t(p + "mlp.gate_proj.weight", (f, d)).T,
            "w_up": t(p + "mlp.up_proj.weight", (f, d)).T,
            "w_down": t(p + "mlp.down_proj.weight", (d, f)).T,
        },
    }
  out = {"embed": t("model.embed_tokens.weight", (v, d)), "blocks": blocks,
         "final_norm": {"scale": t("model.norm.weight", (d,))}}
  if not cfg.tie_embeddings:
    out["unembed"] = t("lm_head.weight", (v, d)).T
  for name, x in _flat(out):
    if not np.all(np.isfinite(x)):
      raise CheckpointError(f"{source}: parameter {name} contains NaN/inf (corrupt file?)")
  return out


def params_to_hf(params: Mapping, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """jaxtok pure parameter dict -> HF-named [out, in] fp32 tensors (export, tests)."""
  d, h, k, dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh
  a = lambda x: np.asarray(x, np.float32)  # noqa: E731
  out = {"model.embed_tokens.weight": a(params["embed"]),
         "model.norm.weight": a(params["final_norm"]["scale"])}
  for i in range(cfg.n_layers):
    b, p = params["blocks"][i], f"model.layers.{i}."
    out[p + "input_layernorm.weight"] = a(b["attn_norm"]["scale"])
    out[p + "post_attention_layernorm.weight"] = a(b["mlp_norm"]["scale"])
    out[p + "self_attn.q_proj.weight"] = a(b["attn"]["wq"]).reshape(d, h * dh).T
    out[p + "self_attn.k_proj.weight"] = a(b["attn"]["wk"]).reshape(d, k * dh).T
    out[p + "self_attn.v_proj.weight"] = a(b["attn"]["wv"]).reshape(d, k * dh).T
    out[p + "self_attn.o_proj.weight"] = a(b["attn"]["wo"]).reshape(h * dh, d).T
    out[p + "mlp.gate_proj.weight"] = a(b["mlp"]["w_gate"]).T
    out[p + "mlp.up_proj.weight"] = a(b["mlp"]["w_up"]).T
    out[p + "mlp.down_proj.weight"] = a(b["mlp"]["w_down"]).T
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = a(params["unembed"]).T
  return {n: np.ascontiguousarray(x) for n, x in out.items()}


def _flat(tree, prefix=""):
  if isinstance(tree, Mapping):
    for key, sub in tree.items():
      yield from _flat(sub, f"{prefix}{key}.")
  else:
    yield prefix[:-1], tree


def build(cfg: ModelConfig, pure_params: Mapping, *, weight_dtype: str | None = None):
  """Returns (graphdef, params) for ``cfg`` holding ``pure_params`` without a random init.

  ``weight_dtype`` defaults to ``cfg.dtype``: matrices are stored in it (bf16 halves memory and
  bandwidth; decode is bandwidth-bound), norm scales in fp32 (RMSNorm computes in fp32 anyway).
  """
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxtok.nn.transformer import Transformer

  wdt = jnp.dtype(weight_dtype or cfg.dtype)
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  expected = dict(_flat(nnx.to_pure_dict(state)))
  got = dict(_flat(pure_params))
  if set(expected) != set(got):
    raise CheckpointError(f"parameter names differ from the model: missing "
                          f"{sorted(set(expected) - set(got))[:5]}, unexpected "
                          f"{sorted(set(got) - set(expected))[:5]}")
  for name, spec in expected.items():
    if tuple(spec.shape) != tuple(np.shape(got[name])):
      raise CheckpointError(f"parameter {name}: shape {np.shape(got[name])}, expected "
                            f"{tuple(spec.shape)}")

  def convert(path, x):
    name = ".".join(str(getattr(p, "key", p)) for p in path)
    dt = jnp.float32 if name.endswith("scale") else wdt
    return jnp.asarray(np.asarray(x), dtype=dt)

  arrays = jax.tree_util.tree_map_with_path(convert, dict(pure_params))
  nnx.replace_by_pure_dict(state, arrays)
  return graphdef, state
