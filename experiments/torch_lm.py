"""A plain-PyTorch replica of jaxtok's transformer and train step, for `jaxtok bench train`.

Same architecture as ``jaxtok.nn.transformer`` (Llama-style, arXiv 2302.13971): learned byte
embedding, pre-norm RMSNorm, RoPE with the rotate-half layout (arXiv 2104.09864), GQA attention
(arXiv 2305.13245), SwiGLU MLP (arXiv 2002.05202), tied unembedding, fp32 throughout; trained by
global-norm clipping + AdamW with decay on matrices only, as ``jaxtok.train.step``. Parameters
keep jaxtok's names and shapes (``blocks.0.attn.wq`` is [D, H, Dh], ...) so one set of weights
drives both implementations and the benchmark's ratio compares the same model on the same batch.

This module imports only torch and numpy: it runs in-process when torch is importable next to
jax, or as a script under another interpreter (``--serve``: one JSON command per stdin line, one
JSON answer per stdout line), which is how `jaxtok bench train --torch-python PATH` uses it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

_MASKED = -1e30  # = jaxtok_kernels.numerics.MASKED (this replica runs without jax installed)


def param_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
  """jaxtok's parameter tree (dotted names) for a learned-embedding, RoPE, tied model."""
  d, h, f, v = cfg["d_model"], cfg["n_heads"], cfg["d_ff"], cfg["vocab_size"]
  k = cfg.get("n_kv_heads") or h
  dh = cfg.get("head_dim") or d // h
  shapes = {"embed": (v, d), "final_norm.scale": (d,)}
  for i in range(cfg["n_layers"]):
    p = f"blocks.{i}."
    shapes.update({p + "attn_norm.scale": (d,), p + "attn.wq": (d, h, dh),
                   p + "attn.wk": (d, k, dh), p + "attn.wv": (d, k, dh),
                   p + "attn.wo": (h, dh, d), p + "mlp_norm.scale": (d,),
                   p + "mlp.w_gate": (d, f), p + "mlp.w_up": (d, f), p + "mlp.w_down": (f, d)})
  return shapes


def check_supported(cfg: dict) -> None:
  unsupported = {"embedding": "learned", "positions": "rope", "rope_axes": 1,
                 "tie_embeddings": True, "extra_heads": [], "dtype": "float32"}
  for name, want in unsupported.items():
    got = cfg.get(name, want)
    if (list(got) if isinstance(got, (list, tuple)) else got) != want:
      raise ValueError(f"torch_lm: model.{name}={got!r} is not replicated (needs {want!r})")


class TorchLM(torch.nn.Module):
  def __init__(self, cfg: dict, weights: dict[str, np.ndarray] | None = None, seed: int = 0):
    super().__init__()
    check_supported(cfg)
    self.cfg = cfg
    self.h = cfg["n_heads"]
    self.k = cfg.get("n_kv_heads") or self.h
    self.dh = cfg.get("head_dim") or cfg["d_model"] // self.h
    self.eps = cfg.get("norm_eps", 1e-5)
    gen = torch.Generator().manual_seed(seed)
    self.names = list(param_shapes(cfg))
    self.params = torch.nn.ParameterList()
    for name, shape in param_shapes(cfg).items():
      if weights is not None:
        t = torch.from_numpy(np.ascontiguousarray(weights[name], dtype=np.float32))
      elif name.endswith("scale"):
        t = torch.ones(shape)
      else:
        t = torch.randn(shape, generator=gen) * cfg.get("init_std", 0.02)
      if tuple(t.shape) != shape:
        raise ValueError(f"torch_lm: weight {name}: expected shape {shape}, got {tuple(t.shape)}")
      self.params.append(torch.nn.Parameter(t.clone()))
    self.p = dict(zip(self.names, self.params))
    half = self.dh // 2
    self.inv_freq = cfg.get("rope_theta", 10_000.0) ** (
        -torch.arange(half, dtype=torch.float32) * 2 / (2 * half))

  def _norm(self, x, scale):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * scale

  def _rope(self, x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

  def forward(self, tokens):
    b, t = tokens.shape
    d, h, k, dh = self.cfg["d_model"], self.h, self.k, self.dh
    p = self.p
    x = p["embed"][tokens]
    angles = torch.arange(t, dtype=torch.float32)[:, None] * self.inv_freq  # T x Dh/2
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    for i in range(self.cfg["n_layers"]):
      q_ = f"blocks.{i}."
      y = self._norm(x, p[q_ + "attn_norm.scale"])
      q = (y @ p[q_ + "attn.wq"].reshape(d, h * dh)).view(b, t, h, dh)
      kk = (y @ p[q_ + "attn.wk"].reshape(d, k * dh)).view(b, t, k, dh)
      vv = (y @ p[q_ + "attn.wv"].reshape(d, k * dh)).view(b, t, k, dh)
      q, kk = self._rope(q, cos, sin), self._rope(kk, cos, sin)
      q, kk, vv = q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2)  # B x heads x T x Dh
      if k != h:
        kk, vv = kk.repeat_interleave(h // k, dim=1), vv.repeat_interleave(h // k, dim=1)
      o = F.scaled_dot_product_attention(q, kk, vv, is_causal=True)
      o = o.transpose(1, 2).reshape(b, t, h * dh)
      x = x + o @ p[q_ + "attn.wo"].reshape(h * dh, d)
      y = self._norm(x, p[q_ + "mlp_norm.scale"])
      x = x + (F.silu(y @ p[q_ + "mlp.w_gate"]) * (y @ p[q_ + "mlp.w_up"])) @ p[q_ + "mlp.w_down"]
    return self._norm(x, p["final_norm.scale"]) @ p["embed"].T

  def loss(self, inputs, targets, weights):
    logits = self.forward(inputs)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                          reduction="none")
    w = weights.reshape(-1)
    return (nll * w).sum() / w.sum().clamp_min(1.0)


