"""Turning raw run data into statistics, a table, ratios and JSON."""

import json
import math

CAVEAT = (
    "caveat: 2 CPU cores shared by server, SecantusDB, writer and "
    "client processes -- client CPU limits throughput and adds "
    "latency; compare servers relative to each other, not absolutely."
)


LEGEND = (
    "cpu/100k: server CPU seconds per 100,000 delivered messages; "
    "thr/conn: (server threads with M clients connected - idle) / M, "
    "reading a little low at small M where a lazily grown thread pool "
    "reuses threads left idle by /readyz polls"
)


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return None
    k = min(
        len(sorted_values) - 1, max(0, math.ceil(q / 100.0 * len(sorted_values)) - 1)
    )
    return sorted_values[k]


def summarize(raw, lat):
    """Flat result dict of one run (what goes into the table and JSON)."""
    m = raw["clients"]
    w = raw.get("writer") or {}
    recv = raw.get("recv") or {}
    writes = w.get("written", 0)
    received = recv.get("received", 0)
    lat = sorted(lat) if lat else []
    span = None
    if recv.get("last_recv") and w.get("t_first"):
        span = recv["last_recv"] - w["t_first"]
    conn = raw.get("connect") or {}
    rss_conn = None
    if m and raw.get("rss_connected") and raw.get("rss_idle") is not None:
        rss_conn = (raw["rss_connected"] - raw["rss_idle"]) / m
    threads_conn = None
    if m and raw.get("threads_connected") and raw.get("threads_idle"):
        threads_conn = (raw["threads_connected"] - raw["threads_idle"]) / m
    sigterm = raw.get("sigterm") or (None, None)
    cpu = raw.get("cpu_s")
    changes = recv.get("changes")
    wire = recv.get("wire_bytes")
    payload = recv.get("payload_bytes")
    # The tenant scenario: each write is for one client, not all M.
    per_write = 1 if raw.get("tenants") else m
    return {
        "server": raw["server"],
        "clients": m,
        "rate": raw["rate"],
        "duration": raw["duration"],
        "burst": raw.get("burst") or 0,
        "error": raw.get("error"),
        "deflate": raw.get("deflate", False),
        "mix": raw.get("mix", "bench"),
        "writes": writes,
        "achieved_write_rate": w.get("achieved_rate"),
        "writer_max_behind_s": w.get("max_behind_s"),
        "tenants": bool(raw.get("tenants")),
        "expected": per_write * writes,
        "received": received,
        "msgs_per_s": received / span if span and span > 0 else None,
        # A burst offers all at once: msgs/s is then its delivery rate,
        # from the first measured write to the last message received.
        "offered_msgs_per_s": (None if raw.get("burst") else per_write * raw["rate"]),
        "lat_p50_ms": percentile(lat, 50),
        "lat_p99_ms": percentile(lat, 99),
        "lat_max_ms": lat[-1] if lat else None,
        "lost": per_write * writes - received if writes else None,
        "dups": recv.get("dups", 0),
        "out_of_order": recv.get("ooo", 0),
        "dropped_conns": recv.get("closed_early", 0),
        "incomplete_conns": recv.get("incomplete", 0),
        "drain_timed_out": recv.get("timed_out", False),
        "stale_msgs": recv.get("stale", 0),
        "connected": conn.get("ok", 0),
        "connect_failed": conn.get("failed", 0),
        "connect_retries": conn.get("retries", 0),
        "connect_errors": conn.get("errors", {}),
        "connect_s": raw.get("connect_s"),
        "ready_s": raw.get("ready_s"),
        "cpu_s": cpu,
        "client_cpu_s": recv.get("client_cpu_s"),
        "cpu_us_per_msg": cpu / received * 1e6 if cpu and received else None,
        "cpu_s_per_100k": cpu / received * 1e5 if cpu and received else None,
        # Per change message a client received (warm-up included), from
        # the clients' side of the sockets: see bench.loadclient.
        "changes": changes,
        "wire_bytes": wire,
        "payload_bytes": payload,
        "wire_bytes_per_event": wire / changes if wire and changes else None,
        "payload_bytes_per_event": (payload / changes if payload and changes else None),
        "rss_idle_mb": _mb(raw.get("rss_idle")),
        "rss_connected_mb": _mb(raw.get("rss_connected")),
        "rss_peak_mb": _mb(raw.get("rss_peak")),
        "rss_per_conn_kb": rss_conn / 1024 if rss_conn is not None else None,
        "threads_idle": raw.get("threads_idle"),
        "threads_connected": raw.get("threads_connected"),
        "threads_per_conn": threads_conn,
        **disconnect_summary(raw.get("disconnect")),
        "disconnect_error": raw.get("disconnect_error"),
        "reconnect": raw.get("reconnect"),
        "sigterm_clients": raw.get("sigterm_clients"),
        "sigterm_stop": sigterm[0],
        "sigterm_s": sigterm[1],
        "server_alive_after": raw.get("server_alive_after"),
        "server_stop": (raw.get("stop") or (None, None))[0],
        "server_stop_s": (raw.get("stop") or (None, None))[1],
        "server_log_problems": _problems(raw, "run")[0],
        "server_log_sample": _problems(raw, "run")[1],
        "server_log_problems_disconnect": _problems(raw, "disconnect")[0],
        "server_log_sample_disconnect": _problems(raw, "disconnect")[1],
        "server_log_problems_shutdown": _problems(raw, "shutdown")[0],
        "server_log_sample_shutdown": _problems(raw, "shutdown")[1],
        "server_log": raw.get("server_log"),
    }


