"""Tokenization of k-th order Markov sources (Rajaraman, Jiao, Ramchandran, "Toward a Theory of
Tokenization in LLMs", arXiv 2404.08335): the exact source statistics and bounds (``source``)
and the tokenizers the paper compares, which live in ``jaxtok.tokenize`` (BPE over symbols, LZW,
the unigram model over tokens, vocabulary encoders, byte-level corpus BPE) re-exported here.
"""
from jaxtok.markov.source import (MarkovSource, binary_entropy, block_entropy,
                                  block_unigram_loss, empirical_block_entropy, entropy_rate,
                                  lzw_bound, min_transition_probability, random_source, sample,
                                  sample_switching, stationary_contexts, switching_source,
                                  switching_stats, symbol_marginal, unigram_loss)
from jaxtok.tokenize import corpus_bpe
from jaxtok.tokenize.lzw import lzw_train
from jaxtok.tokenize.symbol_bpe import BPE, bpe_train
from jaxtok.tokenize.unigram import (chars_per_token, per_char_cross_entropy, token_unigram_loss,
                                     unigram_fit)
from jaxtok.tokenize.vocab_encode import (Vocabulary, as_symbols, block_vocabulary,
                                          check_training_data, greedy_encode, min_count_encode,
                                          training_alphabet)

__all__ = ["BPE", "MarkovSource", "Vocabulary", "as_symbols", "binary_entropy", "block_entropy",
           "block_unigram_loss", "block_vocabulary", "bpe_train", "chars_per_token",
           "check_training_data", "corpus_bpe", "empirical_block_entropy", "entropy_rate",
           "greedy_encode", "lzw_bound", "lzw_train", "min_count_encode",
           "min_transition_probability", "per_char_cross_entropy", "random_source", "sample",
           "sample_switching", "stationary_contexts", "switching_source", "switching_stats",
           "symbol_marginal", "token_unigram_loss", "training_alphabet", "unigram_fit",
           "unigram_loss"]
