"""The kvcompress experiment end to end at smoke size (a tiny random model: claims are computed
and reported, their values measure nothing)."""
import dataclasses
import json

from jaxtok_experiments import kvcompress as exp


def test_smoke_experiment_writes_claims_and_tables(tmp_path):
  cfg = dataclasses.replace(exp.PRESETS["smoke"](), policies=("streaming_llm", "ems"))
  claims = exp.run(cfg, tmp_path)
  ids = {c.id for c in claims}
  assert {"full-cache-calibrated", "ems-needle-2pct", "memory-freed"} <= ids
  summary = json.loads((tmp_path / "summary.json").read_text())
  table = summary["passkey"]["table"]
  assert set(table) == {"full@0.25", "streaming_llm@0.25", "ems@0.25"}
  kept = table["ems@0.25"]["aware"]["kept_fraction"]
  assert 0 < kept < 0.3  # the budget is 25% of the context (+ the question when query-aware)
  assert summary["ppl"]["table"]["ems@0.5"]["dppl"] is not None
  assert (tmp_path / "kvcompress.png").exists()
