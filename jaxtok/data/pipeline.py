"""grain pipelines: shuffle, per-process shard, next-token batches, checkpointable iterators."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import grain
import numpy as np

from jaxtok.data.sources import Source


_checkify_ids = os.environ.get("JAXTOK_CHECKIFY_IDS", "") == "1"


@contextlib.contextmanager
def checkify_ids(enabled: bool = True) -> Iterator[None]:
  """Debug mode: ``check_token_range`` on traced ids stages a ``jax.experimental.checkify``
  check, so ``jax.jit(checkify.checkify(fn))`` reports out-of-range ids found inside jit.
  It acts when ``fn`` is traced, so trace a fresh function inside the block (or set
  ``JAXTOK_CHECKIFY_IDS=1`` before the process starts). Outside it, traced ids are not checked
  (a staged check would need every caller to be checkified)."""
  global _checkify_ids
  before, _checkify_ids = _checkify_ids, enabled
  try:
    yield
  finally:
    _checkify_ids = before


def check_token_range(tokens, vocab_size: int, what: str = "tokens") -> None:
  """Rejects ids outside [0, vocab_size) before any step sees them.

  Host-side on purpose: inside ``forward`` an id >= vocab gathers NaN (every logit of the row
  becomes NaN through attention) and a negative id wraps to the last embedding rows, both
  silently. Numpy and concrete jax arrays are checked here and raise ``ValueError``; traced
  ids are checked only in the ``checkify_ids`` debug mode."""
  import jax
  if isinstance(tokens, jax.core.Tracer):
    if _checkify_ids:
      import jax.numpy as jnp
      from jax.experimental import checkify
      checkify.check(jnp.all((tokens >= 0) & (tokens < vocab_size)),
                     f"{what}: token ids must be in [0, model.vocab_size={vocab_size}), found "
                     "range [{lo}, {hi}]", lo=jnp.min(tokens), hi=jnp.max(tokens))
    return
  tokens = np.asarray(tokens)
  if tokens.size == 0:
    return
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"{what}: token ids must be integers, got dtype {tokens.dtype}")
  lo, hi = int(np.min(tokens)), int(np.max(tokens))
  if lo < 0 or hi >= vocab_size:
    bad = np.argwhere((tokens < 0) | (tokens >= vocab_size))[0].tolist()
    raise ValueError(f"{what}: token ids must be in [0, model.vocab_size={vocab_size}), found "
                     f"range [{lo}, {hi}] (first bad id {int(tokens[tuple(bad)])} at index "
                     f"{tuple(bad)})")


def check_batch_ids(batch: dict[str, np.ndarray], vocab_size: int, what: str = "batch", *,
                    targets: bool = True) -> None:
  """``check_token_range`` on a batch's ``inputs`` and (where weighted) ``targets``; other keys
  (custom losses' ids of other vocabularies) are the loss's business."""
  if "inputs" in batch and np.issubdtype(np.asarray(batch["inputs"]).dtype, np.integer):
    check_token_range(batch["inputs"], vocab_size, f"{what} inputs")
  if targets and "targets" in batch:
    t = np.asarray(batch["targets"])
    if "weights" in batch:  # unweighted positions may hold any placeholder id
      t = t[np.asarray(batch["weights"]) != 0]
    check_token_range(t, vocab_size, f"{what} targets")


def to_lm_example(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A packed window ``tokens`` [T+1] -> next-token ``inputs``, ``targets``, ``weights`` [T]."""
  tokens = example["tokens"]
  weights = example.get("weights", np.ones(len(tokens) - 1, np.float32))
  return {"inputs": tokens[:-1], "targets": tokens[1:], "weights": weights.astype(np.float32)}


def lm_batches(source: Source, batch_size: int, *, seed: int, shuffle: bool = True,
               repeat: bool = True, process_index: int = 0, process_count: int = 1,
               example_fn=to_lm_example) -> grain.MapDataset:
  """Seeded, indexable dataset of batches for one process (its slice of the data);
  ``example_fn`` turns one source example into one batch row."""
  if batch_size <= 0:
    raise ValueError(f"batch_size: expected > 0, got {batch_size}")
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must divide by the process count {process_count}")
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat()
  ds = ds[process_index::process_count].map(example_fn)
  return ds.batch(batch_size // process_count, drop_remainder=True)


def fixed_batches(source: Source, batch_size: int, n_batches: int,
                  example_fn=to_lm_example) -> list[dict[str, np.ndarray]]:
  """The first ``n_batches`` unshuffled batches (a stable validation set)."""
  ds = lm_batches(source, batch_size, seed=0, shuffle=False, repeat=False, example_fn=example_fn)
  n = min(n_batches, len(ds))
  if n == 0:
    raise ValueError(f"validation source has {len(source)} examples, fewer than one batch of "
                     f"{batch_size}")
  return [ds[i] for i in range(n)]
