"""`jaxtok bench kernels` plumbing on CPU: the correctness rows pass, and the accelerator table
(run here through the interpreter on a tiny case) has consistent columns. No timing asserted."""
import json

from jaxtok_kernels import bench


def test_cpu_bench_checks_kernels_against_reference(tmp_path, capsys):
  out = tmp_path / "kernels.json"
  assert bench.main(["--out", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["backend"] == "cpu"
  assert {r["case"].split(" (")[0] for r in report["rows"]} == {"tpu", "gpu"}
  assert all(r["ok"] and r["max_err"] < 1e-5 for r in report["rows"])
  assert "only correctness" in capsys.readouterr().out


def test_accelerator_rows_on_a_tiny_case():
  # ("label", B, T, H, K, S, Dh, live fraction): 20 of 40 slots live, T=3 causal block.
  rows = bench._accelerator_rows(1, "float32", cases=[("tiny", 2, 3, 4, 2, 40, 16, 0.5)])
  (row,) = rows
  assert row["ok"] and row["case"] == "tiny B2 T3 H4/K2 S40 Dh16"
  assert row["kernel_ms"] > 0 and row["reference_ms"] > 0
  # Minimum traffic, 4-byte floats: the 20 live slots' k and v (B=2, K=2, Dh=16), q and the
  # output (B=2, T=3, H=4), the block's k and v (B=2, T=3, K=2).
  moved = (2 * 2 * 20 * 2 * 16 + 2 * 2 * 3 * 4 * 16 + 2 * 2 * 3 * 2 * 16) * 4
  assert row["mbytes"] == round(moved / 1e6, 3)