def lr_at(step: int, train: dict) -> float:
  """optax.warmup_cosine_decay_schedule(0, lr, warmup, decay_steps=steps, lr * min_lr_ratio)."""
  lr, warm, total = train.get("lr", 3e-3), train.get("warmup_steps", 50), train.get("steps", 1000)
  end = lr * train.get("min_lr_ratio", 0.1)
  if step < warm:
    return lr * step / max(warm, 1)
  frac = min(max(step - warm, 0) / max(total - warm, 1), 1.0)
  return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * frac))


class Trainer:
  """One train step: loss, backward, global-norm clip, AdamW (decay on ndim >= 2 only)."""

  def __init__(self, model: TorchLM, train: dict):
    self.model, self.train, self.step_no = model, train, 0
    decay = [p for p in model.params if p.ndim >= 2]
    no_decay = [p for p in model.params if p.ndim < 2]
    self.opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train.get("weight_decay", 0.1)},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=train.get("lr", 3e-3), betas=(train.get("b1", 0.9), train.get("b2", 0.95)), eps=1e-8,
        foreach=True)

  def step(self, inputs, targets, weights) -> torch.Tensor:
    for g in self.opt.param_groups:
      g["lr"] = lr_at(self.step_no, self.train)
    self.opt.zero_grad(set_to_none=True)
    loss = self.model.loss(inputs, targets, weights)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.params, self.train.get("clip_norm", 1.0),
                                   foreach=True)
    self.opt.step()
    self.step_no += 1
    return loss.detach()


class Session:
  """A model, a trainer and one fixed batch; answers the bench's commands."""

  def __init__(self, cfg: dict, train: dict, batch: dict[str, np.ndarray],
               weights: dict[str, np.ndarray] | None = None, threads: int | None = None):
    torch.set_num_threads(threads or os.cpu_count() or 1)
    self.model = TorchLM(cfg, weights)
    self.trainer = Trainer(self.model, train)
    self.batch = (torch.from_numpy(np.asarray(batch["inputs"], np.int64)),
                  torch.from_numpy(np.asarray(batch["targets"], np.int64)),
                  torch.from_numpy(np.asarray(batch["weights"], np.float32)))

  def init_loss(self) -> float:
    with torch.no_grad():
      return float(self.model.loss(*self.batch))

  def time_steps(self, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      loss = self.trainer.step(*self.batch)
      float(loss)
      times.append(time.perf_counter() - t0)
    return times

  def handle(self, cmd: dict) -> dict:
    if cmd["cmd"] == "loss":
      return {"loss": self.init_loss()}
    if cmd["cmd"] == "time":
      return {"times": self.time_steps(int(cmd["steps"]))}
    if cmd["cmd"] == "threads":
      torch.set_num_threads(int(cmd["n"]))
      return {"threads": torch.get_num_threads()}
    if cmd["cmd"] == "info":
      return {"torch": torch.__version__, "threads": torch.get_num_threads()}
    raise ValueError(f"torch_lm: unknown command {cmd['cmd']!r}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True, help="model config as JSON (jaxtok ModelConfig fields)")
  p.add_argument("--train", default="{}", help="train config as JSON (TrainConfig fields)")
  p.add_argument("--data", required=True,
                 help=".npz with inputs/targets/weights [B, T] (and weights named by parameter "
                      "path, optional: random init otherwise)")
  p.add_argument("--threads", type=int, default=None)
  p.add_argument("--serve", action="store_true", help="answer JSON commands on stdin")
  p.add_argument("--steps", type=int, default=5, help="without --serve: steps to time")
  args = p.parse_args(argv)
  npz = dict(np.load(args.data))
  batch = {k: npz.pop(k) for k in ("inputs", "targets", "weights")}
  session = Session(json.loads(args.model), json.loads(args.train), batch, npz or None,
                    args.threads)
  if not args.serve:
    print(json.dumps({"loss": session.init_loss(), "times": session.time_steps(args.steps)}))
    return 0
  print(json.dumps(session.handle({"cmd": "info"})), flush=True)
  for line in sys.stdin:
    if not line.strip():
      continue
    try:
      out = session.handle(json.loads(line))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises
      out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
