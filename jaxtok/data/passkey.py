"""The passkey (needle) retrieval task of EMS (arXiv 2412.08521) and kvpress: filler text with
a 5-digit key at a random depth, then the question in the model's chat template.

Works with any tokenizer that has ``encode``, ``decode``, ``id_to_token``, ``vocab_size`` and
``apply_chat_template`` (a pretrained one, or ``jaxtok.tokenize.bytes.ByteTokenizer``).
"""
from __future__ import annotations

import numpy as np

from jaxtok.config import require

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
         "memorize it. I will quiz you about the important information there.\n\n")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\n\nWhat is the pass key?"
ANSWER_PREFIX = "The pass key is"


def chat_parts(tok) -> tuple[str, str]:
  """The chat template's text before and after a user message's content."""
  text = tok.apply_chat_template([{"role": "user", "content": "\x00"}])
  head, tail = text.split("\x00")
  return head, tail


def boundary_ids(tok) -> tuple[int, ...]:
  """Sentence ends for SentenceKV: tokens with a newline or ending a sentence ('.', '?', '!');
  for code a sentence is a line."""
  out = []
  for i in range(tok.vocab_size):
    s = tok.id_to_token(i)
    if s is not None and ("Ċ" in s or "\n" in s or s.endswith((".", "?", "!"))):
      out.append(i)
  return tuple(out)


def passkey_batch(tok, n_tokens: int, trials: int, rng: np.random.Generator):
  """(context i32[B, n_tokens], question i32[Q], keys): each row hides a 5-digit key at a
  random depth of the filler; every context has exactly n_tokens tokens. The question ends
  with the answer's prefix, so the key is the continuation."""
  require(trials > 0, "trials", "> 0", trials)
  head, tail = chat_parts(tok)
  pre = tok.encode(head + INTRO)
  filler = tok.encode(FILLER * (n_tokens // 4 + 8))
  unit = len(tok.encode(FILLER))
  question = tok.encode(QUESTION) + tok.encode(tail + ANSWER_PREFIX)
  rows, keys = [], []
  for _ in range(trials):
    key = str(rng.integers(10000, 100000))
    needle = tok.encode(NEEDLE.format(key=key))
    room = n_tokens - len(pre) - len(needle)
    require(room > 2 * unit, "context_lengths", f"room for the needle and filler (> "
            f"{len(pre) + len(needle) + 2 * unit} tokens)", n_tokens)
    cut = int(rng.integers(0, room // unit)) * unit  # a sentence boundary of the filler
    rows.append(pre + filler[:cut] + needle + filler[cut:room])
    keys.append(key)
  return np.asarray(rows, np.int32), np.asarray(question, np.int32), keys


def answers(tok, tokens_BxN, keys) -> list[bool]:
  """Whether each row's generated text contains its key."""
  return [k in tok.decode(row) for row, k in zip(np.asarray(tokens_BxN).tolist(), keys)]
