"""The benchmark runs (smaller than even its --quick form: one client
count, 1 s phases, two client processes) and its numbers hold together:
this is a smoke test of the tool, not a performance assertion."""

import json
import random
import subprocess
import sys
import zlib

import pytest

from bench import idcost, mix, wire

from .helpers import ROOT, scaled

# The smoke run: every server and code path of --quick (clients 1,10, 2 s),
# at one client count and for 1 s; the numbers are not what is tested.
SMOKE = ["--clients", "10", "--duration", "1", "--warmup", "0.3", "--procs", "2"]


@pytest.mark.bench
def test_quick_benchmark_runs_all_three_servers_without_loss(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", *SMOKE, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(300),
    )
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


@pytest.mark.bench
def test_tenant_benchmark_delivers_each_event_to_its_tenant_alone(tmp_path):
    out = tmp_path / "tenants.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            *SMOKE,
            "--tenants",
            "--servers",
            "wsproxy",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(300),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "every event is for exactly one client" in result.stdout
    [run] = json.loads(out.read_text())["results"]
    assert run["error"] is None and run["tenants"], run
    # Each write once, to one client: another tenant's event would count
    # as received (lost < 0), a missing one as lost.
    assert run["received"] == run["expected"] == run["writes"] > 0, run
    assert run["lost"] == 0 and run["dups"] == 0, run
    assert run["incomplete_conns"] == 0 and run["dropped_conns"] == 0, run


def test_a_tenant_client_knows_its_last_seq():
    # Tenant k of 4 gets seqs k, k+4, ...; seqs below first_seq are warm-up.
    assert wire.tenant_last_seq(1, 4, 10, 20) == 17
    assert wire.tenant_last_seq(0, 4, 10, 20) == 20
    assert wire.tenant_last_seq(3, 4, 10, 11) == 11
    assert wire.tenant_last_seq(3, 4, 10, 10) == -1
    assert wire.tenant_last_seq(0, 1, 0, 5) == 5
    assert wire.bench_document(6, 0.0, tenants=4)["tenant"] == "t2"
    assert "tenant" not in wire.bench_document(6, 0.0)


# The deflate clients against both of wsproxy's compression stages, the
# uncompressed reference and the per-connection baseline.
COMPRESSION_SERVERS = (
    "wsproxy-off",
    "wsproxy-independent",
    "wsproxy-shared",
    "websockets-deflate",
)


@pytest.mark.bench
def test_quick_compression_benchmark_counts_wire_bytes_without_loss(tmp_path):
    out = tmp_path / "compression.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            *SMOKE,
            "--deflate",
            "--mix",
            "demo",
            "--servers",
            ",".join(COMPRESSION_SERVERS),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(300),
    )
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
    update = (
        '{"event": {"fullDocument": {"seq": 9, "t": 2.5}, "updateDescription": '
        '{"updatedFields": {"revision": 1, "seq": 5, "t": 1.5}}}}'
    )
    assert wire.change_seq_t(update) == (5, 1.5)
    assert wire.change_seq_t(update.encode()) == (5, 1.5)
    key = mix.delete_key(4242, b"\x01" * 5)
    delete = (
        '{"type": "change", "id": "x", "event": {"operationType": "delete", '
        '"clusterTime": {"$timestamp": {"t": 1, "i": 2}}, '
        '"wallTime": {"$date": "2026-11-28T02:40:51.348Z"}, '
        '"ns": {"db": "bench", "coll": "events"}, '
        '"documentKey": {"_id": {"$oid": "' + str(key) + '"}}}}'
    )
    seq, t = wire.change_seq_t(delete.encode())
    assert seq == 4242 and t == pytest.approx(1795833651.348)
    assert wire.change_seq_t(b'{"type": "hello"}') is None


def test_demo_mix_plan_deletes_only_live_documents():
    ops = mix.plan(2000, random.Random(1))
    kinds = [kind for kind, _ in ops]
    assert all(
        kinds.count(k) for k in (mix.INSERT, mix.UPDATE, mix.REPLACE, mix.DELETE)
    )
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
    texts = [
        '{"type": "change", "id": "", "event": {"operationType": '
        f'"insert", "n": {n}}}}}'
        for n in range(150)
    ]
    inflater = zlib.decompressobj(-idcost.WINDOW_BITS)
    for text, frame in zip(texts, idcost.shared_frames(texts), strict=True):
        assert frame[0] & 0x40 and frame[1] < 126  # compressed, short header
        body = frame[2:] + b"\x00\x00\xff\xff"
        assert inflater.decompress(body).decode() == text


@pytest.mark.bench
def test_quick_snapshot_benchmark_runs_without_loss(tmp_path):
    out = tmp_path / "snapshot.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.snapshot",
            "--docs",
            "2500",
            "--clients",
            "4",
            "--snapshotters",
            "2",
            "--duration",
            "3",
            "--warmup",
            "0.5",
            "--ramp",
            "0.5",
            "--repeats",
            "2",
            "--procs",
            "2",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(180),
    )
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


