"""KV-cache compression: policies (scores or keep/merge plans per (layer, kv head)), budgets, plan application, PIE re-rotation."""
