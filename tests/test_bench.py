"""The benchmark runs (in its quick form) and its numbers hold together:
this is a smoke test of the tool, not a performance assertion."""

import json
import random
import subprocess
import sys
import zlib

import pytest

from bench import idcost, mix, wire

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


# The deflate clients against both of wsproxy's compression stages, the
# uncompressed reference and the per-connection baseline.
COMPRESSION_SERVERS = ("wsproxy-off", "wsproxy-independent", "wsproxy-shared",
                       "websockets-deflate")


def test_quick_compression_benchmark_counts_wire_bytes_without_loss(tmp_path):
    out = tmp_path / "compression.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--deflate", "--mix", "demo",
         "--servers", ",".join(COMPRESSION_SERVERS), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=scaled(300))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "compression (clients offer permessage-deflate: yes" in result.stdout
    report = json.loads(out.read_text())
    runs = report["results"]
    assert {r["server"] for r in runs} == set(COMPRESSION_SERVERS)
    for run in runs:
        assert run["error"] is None, run["error"]
        assert run["deflate"] and run["mix"] == "demo"
        assert run["lost"] == 0 and run["dups"] == 0, run
        assert run["out_of_order"] == 0 and run["dropped_conns"] == 0, run
        assert run["received"] == run["expected"] > 0
        # Every delivered change counted, warm-up too, and its bytes.
        assert run["changes"] >= run["received"], run
        assert run["wire_bytes"] > 0 and run["payload_bytes"] > 0, run
        assert run["wire_bytes_per_event"] > 0, run
        assert run["wire_vs_off"] > 0 and run["cpu_per_msg_vs_off"] > 0, run
        if run["server"] == "wsproxy-off":
            assert run["wire_vs_off"] == 1.0
            # Declined: what the socket read is the messages and frame headers.
            assert 0 < run["wire_bytes"] - run["payload_bytes"] <= 14 * run["changes"]
        else:
            # Compressed frames arrived and were inflated into whole messages.
            assert run["wire_bytes"] < run["payload_bytes"], run


def test_change_seq_t_takes_each_events_own_seq():
    # An update's looked-up document may hold a later write: updatedFields
    # (after it) is the event's own.
    update = ('{"event": {"fullDocument": {"seq": 9, "t": 2.5}, "updateDescription": '
              '{"updatedFields": {"revision": 1, "seq": 5, "t": 1.5}}}}')
    assert wire.change_seq_t(update) == (5, 1.5)
    assert wire.change_seq_t(update.encode()) == (5, 1.5)
    key = mix.delete_key(4242, b"\x01" * 5)
    delete = ('{"type": "change", "id": "x", "event": {"operationType": "delete", '
              '"clusterTime": {"$timestamp": {"t": 1, "i": 2}}, '
              '"wallTime": {"$date": "2026-11-28T02:40:51.348Z"}, '
              '"ns": {"db": "bench", "coll": "events"}, '
              '"documentKey": {"_id": {"$oid": "%s"}}}}' % key)
    seq, t = wire.change_seq_t(delete.encode())
    assert seq == 4242 and t == pytest.approx(1795833651.348)
    assert wire.change_seq_t(b'{"type": "hello"}') is None


def test_demo_mix_plan_deletes_only_live_documents():
    ops = mix.plan(2000, random.Random(1))
    kinds = [kind for kind, _ in ops]
    assert all(kinds.count(k) for k in (mix.INSERT, mix.UPDATE, mix.REPLACE,
                                        mix.DELETE))
    live = set()
    for seq, (kind, target) in enumerate(ops):
        if kind == mix.INSERT:
            assert target == seq
            live.add(seq)
        else:
            assert target in live
            if kind == mix.DELETE:
                live.remove(target)


def test_idcost_stage_2_frames_are_wsproxys_and_inflate_in_order():
    # bench.idcost measures stage 2 with wsproxy's own SharedContext: its
    # frames must read back, in order, through one decompressor.
    texts = ['{"type": "change", "id": "", "event": {"operationType": '
             '"insert", "n": %d}}' % n for n in range(150)]
    inflater = zlib.decompressobj(-idcost.WINDOW_BITS)
    for text, frame in zip(texts, idcost.shared_frames(texts)):
        assert frame[0] & 0x40 and frame[1] < 126  # compressed, short header
        body = frame[2:] + b"\x00\x00\xff\xff"
        assert inflater.decompress(body).decode() == text


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
