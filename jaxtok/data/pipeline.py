"""grain pipelines: shuffle, per-process shard, next-token batches, checkpointable iterators."""
from __future__ import annotations

import grain
import numpy as np

from jaxtok.data.sources import Source


def check_token_range(tokens: np.ndarray, vocab_size: int, what: str = "tokens") -> None:
  """Rejects ids outside [0, vocab_size) before any training step sees them."""
  lo, hi = int(np.min(tokens)), int(np.max(tokens))
  if lo < 0 or hi >= vocab_size:
    raise ValueError(f"{what}: token ids must be in [0, model.vocab_size={vocab_size}), found "
                     f"range [{lo}, {hi}]")


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
