"""jaxtok: token-level language-model research in JAX/Flax. No JAX call happens at import."""
__version__ = "0.1.0"
