import numpy as np
import pytest

from jaxtok.data import stdlib
from jaxtok.tokenize import corpus_bpe


def test_bpe_stream_decodes_to_the_corpus_and_compresses():
  tokens, n_bytes = corpus_bpe.tokens("val", 512, max_bytes=30_000)
  tok = corpus_bpe.train(512)
  doc = tok.token_to_id(corpus_bpe.DOC)
  assert tokens.max() < 512 and n_bytes / len(tokens) > 2.0  # code compresses > 2 bytes/token
  first_doc = tokens[:int(np.argmax(tokens == doc))]
  expected = stdlib.documents("val", max_bytes=1)[0].decode("utf-8", "replace")
  assert tok.decode(first_doc.tolist()) == expected
  again, _ = corpus_bpe.tokens("val", 512, max_bytes=30_000)  # cached
  np.testing.assert_array_equal(tokens, again)


def test_bpe_vocab_too_small():
  with pytest.raises(ValueError, match="vocab_size"):
    corpus_bpe.train(100)
