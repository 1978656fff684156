"""Neighboring autoregressive modeling (NAR; He et al., arXiv 2503.10696): the grid orders, mask
and dimension-oriented heads (``order``), the teacher-forced mixed logits and the grid loss
(``loss``), and KV-cached step decoding through ``jaxtok.decode.extend`` (``decode``). The
synthetic field is ``jaxtok.data.fields``, the digits ``jaxtok.data.digits``.
"""
from jaxtok.nar.decode import (cached_grid_logits, forward_passes, generate_grid, nar_generate,
                               width_segments)
from jaxtok.nar.loss import (grid_example, grid_logits, grid_loss_fn, grid_nll, mixed_logits,
                             to_grid_example)
from jaxtok.nar.order import (GridOrder, check_heads, grid_model_config, head_logits,
                              manhattan_order, mix_neighbor_logits, mix_weights, nar_order,
                              nar_schedule, order_mask, raster_order)

__all__ = ["GridOrder", "cached_grid_logits", "check_heads", "forward_passes", "generate_grid",
           "grid_example", "grid_logits", "grid_loss_fn", "grid_model_config", "grid_nll",
           "head_logits", "manhattan_order", "mix_neighbor_logits", "mix_weights",
           "mixed_logits", "nar_generate", "nar_order", "nar_schedule", "order_mask",
           "raster_order", "to_grid_example", "width_segments"]