@pytest.mark.bench
def test_burst_mass_disconnect_and_sigterm_report_the_issues_figures(tmp_path):
    # Small and short: a burst as the measured phase, then the bystander's
    # mass-disconnect step, then SIGTERM with a fresh set of clients.
    out = tmp_path / "burst.json"
    clients, burst = 10, 500
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--clients",
            str(clients),
            "--servers",
            "wsproxy,websockets",
            "--burst",
            str(burst),
            "--warmup",
            "0.3",
            "--procs",
            "2",
            "--mass-disconnect",
            "--sigterm",
            "--stall-before",
            "1",
            "--stall-window",
            "1.5",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(300),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "mass disconnect and SIGTERM" in result.stdout
    assert "wsproxy beside the asyncio websockets baseline" in result.stdout
    runs = {r["server"]: r for r in json.loads(out.read_text())["results"]}
    assert set(runs) == {"wsproxy", "websockets"}
    for run in runs.values():
        assert run["error"] is None, run["error"]
        # The burst: every document to every client, once.
        assert run["burst"] == burst and run["writes"] == burst, run
        assert run["received"] == run["expected"] == clients * burst, run
        assert run["lost"] == 0 and run["dups"] == 0, run
        assert run["dropped_conns"] == 0, run
        assert run["offered_msgs_per_s"] is None and run["msgs_per_s"] > 0
        assert run["cpu_s_per_100k"] == pytest.approx(
            run["cpu_s"] / run["received"] * 1e5
        )
        assert run["threads_connected"] >= run["threads_idle"] > 0, run
        # The bystander saw events before and after the kill, lost none.
        assert run["disconnect_killed"] == clients, run
        assert run["bystander_events_before"] > 0, run
        assert run["bystander_events_after"] > 0, run
        assert run["bystander_lost"] == 0 and run["bystander_dups"] == 0, run
        assert isinstance(run["stall_ms"], float), run
        assert run["bystander_max_after_ms"] - run[
            "bystander_p50_before_ms"
        ] == pytest.approx(run["stall_ms"])
        # SIGTERM with clients connected ended the server without SIGKILL.
        assert run["sigterm_clients"] == clients, run
        assert run["sigterm_stop"] == "terminated", run
        assert 0 <= run["sigterm_s"] < 15, run
    ws, base = runs["wsproxy"], runs["websockets"]
    # One handler thread per connection (a few reused idle pool threads
    # make it read low at this M); asyncio holds none.
    assert 0.5 <= ws["threads_per_conn"] <= 1.5, ws
    assert base["threads_per_conn"] < 0.5, base
    # Only wsproxy counts its clients (/readyz): they were all gone.
    assert ws["disconnect_gone_s"] >= 0 and base["disconnect_gone_s"] is None
    assert base["cpu_per_msg_vs_asyncio"] == base["p99_vs_asyncio"] == 1.0
    assert ws["cpu_per_msg_vs_asyncio"] == pytest.approx(
        ws["cpu_us_per_msg"] / base["cpu_us_per_msg"]
    )


def test_disconnect_summary_splits_the_bystanders_events_at_the_kill():
    from bench.report import disconnect_summary

    # Seqs 100..105 sent a second apart; the kill at t=102.5.
    raw = {
        "t_kill": 102.5,
        "sent_at": [100.0 + i for i in range(6)],
        "seq_base": 100,
        "seqs": [100, 101, 102, 103, 104, 105],
        "lat_ms": [4.0, 6.0, 900.0, 350.0, 5.0, 5.0],
        "writes": 7,
        "dups": 0,
        "closed": 0,
        "killed": 1000,
        "gone_s": 0.4,
        "cpu_s": 0.2,
    }
    s = disconnect_summary(raw)
    # Seq 102 was sent before the kill but received at 102.9: after it.
    assert s["bystander_events_before"] == 2 and s["bystander_events_after"] == 4
    assert s["bystander_p50_before_ms"] == 4.0
    assert s["bystander_max_after_ms"] == 900.0 and s["stall_ms"] == 896.0
    assert s["bystander_lost"] == 1 and s["disconnect_gone_s"] == 0.4
    assert disconnect_summary(None) == {}


def test_the_send_floor_is_measured():
    from bench.sendfloor import measure

    us = measure(clients=20, events=5, size=100)
    assert 0 < us < 10_000


@pytest.mark.bench
def test_the_arena_benchmark_reports_both_configs():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.arenas",
            "--clients",
            "2",
            "--at-once",
            "2",
            "--docs",
            "50",
            "--rounds",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(180),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [
        line
        for line in done.stdout.splitlines()
        if line.startswith("| glibc default")
        or line.startswith("| wsproxy.gunicorn (2 arenas)")
    ]
    assert len(rows) == 2, done.stdout
