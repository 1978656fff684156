"""``jaxtok bench nar`` runs end to end on a tiny grid and writes one JSON row per order x batch."""
import json

from jaxtok_experiments import nar


def test_bench_nar_smoke(tmp_path, capsys):
  out = tmp_path / "nar.json"
  assert nar.main(["--size", "4", "--batch", "1", "--repeats", "1", "--json", str(out)]) == 0
  rows = json.loads(out.read_text())
  assert rows and all(r["batch"] == 1 for r in rows)
  assert "|" in capsys.readouterr().out
