"""Names that files outside kernels/ still import from here (jaxtok/nn/attention.py,
jaxtok/permutation/vector_model.py); they live in tiling.py, numerics.py and dispatch.py. Import
them from there: this module goes once nothing outside kernels/ imports it."""
from jaxtok_kernels.dispatch import backend
from jaxtok_kernels.numerics import MASKED
from jaxtok_kernels.tiling import pad_axis

__all__ = ["MASKED", "backend", "pad_axis"]
