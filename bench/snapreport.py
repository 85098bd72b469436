"""Statistics, the table and JSON of ``python -m bench.snapshot``."""

import json
import re

from .report import CAVEAT, percentile

# wsproxy.snapshot's log line at the end of each snapshot it sent.
_SENT = re.compile(
    r"snapshot of (\S+) sent \((\d+) documents, "
    r"(\d+) changes merged, ([0-9.]+)s\)"
)


def server_snapshot_lines(path):
    """``[ns, documents, changes merged, seconds]`` of every snapshot the
    server's log says it sent, in order (seconds: read, merge and send)."""
    try:
        with open(path, errors="replace") as f:
            return [
                [m[1], int(m[2]), int(m[3]), float(m[4])]
                for m in _SENT.finditer(f.read())
            ]
    except OSError:
        return []


def _dist(values, scale=1.0):
    values = sorted(v * scale for v in values)
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": values[-1] if values else None,
    }


def _snapshots(result, docs):
    """Completed snapshots of a snapclient RESULT, judged against ``docs``."""
    records = result.get("records") or []
    return {
        "completed": len(records),
        "to_end_ms": _dist(r[0] for r in records),
        "bytes": _dist(r[1] for r in records),
        # A full snapshot reports every document and complete: true.
        "wrong": sum(1 for r in records if r[2] != docs or r[3] is not True),
        "failures": result.get("failures", {}),
        "abandoned": result.get("abandoned", 0),
        "client_cpu_s": result.get("client_cpu_s"),
    }


def _lag(before, after):
    """Percentiles (as bucket upper bounds, seconds) of the lag histogram
    between two samples of its cumulative buckets."""
    if not before or not after:
        return {"n": 0, "p50_le_s": None, "p99_le_s": None}
    bounds = sorted(after, key=float)  # float("+Inf") sorts last
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cum[-1]

    def at(q):
        return (
            next(
                (float(b) for b, c in zip(bounds, cum, strict=True) if c >= q * total),
                None,
            )
            if total
            else None
        )

    return {"n": int(total), "p50_le_s": at(0.5), "p99_le_s": at(0.99)}


def _phase(lat, seqs, seq_range, clients, samples, writer, probe):
    """One phase's numbers: its writes' deliveries (by seq), and what the
    samples at its start and end and the probe say."""
    lo, hi = seq_range
    sent_at, acks = writer["sent_at"], writer["ack_ms"]
    mine, last_recv = [], None
    for x, s in zip(lat, seqs, strict=True):
        if lo <= s < hi:
            mine.append(x)
            recv = sent_at[s] + x / 1000.0
            last_recv = recv if last_recv is None else max(last_recv, recv)
    writes = hi - lo
    p, ack = _dist(mine), _dist(acks[lo:hi])
    db = _dist(
        x
        for x, s in zip(probe.get("lat_ms", ()), probe.get("seqs", ()), strict=True)
        if lo <= s < hi
    )
    start, end = samples
    # Throughput as the clients saw it: the first write to the last receipt.
    span = last_recv - sent_at[lo] if last_recv else None
    seconds = end["t"] - start["t"]
    cpu = end["cpu_s"] - start["cpu_s"]
    return {
        "writes": writes,
        "expected": clients * writes,
        "received": len(mine),
        "lost": clients * writes - len(mine),
        "msgs_per_s": len(mine) / span if span else None,
        "lat_p50_ms": p["p50"],
        "lat_p99_ms": p["p99"],
        "lat_max_ms": p["max"],
        # The writer's wait for the database: part of every latency above.
        "ack_p50_ms": ack["p50"],
        "ack_p99_ms": ack["p99"],
        "ack_max_ms": ack["max"],
        # A plain change stream's latency for the same writes.
        "db_stream_p50_ms": db["p50"],
        "db_stream_p99_ms": db["p99"],
        "db_stream_n": db["n"],
        # wallTime to the start of fan-out in wsproxy (bucket bounds).
        "lag": _lag(start["lag"], end["lag"]),
        "seconds": seconds,
        "cpu_s": cpu,
        "cpu_cores": cpu / seconds if seconds > 0 else None,
        "db_cpu_s": end["db_cpu_s"] - start["db_cpu_s"],
    }