def disconnect_summary(d):
    """The bystander's figures from :func:`.disconnect.mass_disconnect`'s
    raw dict: latency before the kill (p50) and after it (max), the stall
    (their difference), and its count of events; {} without the step."""
    if not d or "lat_ms" not in d:
        return {}
    t_kill, sent_at, base = d["t_kill"], d["sent_at"], d["seq_base"]
    pre, post = [], []
    for seq, lat in zip(d["seqs"], d["lat_ms"], strict=True):
        recv = sent_at[seq - base] + lat / 1000.0
        (pre if recv < t_kill else post).append(lat)
    pre.sort()
    p50 = percentile(pre, 50)
    worst = max(post) if post else None
    return {
        "bystander_p50_before_ms": p50,
        "bystander_max_after_ms": worst,
        "stall_ms": (worst - p50 if worst is not None and p50 is not None else None),
        "bystander_events_before": len(pre),
        "bystander_events_after": len(post),
        "bystander_lost": d["writes"] - len(d["lat_ms"]),
        "bystander_dups": d["dups"],
        "bystander_dropped": d["closed"],
        "disconnect_killed": d["killed"],
        "disconnect_gone_s": d.get("gone_s"),
        "disconnect_cpu_s": d.get("cpu_s"),
    }


def _problems(raw, phase):
    return (raw.get("log_problems") or {}).get(phase, (0, []))


def _mb(b):
    return b / (1024 * 1024) if b is not None else None


