"""KV-compression kernels: jnp references, Pallas TPU and GPU kernels, dispatchers."""