def _ratio(a, b):
    return a / b if a is not None and b else None


def summarize(raw, lat, seqs):
    opts = raw["options"]
    out = {
        "error": raw["error"],
        "options": opts,
        "ready_s": raw.get("ready_s"),
        "server_log": raw.get("server_log"),
        "server_alive_after": raw.get("server_alive_after"),
        "server_stop": (raw.get("stop") or [None])[0],
        "server_log_problems": (raw.get("log_problems") or {}).get("run", (0, [])),
    }
    logged = raw.get("server_snapshots") or []
    repeats = opts["repeats"]
    out["reconnect"] = []
    for r in raw.get("reconnect") or []:
        row = {"ns": r["ns"], "docs": r["docs"], **_snapshots(r, r["docs"])}
        # This collection's first `repeats` logged snapshots are these.
        mine = [x[3] for x in logged if x[0] == r["ns"]][:repeats]
        row["server_s"] = _dist(mine)
        out["reconnect"].append(row)

    recv = raw.get("recv") or {}
    out.update(
        {
            "dups": recv.get("dups"),
            "out_of_order": recv.get("ooo"),
            "dropped_conns": recv.get("closed_early"),
            "drain_timed_out": recv.get("timed_out"),
            "live_client_cpu_s": recv.get("client_cpu_s"),
            "connected": (raw.get("connect") or {}).get("ok"),
        }
    )
    if lat is None or "writer" not in raw:
        return out
    w, samples = raw["writer"], raw["samples"]
    out["phases"] = {
        name: _phase(
            lat,
            seqs,
            raw["phase_seqs"][name],
            opts["clients"],
            (samples[name + "0"], samples[name + "1"]),
            w,
            raw.get("probe") or {},
        )
        for name in ("A", "B")
    }
    a, b = out["phases"]["A"], out["phases"]["B"]
    out["ratios"] = {
        k: _ratio(b[key], a[key])
        for k, key in (
            ("p50", "lat_p50_ms"),
            ("p99", "lat_p99_ms"),
            ("max", "lat_max_ms"),
            ("cpu", "cpu_s"),
        )
    }
    snaps = _snapshots(raw["snapshots"], opts["docs"])
    window = raw["t_stop"] - raw["t_ramp"]
    snaps["window_s"] = window
    snaps["per_s"] = snaps["completed"] / window if window > 0 else None
    # Logged after the reconnect-cost ones: the snapshots taken under load.
    under_load = [x[3] for x in logged if x[0] == raw["ns"]][repeats:]
    snaps["server_s"] = _dist(under_load)
    out["snapshots"] = snaps
    out["writer_max_behind_s"] = w.get("max_behind_s")
    return out


