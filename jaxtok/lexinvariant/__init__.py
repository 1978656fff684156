"""Lexinvariant language models (Huang et al., arXiv 2305.16349): per-sequence random embedding
tables (``tables``), the (semi-)lexinvariant loss for the one train step (``loss``), the exact
Bayes reference on a Markov source (``bayes``), the symbol tasks (``tasks``) and the linear
deciphering probe (``probe``).
"""
from jaxtok.lexinvariant.bayes import (BAYES_MAX_VOCAB, all_permutations,
                                       bayes_lexinvariant_markov, brute_force_nll,
                                       known_cipher_nll, map_accuracy, substitution_cipher)
from jaxtok.lexinvariant.loss import (Indexed, check_config, forward_with_table,
                                      lexinvariant_loss, model_config, sequence_logits,
                                      to_indexed_lm_example)
from jaxtok.lexinvariant.probe import probe_accuracy, probe_features, ridge_probe
from jaxtok.lexinvariant.tables import (chunked_tied_cross_entropy, embed, lean_embed,
                                        sample_row, sample_table, sequence_keys,
                                        sequence_tables, tied_logits)
from jaxtok.lexinvariant.tasks import (KeyValueLookupSource, answer_accuracy, lookup_accuracy,
                                       symbol_split)

__all__ = ["BAYES_MAX_VOCAB", "Indexed", "KeyValueLookupSource", "all_permutations",
           "answer_accuracy", "bayes_lexinvariant_markov", "brute_force_nll", "check_config",
           "chunked_tied_cross_entropy", "embed", "forward_with_table", "known_cipher_nll",
           "lean_embed", "lexinvariant_loss", "lookup_accuracy", "map_accuracy", "model_config",
           "probe_accuracy", "probe_features", "ridge_probe", "sample_row", "sample_table",
           "sequence_keys", "sequence_logits", "sequence_tables", "substitution_cipher",
           "symbol_split", "tied_logits", "to_indexed_lm_example"]