def _f(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


def _grid(rows):
    """Rows of cells (the first the header) as aligned lines, a rule under
    the header; the first column left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return lines


COLUMNS = [  # header, key, format
    ("server", "server", "{}"),
    ("M", "clients", "{}"),
    ("writes", "writes", "{}"),
    ("msgs/s", "msgs_per_s", "{:.0f}"),
    ("offered", "offered_msgs_per_s", "{:.0f}"),
    ("p50ms", "lat_p50_ms", "{:.1f}"),
    ("p99ms", "lat_p99_ms", "{:.1f}"),
    ("maxms", "lat_max_ms", "{:.0f}"),
    ("lost", "lost", "{}"),
    ("dup", "dups", "{}"),
    ("ooo", "out_of_order", "{}"),
    ("drop", "dropped_conns", "{}"),
    ("cpu_s", "cpu_s", "{:.2f}"),
    ("us/msg", "cpu_us_per_msg", "{:.0f}"),
    ("cpu/100k", "cpu_s_per_100k", "{:.2f}"),
    ("cli_cpu", "client_cpu_s", "{:.1f}"),
    ("rssMB", "rss_peak_mb", "{:.1f}"),
    ("KB/conn", "rss_per_conn_kb", "{:.1f}"),
    ("thr/conn", "threads_per_conn", "{:.2f}"),
    ("ready_s", "ready_s", "{:.2f}"),
    ("conn_s", "connect_s", "{:.2f}"),
]


def table(results):
    rows = [[h for h, _, _ in COLUMNS]]
    for r in results:
        row = [_f(r.get(k), fmt) for _, k, fmt in COLUMNS]
        if r.get("drain_timed_out"):
            # Not all missing messages are lost: some were still in flight.
            row[[k for _, k, _ in COLUMNS].index("lost")] += "*"
        rows.append(row)
    lines = _grid(rows)
    notes = [
        f"  {r['server']} M={r['clients']}: {r['error']}"
        for r in results
        if r.get("error")
    ]
    for phase, suffix in (
        ("while measuring", ""),
        ("in the mass disconnect", "_disconnect"),
        ("at shutdown", "_shutdown"),
    ):
        notes += [
            f"  {r['server']} M={r['clients']}: "
            f"{r['server_log_problems' + suffix]} error-like server log "
            f"lines {phase}, e.g. {r['server_log_sample' + suffix][:1]}"
            for r in results
            if r.get("server_log_problems" + suffix)
        ]
    if any(r.get("drain_timed_out") for r in results):
        notes.append(
            "  * not every client had the last seq when the drain "
            "timeout ended the run: 'lost' counts messages still "
            "queued or in flight too; the machine could not take "
            "the offered load (see cli_cpu) -- a lower --rate "
            "compares the servers at that M"
        )
    notes += [
        f"  {r['server']} M={r['clients']}: stop needed SIGKILL after "
        f"{r['server_stop_s']}s"
        for r in results
        if r.get("server_stop") == "killed"
    ]
    notes += [
        f"  {r['server']} M={r['clients']}: {r['connect_failed']} "
        f"clients failed to connect {r['connect_errors']}"
        for r in results
        if r.get("connect_failed")
    ]
    notes += [
        f"  {r['server']} M={r['clients']}: mass-disconnect step "
        f"failed: {r['disconnect_error']}"
        for r in results
        if r.get("disconnect_error")
    ]
    notes += [
        f"  {r['server']} M={r['clients']}: SIGTERM with clients "
        f"needed SIGKILL after {r['sigterm_s']}s"
        for r in results
        if r.get("sigterm_stop") == "killed"
    ]
    if notes:
        lines += ["notes:"] + notes
    return "\n".join(lines + [LEGEND, CAVEAT])


def ratios(results, base="wsproxy", others=("tornado", "websockets")):
    """Lines of base/other for msgs/s, p99 and CPU, per client count."""
    by = {(r["server"], r["clients"]): r for r in results if not r["error"]}
    out = []
    for m in sorted({r["clients"] for r in results}):
        b = by.get((base, m))
        if not b:
            continue
        for o in others:
            r = by.get((o, m))
            if not r:
                continue
            parts = [
                f"{label} {_ratio(b.get(k), r.get(k))}"
                for label, k in (
                    ("msgs/s", "msgs_per_s"),
                    ("p99", "lat_p99_ms"),
                    ("cpu", "cpu_s"),
                )
            ]
            out.append(f"M={m:<5} {base} / {o:<10} " + "  ".join(parts))
    return "\n".join(out)


def _ratio(a, b):
    if a is None or not b:
        return "   -"
    return f"{a / b:5.2f}x"


OFF = "wsproxy-off"
COMPRESSION_COLUMNS = [  # header, key, format
    ("server", "server", "{}"),
    ("M", "clients", "{}"),
    ("JSON B/ev", "payload_bytes_per_event", "{:.0f}"),
    ("wire B/ev", "wire_bytes_per_event", "{:.0f}"),
    ("x off", "wire_vs_off", "{:.2f}"),
    ("cpu_s", "cpu_s", "{:.2f}"),
    ("us/msg", "cpu_us_per_msg", "{:.1f}"),
    ("x off", "cpu_per_msg_vs_off", "{:.2f}"),
    ("msgs/s", "msgs_per_s", "{:.0f}"),
    ("p99ms", "lat_p99_ms", "{:.1f}"),
    ("lost", "lost", "{}"),
    ("dup", "dups", "{}"),
]


def _add_ratios(results, base, ratios):
    """Give every run, for each ``(key, of)`` in ``ratios``, ``r[key]`` =
    its ``of`` divided by ``base``'s at the same client count (None where
    there is no base)."""
    by = {r["clients"]: r for r in results if r["server"] == base and not r["error"]}
    for r in results:
        b = by.get(r["clients"], {})
        for key, of in ratios:
            a, o = r.get(of), b.get(of)
            r[key] = a / o if a is not None and o else None
    return results


def add_off_ratios(results, base=OFF):
    """Wire bytes and CPU per delivered message as a ratio to ``base``."""
    return _add_ratios(
        results,
        base,
        (
            ("wire_vs_off", "wire_bytes_per_event"),
            ("cpu_per_msg_vs_off", "cpu_us_per_msg"),
        ),
    )


def compression_table(results):
    """Bytes and CPU per delivered event, against wsproxy-off."""
    rows = [[h for h, _, _ in COMPRESSION_COLUMNS]]
    for r in results:
        rows.append([_f(r.get(k), fmt) for _, k, fmt in COMPRESSION_COLUMNS])
    lines = _grid(rows)
    lines.append(
        f"per change message a client received; 'x off': ratio to "
        f"{OFF} at the same M; JSON B/ev is the message inflated, "
        f"wire B/ev what the socket read (frames included)"
    )
    return "\n".join(lines)


def write_json(path, results, options):
    with open(path, "w") as f:
        json.dump(
            {"options": options, "caveat": CAVEAT, "results": results},
            f,
            indent=2,
            default=str,
        )


DISCONNECT_COLUMNS = [  # header, key, format
    ("server", "server", "{}"),
    ("M", "clients", "{}"),
    ("killed", "disconnect_killed", "{}"),
    ("by_p50ms", "bystander_p50_before_ms", "{:.1f}"),
    ("by_maxms", "bystander_max_after_ms", "{:.1f}"),
    ("stall_ms", "stall_ms", "{:.1f}"),
    ("by_n", "bystander_events_after", "{}"),
    ("by_lost", "bystander_lost", "{}"),
    ("gone_s", "disconnect_gone_s", "{:.2f}"),
    ("cpu_s", "disconnect_cpu_s", "{:.2f}"),
    ("sigterm_M", "sigterm_clients", "{}"),
    ("sigterm_s", "sigterm_s", "{:.2f}"),
]


def disconnect_table(results):
    """The mass-disconnect step and SIGTERM with clients, per run."""
    rows = [[h for h, _, _ in DISCONNECT_COLUMNS]]
    rows += [[_f(r.get(k), fmt) for _, k, fmt in DISCONNECT_COLUMNS] for r in results]
    return "\n".join(
        _grid(rows)
        + [
            "by_*: the bystander (one more client): p50 before the M clients "
            "were SIGKILLed at once, max after (in the window and its drain), "
            "stall_ms = by_maxms - by_p50ms, by_n its events after the kill; "
            "gone_s: until wsproxy's /readyz counted them gone (baselines: -); "
            "cpu_s: server CPU from the kill to the writer's end; sigterm_s: "
            "SIGTERM with sigterm_M clients connected until the server's "
            "process tree was gone"
        ]
    )


ASYNCIO = "websockets"
TARGETS = (
    "targets: cpu/msg x asyncio <= 0.5 at 1,000 clients x 50/s and "
    "on a 10,000-event burst; p99 x asyncio <= 1 at 100 and 1,000 "
    "clients; thr/conn <= 1.05; KB/conn <= 30; stall < 300 ms with "
    "1,000 disconnects; sigterm < 2 s with 1,000 clients"
)


def add_asyncio_ratios(results, base=ASYNCIO):
    """CPU per delivered message and p99 as a ratio to ``base`` (the
    asyncio ``websockets`` baseline)."""
    return _add_ratios(
        results,
        base,
        (
            ("cpu_per_msg_vs_asyncio", "cpu_us_per_msg"),
            ("p99_vs_asyncio", "lat_p99_ms"),
        ),
    )


def _pair(a, b, key, fmt):
    return f"{_f(a.get(key), fmt)} ({_f(b.get(key), fmt)})"


def asyncio_table(results, server="wsproxy", base=ASYNCIO):
    """``server``'s figures beside the asyncio baseline's, per client
    count: the issue's targets in one place. Empty without both."""
    by = {(r["server"], r["clients"]): r for r in results}
    rows = [
        [
            "M",
            "load",
            "cpu/msg x asyncio",
            "p99 x asyncio",
            "thr/conn",
            "KB/conn",
            "stall ms",
            "sigterm s",
        ]
    ]
    for m in sorted({r["clients"] for r in results}):
        a, b = by.get((server, m)), by.get((base, m))
        if not a or not b:
            continue
        rows.append(
            [
                str(m),
                f"burst {a['burst']}" if a.get("burst") else f"{a['rate']:g}/s",
                _f(a.get("cpu_per_msg_vs_asyncio"), "{:.2f}x"),
                _f(a.get("p99_vs_asyncio"), "{:.2f}x"),
                _pair(a, b, "threads_per_conn", "{:.2f}"),
                _pair(a, b, "rss_per_conn_kb", "{:.1f}"),
                _pair(a, b, "stall_ms", "{:.0f}"),
                _pair(a, b, "sigterm_s", "{:.2f}"),
            ]
        )
    if len(rows) == 1:
        return ""
    return "\n".join(
        _grid(rows)
        + [
            f"{server}'s figure first, {base}'s in brackets; x asyncio: "
            f"{server} / {base} (<1 is better)",
            TARGETS,
        ]
    )
