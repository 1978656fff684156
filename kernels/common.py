"""Names that files outside kernels/ still import from here; they now live in tiling.py,
numerics.py and dispatch.py (import them from there; this module goes once nothing outside
kernels/ imports it)."""
from jaxtok_kernels.dispatch import backend, compile_for
from jaxtok_kernels.numerics import MASKED
from jaxtok_kernels.tiling import pad_axis, round_up

__all__ = ["MASKED", "backend", "compile_for", "pad_axis", "round_up"]
