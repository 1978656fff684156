"""Experiment and benchmark registries (installed as ``jaxtok_experiments``).

An experiment module defines ``PRESETS`` (``smoke``/``cpu``/``pod`` -> config factory) and
``run(cfg, out_dir) -> list[Claim]``; a benchmark module defines ``main(argv)``. Modules are
named here and imported lazily, so listing them costs nothing.
"""
EXPERIMENTS = {  # the order `jaxtok reproduce` runs them in
    "lm": "jaxtok_experiments.lm",
    "lm-eval": "jaxtok_experiments.lm_eval",
    "markov-tokenization": "jaxtok_experiments.markov_tokenization",
    "lexinvariant": "jaxtok_experiments.lexinvariant",
    "permutation": "jaxtok_experiments.permutation",
    "nar": "jaxtok_experiments.nar",
    "speculative": "jaxtok_experiments.speculative",
    "kvcompress": "jaxtok_experiments.kvcompress",
}

BENCHES = {
    "train": "jaxtok_experiments.bench_train",
    "kernels": "jaxtok_kernels.bench",
    "decode": "jaxtok_experiments.bench_decode",
    "kvcompress": "jaxtok_experiments.bench_kvcompress",
    "speculative": "jaxtok_experiments.bench_speculative",
    "nar": "jaxtok_experiments.nar",
}
