"""The benchmark runs (in its quick form) and its numbers hold together:
this is a smoke test of the tool, not a performance assertion."""

import json
import subprocess
import sys

import pytest

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


def test_quick_snapshot_benchmark_runs_without_loss(tmp_path):
    out = tmp_path / "snapshot.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.snapshot", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=scaled(180))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ratio B/A" in result.stdout
    report = json.loads(out.read_text())
    assert report["error"] is None
    opts = report["options"]

    # Reconnect cost: every snapshot whole, about 900 bytes a document.
    small, big = report["reconnect"]
    assert (small["docs"], big["docs"]) == (2000, opts["docs"])
    for row in (small, big):
        assert row["completed"] == opts["repeats"], row
        assert row["wrong"] == 0 and row["failures"] == {}, row
        assert row["to_end_ms"]["max"] >= row["to_end_ms"]["p50"] > 0
        assert 800 < row["bytes"]["p50"] / row["docs"] < 1000, row
        assert row["server_s"]["n"] == opts["repeats"], row

    # Both phases: every live client got every write once, in order.
    assert report["dups"] == 0 and report["out_of_order"] == 0
    assert report["dropped_conns"] == 0 and report["connected"] == opts["clients"]
    phases = report["phases"]
    for phase in phases.values():
        assert phase["writes"] == round(opts["rate"] * opts["duration"])
        assert phase["lost"] == 0, phase
        expected = opts["clients"] * phase["writes"]
        assert phase["received"] == phase["expected"] == expected, phase
        assert phase["msgs_per_s"] > 0 and phase["cpu_s"] > 0, phase
        assert phase["lat_max_ms"] >= phase["lat_p99_ms"] >= phase["lat_p50_ms"] > 0
        assert phase["ack_p99_ms"] > 0 and phase["lag"]["n"] > 0, phase
        assert 0 < phase["db_stream_n"] <= phase["writes"], phase
    a, b = phases["A"], phases["B"]
    assert report["ratios"]["p99"] == pytest.approx(b["lat_p99_ms"] / a["lat_p99_ms"])

    # Phase B's snapshots were whole, the same size as the reconnect's.
    snaps = report["snapshots"]
    assert snaps["completed"] >= 1 and snaps["wrong"] == 0, snaps
    assert snaps["failures"] == {}, snaps
    assert snaps["bytes"]["p50"] == pytest.approx(big["bytes"]["p50"], rel=0.01)
    assert snaps["to_end_ms"]["p99"] >= snaps["to_end_ms"]["p50"] > 0
