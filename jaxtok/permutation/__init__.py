"""Inverse permutation learning (Alur, Hays, Raghavan, Shah, arXiv 2509.24125): the task and its
token scores (``task``), the exact causal bounds and the Lemma-1 check (``bounds``), and the
paper's disentangled attention-only vector model with its hand-built inverter (``vector_model``).
"""
from jaxtok.permutation.bounds import (causal_mse_lower_bound, causal_token_bounds,
                                       expected_unrecoverable, lemma1_violation,
                                       perturb_rows_after, unrecoverable,
                                       unrecoverable_distribution)
from jaxtok.permutation.task import (PermutationSource, Variant, bayes_inverse, check_task,
                                     mask_for, read_rows, sample_perms, seq_len, token_batch,
                                     token_loss, token_scores, token_vocab, vector_batch)
from jaxtok.permutation.vector_model import (VectorConfig, VectorModel, hand_construction,
                                             vector_factory, vector_forward, vector_loss,
                                             vector_predict, widths)

__all__ = ["PermutationSource", "Variant", "VectorConfig", "VectorModel", "bayes_inverse",
           "causal_mse_lower_bound", "causal_token_bounds", "check_task",
           "expected_unrecoverable", "hand_construction", "lemma1_violation", "mask_for",
           "perturb_rows_after", "read_rows", "sample_perms", "seq_len", "token_batch",
           "token_loss", "token_scores", "token_vocab", "unrecoverable",
           "unrecoverable_distribution", "vector_batch", "vector_factory", "vector_forward",
           "vector_loss", "vector_predict", "widths"]
