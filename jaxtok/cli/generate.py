"""``jaxtok generate``: text generation from a pretrained checkpoint.

One prompt streams: ``jaxtok.decode``'s driver (``start``, then ``decode_body`` jitted once and
called per token with the state donated; fixed cache capacity and shapes, so the step compiles
once), printing text as it is decoded.
Several prompts run as one right-padded batch through ``jaxtok.decode.generate`` (the on-device
``while_loop``) and print when done.

  jaxtok generate --model smollm2-135m --prompt "The capital of France is"
  jaxtok generate --model smollm2-135m --chat --prompt "Write a haiku about rain" --temperature 0.7
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np

from jaxtok_kernels.tiling import round_up

_BUCKET = 64  # prompt lengths and cache capacities are rounded up to this (fewer compiles)


def plan_capacity(prompt_lens: Sequence[int], max_new_tokens: int, max_len: int,
                  capacity: int | None = None, truncate: bool = False) -> tuple[int, int]:
  """Returns (cache capacity, longest prompt kept); raises if the prompt does not fit."""
  limit = min(capacity or max_len, max_len)
  longest = max(prompt_lens)
  if max_new_tokens >= limit:
    raise ValueError(f"max_new_tokens={max_new_tokens} does not fit the KV-cache capacity {limit}")
  if longest + max_new_tokens > limit:
    if not truncate:
      raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the "
                       f"KV-cache capacity {limit}; shorten the prompt, lower --max-new-tokens, or "
                       "pass --truncate to keep only the prompt's last tokens")
    longest = limit - max_new_tokens
  cap = capacity or min(round_up(longest + max_new_tokens, 256), max_len)
  return cap, longest


@functools.cache
def _stream_fns():
  """(begin, step) jitted once per process; the Model argument keys their compiles by its
  definition (identity), so a loaded model compiles each once per capacity / sampling."""
  import jax

  from jaxtok import decode

  begin = jax.jit(decode.start, static_argnames=("capacity", "max_new_tokens"))
  step = jax.jit(decode.decode_body, static_argnames=("sampling", "eos_id"), donate_argnums=(1,))
  return begin, step


def stream_tokens(model, prompt_ids: Sequence[int], *, max_new_tokens: int,
                  sampling, key, capacity: int, stop_ids: Sequence[int] = ()) -> Iterator[int]:
  """Yields generated token ids one at a time (batch 1), stopping after a stop id."""
  import jax.numpy as jnp

  t = len(prompt_ids)
  if t + max_new_tokens > capacity:
    raise ValueError(f"prompt of {t} tokens + max_new_tokens={max_new_tokens} exceeds the KV-cache "
                     f"capacity {capacity}")
  begin, step = _stream_fns()
  # Padding only depends on (t, capacity), so every call with this capacity shares one compile.
  padded = np.zeros((1, min(round_up(t, _BUCKET), capacity - max_new_tokens)), np.int32)
  padded[0, :t] = prompt_ids
  state = begin(model, jnp.asarray(padded), jnp.array([t], jnp.int32), key, capacity=capacity,
                max_new_tokens=max_new_tokens)
  for i in range(max_new_tokens):
    state = step(model, state, sampling=sampling, eos_id=None)
    token = int(state.tokens_BxN[0, i])
    yield token
    if token in stop_ids:
      return


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxtok generate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="smollm2-135m", help="registered name, .gguf file or HF dir")
  p.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
  p.add_argument("--max-new-tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top-k", type=int, default=0)
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
  p.add_argument("--system", default=None, help="system message for --chat")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--capacity", type=int, default=None, help="KV-cache slots (default: fitted)")
  p.add_argument("--truncate", action="store_true",
                 help="keep the last tokens of a prompt that does not fit instead of failing")
  p.add_argument("--no-stream", action="store_true", help="batch path even for one prompt")
  p.add_argument("--speculate", default=None, metavar="tr|suffix|pld",
                 help="tree speculative decoding with this drafter (one prompt); prints MAT "
                      "and tokens/s")
  p.add_argument("--kv-policy", default=None, metavar="NAME",
                 help="decode under a KV budget kept by this jaxtok.kvcompress policy (h2o, "
                      "tova, streaming_llm, snapkv, ...; one prompt)")
  p.add_argument("--kv-budget", type=int, default=256,
                 help="--kv-policy: slots per kv head (default 256)")
  p.add_argument("--kv-every", type=int, default=16,
                 help="--kv-policy: compact back to the budget every N generated tokens "
                      "(default 16; 1 = the papers' evict-one-per-step)")
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    return _run(args)
  except (ValueError, ModuleNotFoundError, FileNotFoundError) as e:
    print(f"jaxtok generate: error: {e}", file=sys.stderr)
    return 2


def _run(args) -> int:
  import jax
  import jax.numpy as jnp

  from jaxtok import decode
  from jaxtok.models import load

  sampling = decode.Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
  if args.max_new_tokens <= 0:
    raise ValueError(f"--max-new-tokens: expected > 0, got {args.max_new_tokens}")
  comp = _check_modes(args)  # bad --speculate / --kv-* values fail before the model loads
  start = time.time()
  model = load(args.model, dtype=args.dtype)
  tok = model.tokenizer
  if tok is None:
    raise ValueError(f"--model {args.model}: no tokenizer found next to the weights")
  texts = list(args.prompt)
  if args.chat:
    msgs = [[{"role": "system", "content": args.system}] if args.system else [] for _ in texts]
    texts = [tok.apply_chat_template(m + [{"role": "user", "content": t}]) for m, t in
             zip(msgs, texts)]
  ids = [tok.encode(t) for t in texts]
  if min(len(i) for i in ids) == 0:
    raise ValueError("--prompt: an empty prompt has no tokens to condition on")
  cap, keep = plan_capacity([len(i) for i in ids], args.max_new_tokens, model.cfg.max_len,
                            args.capacity, args.truncate)
  ids = [i[-keep:] for i in ids]
  print(f"[loaded {model.defn.source.name} in {time.time() - start:.1f}s; "
        f"{model.cfg.n_layers} layers, "
        f"d={model.cfg.d_model}, {args.dtype}; cache {cap}]", file=sys.stderr)
  key = jax.random.key(args.seed)
  stop = [i for i in (tok.eos_id, tok.tokenizer.token_to_id("<|endoftext|>")) if i is not None]
  if args.speculate is not None:
    return _speculate(args, model, texts, ids, sampling, key)
  if args.kv_policy is not None:
    return _compressed(args, model, texts, ids, sampling, key, comp)
  if len(ids) == 1 and not args.no_stream:
    sys.stdout.write(texts[0])
    sys.stdout.flush()
    out: list[int] = []
    shown = 0
    t0 = time.time()
    for token in stream_tokens(model, ids[0],
                               max_new_tokens=args.max_new_tokens, sampling=sampling, key=key,
                               capacity=cap, stop_ids=stop):
      out.append(token)
      text = tok.decode(out, skip_special_tokens=True)
      if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        shown = len(text)
    dt = time.time() - t0
    print(f"\n[{len(out)} tokens in {dt:.1f}s incl. compile]", file=sys.stderr)
    return 0
  t = max(len(i) for i in ids)
  prompt_BxT = np.zeros((len(ids), round_up(t, _BUCKET)), np.int32)
  for b, i in enumerate(ids):
    prompt_BxT[b, :len(i)] = i
  prompt_BxT = prompt_BxT[:, :cap - args.max_new_tokens]
  gen = decode.generate(model, jnp.asarray(prompt_BxT),
                        jnp.array([len(i) for i in ids], jnp.int32), max_new_tokens=args.max_new_tokens, sampling=sampling, key=key,
                        capacity=cap, eos_id=tok.eos_id)
  for b, (text, row) in enumerate(zip(texts, gen.rows())):
    gen_text = tok.decode(row, skip_special_tokens=True)
    print(f"--- [{b}] ---\n{text}{gen_text}")
  return 0


def _check_modes(args):
  """Validates the mode flags on the host; returns the KV compactor of --kv-policy (or None)."""
  if args.speculate is not None and args.kv_policy is not None:
    raise ValueError("--speculate and --kv-policy: pick one")
  if (args.speculate or args.kv_policy) and len(args.prompt) != 1:
    raise ValueError(f"--{'speculate' if args.speculate else 'kv-policy'}: expected exactly one "
                     f"--prompt, got {len(args.prompt)}")
  if args.speculate is not None:
    from jaxtok.speculative import make_drafter
    make_drafter(args.speculate)
    return None
  if args.kv_policy is None:
    return None
  from jaxtok import kvcompress
  return kvcompress.compactor(args.kv_policy, budget_tokens=args.kv_budget,
                              every=args.kv_every)


def _speculate(args, model, texts, ids, sampling, key) -> int:
  """Same output as greedy (or as plain sampling, in distribution); reports the speed-up's
  ingredients: mean accepted tokens per verify step and the decode rate after compiling."""
  from jaxtok import speculative

  out, gen = speculative.speculate(model, ids[0], args.speculate,
                                   max_new_tokens=args.max_new_tokens, sampling=sampling, key=key,
                                   eos_id=model.tokenizer.eos_id)
  print(texts[0] + model.tokenizer.decode(out, skip_special_tokens=True))
  print(f"[{args.speculate}: {len(out)} tokens, MAT {speculative.mat(gen):.2f}, "
        f"{speculative.tokens_per_s(gen):.1f} tok/s]", file=sys.stderr)
  return 0


def _compressed(args, model, texts, ids, sampling, key, comp) -> int:
  """Decoding (greedy or sampled, stopping at EOS) while the policy keeps every (layer, kv
  head) at --kv-budget slots: the engine's one decode loop with a KV compactor."""
  import jax.numpy as jnp

  from jaxtok import decode

  prompt = jnp.asarray([ids[0]], jnp.int32)
  gen = decode.generate(model, prompt, max_new_tokens=args.max_new_tokens, sampling=sampling,
                        key=key, eos_id=model.tokenizer.eos_id, compactor=comp,
                        capacity=len(ids[0]) + args.max_new_tokens)
  print(texts[0] + model.tokenizer.decode(gen.rows()[0], skip_special_tokens=True))
  print(f"[{args.kv_policy}: budget {args.kv_budget} slots per kv head, compacted every "
        f"{args.kv_every} tokens; cache {comp.capacity(model.cfg.kv_heads)} slots while "
        f"decoding]", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