def _f(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


def _mb(b):
    return None if b is None else b / 1e6


def _rows(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return lines


RECONNECT_COLUMNS = [  # header, value of a reconnect row, format
    ("collection", lambda x: x["ns"], "{}"),
    ("docs", lambda x: x["docs"], "{}"),
    ("to end p50 ms", lambda x: x["to_end_ms"]["p50"], "{:.0f}"),
    ("max ms", lambda x: x["to_end_ms"]["max"], "{:.0f}"),
    ("MB", lambda x: _mb(x["bytes"]["p50"]), "{:.2f}"),
    ("server s", lambda x: x["server_s"]["p50"], "{:.2f}"),
    ("wrong", lambda x: x["wrong"], "{}"),
    ("failed", lambda x: sum(x["failures"].values()), "{}"),
]

PHASE_COLUMNS = [  # header, value of a phase, format
    ("writes", lambda p: p["writes"], "{}"),
    ("msgs/s", lambda p: p["msgs_per_s"], "{:.0f}"),
    ("p50ms", lambda p: p["lat_p50_ms"], "{:.1f}"),
    ("p99ms", lambda p: p["lat_p99_ms"], "{:.1f}"),
    ("maxms", lambda p: p["lat_max_ms"], "{:.0f}"),
    ("lost", lambda p: p["lost"], "{}"),
    ("ack p99ms", lambda p: p["ack_p99_ms"], "{:.1f}"),
    ("db p50ms", lambda p: p["db_stream_p50_ms"], "{:.1f}"),
    ("db p99ms", lambda p: p["db_stream_p99_ms"], "{:.1f}"),
    ("lag p50<=s", lambda p: p["lag"]["p50_le_s"], "{:g}"),
    ("lag p99<=s", lambda p: p["lag"]["p99_le_s"], "{:g}"),
    ("cpu_s", lambda p: p["cpu_s"], "{:.2f}"),
    ("db cpu_s", lambda p: p["db_cpu_s"], "{:.2f}"),
]

RATIO_COLUMNS = {"p50ms": "p50", "p99ms": "p99", "maxms": "max", "cpu_s": "cpu"}


def _phase_lines(r):
    o = r["options"]
    rows = [["phase"] + [h for h, _, _ in PHASE_COLUMNS]]
    for name, label in (("A", "A normal"), ("B", "B +snapshots")):
        p = r["phases"][name]
        rows.append([label] + [_f(get(p), fmt) for _, get, fmt in PHASE_COLUMNS])
    rows.append(
        ["ratio B/A"]
        + [
            _f(r["ratios"][RATIO_COLUMNS[h]], "{:.2f}x") if h in RATIO_COLUMNS else ""
            for h, _, _ in PHASE_COLUMNS
        ]
    )
    s = r["snapshots"]
    return [
        f"live clients: M={o['clients']}, {o['rate']:g} updates/s of "
        f"~900-byte documents, {o['duration']:g} s per phase; in phase B "
        f"snapshot clients ({o['snapshotters']}) take {o['docs']:,}-document "
        f"snapshots back to back",
        *_rows(rows),
        "  ack: the writer's wait for SecantusDB (part of the latency); "
        "db: the same writes' latency on a plain change stream in its own "
        "process (the database's share); lag: wsproxy's "
        "wsproxy_event_lag_seconds, an event's wallTime to the start of "
        "its fan-out (histogram bucket bounds)",
        "",
        f"phase B snapshots: {s['completed']} completed in "
        f"{s['window_s']:.1f} s ({_f(s['per_s'], '{:.2f}')}/s), "
        f"{_f(_mb(s['bytes']['p50']), '{:.2f}')} MB each; to snapshot_end "
        f"p50 {_f(s['to_end_ms']['p50'], '{:.0f}')} ms, p99 "
        f"{_f(s['to_end_ms']['p99'], '{:.0f}')} ms (server side p50 "
        f"{_f(s['server_s']['p50'], '{:.2f}')} s); wrong {s['wrong']}, "
        f"failed {sum(s['failures'].values())} {s['failures'] or ''}, "
        f"cut short at the end {s['abandoned']}",
        f"client CPU: live clients {_f(r['live_client_cpu_s'])} s (whole "
        f"run), snapshot clients {_f(s['client_cpu_s'])} s (ramp + phase B)",
        f"whole run: duplicated {r['dups']}, out of order "
        f"{r['out_of_order']}, dropped connections {r['dropped_conns']}, "
        f"writer at most {_f(r['writer_max_behind_s'], '{:.2f}')} s behind "
        f"its schedule",
    ]


def table(r):
    lines = [
        f"reconnect cost: one snapshot client, no other load, "
        f"{r['options']['repeats']} snapshots each (ms from connect to "
        f"snapshot_end; MB received, 10^6 bytes; server s: its log's "
        f"time for the snapshot)"
    ]
    rows = [[h for h, _, _ in RECONNECT_COLUMNS]]
    rows += [
        [_f(get(x), fmt) for _, get, fmt in RECONNECT_COLUMNS] for x in r["reconnect"]
    ]
    lines += _rows(rows)
    if "phases" in r:
        lines += [""] + _phase_lines(r)
    if r["error"]:
        lines.append(f"ERROR {r['error']}")
    count, sample = r["server_log_problems"]
    if count:
        lines.append(
            f"{count} error-like server log lines while measuring, e.g. {sample[:1]}"
        )
    return "\n".join(lines + [CAVEAT])


def write_json(path, result):
    with open(path, "w") as f:
        json.dump({"caveat": CAVEAT, **result}, f, indent=2, default=str)
