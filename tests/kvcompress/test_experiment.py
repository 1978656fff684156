"""The kvcompress experiment end to end at smoke size (a tiny random model: claims are computed
and reported, their values measure nothing)."""
import dataclasses
import json

from jaxtok_experiments import kvcompress as exp
from jaxtok_experiments import kvpress_side


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


def _side_summaries(kv_acc):
  cfg = dataclasses.replace(exp.PRESETS["cpu"](), policies=("snapkv", "ems"), keep_ratios=(0.1,),
                            ppl_ratios=(0.25,), trials=6)
  row = lambda a: {"agnostic": {"accuracy": 0.0}, "aware": {"accuracy": a}}
  pk = {"context": 1024, "table": {"full@0.1": row(5 / 6), "snapkv@0.1": row(5 / 6)},
        "kvpress": {"full@full": row(5 / 6), "snapkv@0.1": row(kv_acc)}}
  ppl = {"full_ppl": 2.0, "table": {"snapkv@0.25": {"dppl": 0.14}},
         "kvpress": {"full_ppl": 2.0, "table": {"snapkv@0.25": {"dppl": 0.15}}}}
  return cfg, pk, ppl


def test_kvpress_side_by_side_table_and_claims():
  """Only the policies kvpress has are compared; the claims can fail (no torch needed: the
  kvpress numbers here are synthetic)."""
  cfg, pk, ppl = _side_summaries(kv_acc=4 / 6)
  text = kvpress_side.side_by_side(cfg, pk, ppl)
  assert "| snapkv | 0.1 | 0.00 | 0.00 | 0.83 | 0.67 | 0.25 | +0.140 | +0.150 |" in text
  assert "ems" not in text
  got = {c.id: c.passed for c in kvpress_side.claims(cfg, pk, ppl)}
  assert got == {"passkey-matches-kvpress": True, "dppl-matches-kvpress": True}
  cfg, pk, ppl = _side_summaries(kv_acc=2 / 6)  # two trials apart: a real disagreement
  assert not {c.id: c.passed for c in kvpress_side.claims(cfg, pk, ppl)}["passkey-matches-kvpress"]
