"""The benchmark runs (in its quick form) and its numbers hold together:
this is a smoke test of the tool, not a performance assertion."""

import json
import subprocess
import sys

from .helpers import ROOT, scaled


def test_quick_benchmark_runs_all_three_servers_without_loss(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=scaled(300))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ratios" in result.stdout
    report = json.loads(out.read_text())
    servers = {r["server"] for r in report["results"]}
    assert servers == {"wsproxy", "tornado", "websockets"}
    for run in report["results"]:
        assert run["error"] is None, run["error"]
        assert run["lost"] == 0 and run["dups"] == 0, run
        assert run["out_of_order"] == 0 and run["dropped_conns"] == 0, run
        assert run["received"] == run["expected"] > 0
        assert run["msgs_per_s"] > 0 and run["lat_p99_ms"] >= run["lat_p50_ms"]
