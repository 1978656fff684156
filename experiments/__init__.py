"""Experiment and benchmark registries (installed as ``jaxtok_experiments``).

An experiment module defines ``PRESETS`` (``smoke``/``cpu``/``pod`` -> config factory) and
``run(cfg, out_dir) -> list[Claim]``; a benchmark module defines ``main(argv)``. Modules are
named here and imported lazily, so listing them costs nothing.
"""
EXPERIMENTS = {
    "lexinvariant": "jaxtok_experiments.lexinvariant",
    "lm": "jaxtok_experiments.lm",
    "lm-eval": "jaxtok_experiments.lm_eval",
    "nar": "jaxtok_experiments.nar",
    "markov-tokenization": "jaxtok_experiments.markov_tokenization",
    "kvcompress": "jaxtok_experiments.kvcompress",
    "permutation": "jaxtok_experiments.permutation",
    "speculative": "jaxtok_experiments.speculative",
}

BENCHES = {
    "train": "jaxtok_experiments.bench_train",
    "kernels": "jaxtok_kernels.bench",
    "decode": "jaxtok_experiments.bench_decode",
    "kvcompress": "jaxtok_experiments.bench_kvcompress",
    "speculative": "jaxtok_experiments.bench_speculative",
}
