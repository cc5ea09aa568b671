"""Issue 14, the accept path at the ceiling: corral + hello-http (accept_mutex auto) side by
side with the hand-written C ceiling in one run, as ratios per round. Scenario `accept`
of bench/run.sh. Each part is its own function; `accept_path` runs them all and returns
(markdown, raw data) like the scenarios in scenarios.py."""
from __future__ import annotations

import platform
import re
import subprocess
import time
from pathlib import Path

from common import (Ctx, Server, bclient, children, corral_status, corral_workers, fmt, jain, med, rss_kb, table,
                    vol_ctxt, wait_corral_idle, wait_port, wrk)
from contenders import ceiling, corral_cli, corral_yaml, start_ceiling, start_corral
from scenarios import lock_kind, order, perf_profile, rounds, sched_ns

N = 8  # workers (children) for throughput, herd and fairness
ACCEPT4 = {"x86_64": 288, "aarch64": 242}.get(platform.machine())


def _spread(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    return f"{min(xs):.3f}..{max(xs):.3f}" if xs else "n/a"


def _ratio_rounds(a: list[dict], b: list[dict], f: str) -> list[float]:
    return [x[f] / y[f] for x, y in zip(a, b) if x.get(f) is not None and y.get(f)]


# ---- new connection per request (c32, c128) and keep-alive --------------------------

def accept_throughput(ctx: Ctx) -> tuple[str, dict]:
    secs = 3 if ctx.quick else 5
    R = rounds(ctx, 8, 3)
    cases = [("close", 32, True), ("close", 128, True), ("keepalive", N, False)]
    ports = {"corral": ctx.port(), "ceiling": ctx.port()}
    c, sb = corral_cli(ctx, "accept-corral", ports["corral"], N)
    ce = ceiling(ctx, "accept-ceiling", ports["ceiling"], N)
    srv = {"corral": c, "ceiling": ce}
    start_corral(c, sb, N)
    start_ceiling(ce, N)
    kinds = sorted({lock_kind(w["pid"]) for w in corral_workers(ctx, sb)})
    for k in srv:
        wrk(ctx, ports[k], 1, 32, True)
    data: dict = {}
    for r in range(R):
        for tag, conns, close in cases:
            for k in order(list(srv), r):
                cpu0 = srv[k].cpu_ns()
                res = wrk(ctx, ports[k], secs, conns, close)
                cpu1 = srv[k].cpu_ns()
                res.pop("raw", None)
                res["cpu_us"] = ((cpu1 - cpu0) / 1e3 / res["requests"]) if cpu0 is not None and res["requests"] else None
                data.setdefault((tag, conns), {}).setdefault(k, []).append(res)
                ctx.log(f"accept {tag} c{conns} round {r + 1}/{R} {k}: {res['rps']:.0f} req/s "
                        f"cpu {fmt(res['cpu_us'], 2)} us/req errors {res['errors']}")
    prof = {}
    for k in srv:
        p = perf_profile(ctx, f"accept-close-c32-{k}", secs, lambda k=k: wrk(ctx, ports[k], secs, 32, True), srv[k])
        if p:
            prof[k] = p
    for s in srv.values():
        s.stop()
    rows, out = [], {}
    for (tag, conns), d in data.items():
        cpu = _ratio_rounds(d["corral"], d["ceiling"], "cpu_us")
        rps = _ratio_rounds(d["corral"], d["ceiling"], "rps")
        cpu_goal = 1.02 if tag == "keepalive" else 1.03
        row = {"cpu_ratio": med(cpu), "cpu_spread": _spread(cpu), "rps_ratio": med(rps), "rps_spread": _spread(rps),
               "corral_rps": med(x["rps"] for x in d["corral"]), "ceiling_rps": med(x["rps"] for x in d["ceiling"]),
               "corral_cpu_us": med(x["cpu_us"] for x in d["corral"]),
               "ceiling_cpu_us": med(x["cpu_us"] for x in d["ceiling"]),
               "errors": sum(x["errors"] for v in d.values() for x in v)}
        out[f"{tag}-c{conns}"] = row
        rows.append([f"{'new connection per request' if tag == 'close' else 'keep-alive'}, c{conns}",
                     fmt(row["corral_rps"], 0), fmt(row["ceiling_rps"], 0), f"**{row['rps_ratio']:.3f}**",
                     row["rps_spread"], fmt(row["corral_cpu_us"], 2), fmt(row["ceiling_cpu_us"], 2),
                     f"**{row['cpu_ratio']:.3f}**", row["cpu_spread"],
                     ("met" if row["cpu_ratio"] <= cpu_goal else "**missed**") +
                     (f" / {'met' if row['rps_ratio'] >= 0.97 else '**missed**'}" if tag == "close" else ""),
                     row["errors"]])
    md = (f"wrk -t1 -d{secs}s (`-H \"Connection: close\"` for a new connection per request), {R} rounds, "
          f"corral and the ceiling interleaved within each round; {N} workers each; corral's workers got "
          f"CORRAL_LOCK_KIND={'/'.join(kinds)}. Server CPU = the whole cgroup (supervisor and workers) per "
          f"request. Ratios are corral/ceiling per round; the table gives their median and min..max.\n\n")
    md += table(["load", "corral req/s", "ceiling req/s", "req/s ratio", "spread", "corral CPU µs/req",
                 "ceiling CPU µs/req", "CPU ratio", "spread", "goal CPU (≤1.03; keep-alive ≤1.02) / req/s (≥0.97)",
                 "errors"], rows)
    if prof:
        md += "\nProfiles (perf record -e cpu-clock, c32 close): " + ", ".join(f"`{p}`" for p in prof.values()) + "\n"
    return md, {"rows": out, "rounds": {f"{t}-c{c_}": v for (t, c_), v in data.items()}, "kinds": kinds,
                "profiles": prof}


# ---- herd and fairness ----------------------------------------------------------------

def accept_herd(ctx: Ctx) -> tuple[str, dict]:
    R = rounds(ctx, 2, 1)
    nconn = 300 if ctx.quick else 2000
    configs = [("corral", L, n) for L in (1, 2) for n in (4, 64)] + [("ceiling", 1, n) for n in (4, 64)]
    res: dict = {}
    kinds: dict = {}
    for r in range(R):
        for kind, L, n in order(configs, r):
            ports = [ctx.port() for _ in range(L)]
            name = f"accept-herd-{kind}-{L}l-{n}w"
            if kind == "corral":
                s, sb = corral_yaml(ctx, name, ports, start=n, min_spare=n, max_spare=n, maximum=n)
                start_corral(s, sb, n)
                pids = [w["pid"] for w in corral_workers(ctx, sb)]
                if pids:
                    kinds[L] = lock_kind(pids[0])
            else:
                s = ceiling(ctx, name, ports[0], n)
                start_ceiling(s, n)
                pids = children(s.pid)
            time.sleep(0.5)
            v0 = vol_ctxt(pids)
            out = bclient(ctx, ["seq", "-p", ",".join(map(str, ports)), "-n", nconn, "-g", 2000])
            v1 = vol_ctxt(pids)
            s.stop()
            ok = int(out.get("ok", 0))
            per = (v1 - v0) / ok if ok else None
            res.setdefault((kind, L, n), []).append(per)
            ctx.log(f"accept herd round {r + 1}/{R} {kind} {L} listener(s) {n} workers: {fmt(per, 2)} cs/conn")
    rows = []
    ceil4 = med(res.get(("ceiling", 1, 4), [None]))
    for kind, L in (("corral", 1), ("corral", 2), ("ceiling", 1)):
        a4, a64 = med(res.get((kind, L, 4), [None])), med(res.get((kind, L, 64), [None]))
        ratio = a64 / a4 if a4 and a64 else None
        label = f"corral `auto` (= {kinds.get(L, '?')})" if kind == "corral" else "C ceiling (blocking accept)"
        vs = a4 / ceil4 if kind == "corral" and L == 1 and a4 and ceil4 else None
        rows.append([L, label, fmt(a4, 2), fmt(a64, 2), fmt(ratio, 2),
                     ("met" if ratio is not None and ratio <= 1.05 else "**missed**") if kind == "corral" else "",
                     fmt(vs, 2) if vs else ""])
    md = (f"{nconn} sequential short connections 2 ms apart (workers idle between them), 2 listeners alternate; "
          f"figure: voluntary context switches of all workers per connection, median over {R} round(s).\n\n")
    md += table(["listeners", "server", "cs/conn, 4 idle", "cs/conn, 64 idle", "64/4", "goal ≤ 1.05",
                 "vs ceiling at 4 idle"], rows)
    return md, {"results": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in res.items()}, "kinds": kinds}


def accept_fairness(ctx: Ctx) -> tuple[str, dict]:
    R = rounds(ctx, 3, 1)
    nconn = 10000
    res: dict = {"corral": [], "ceiling": []}
    for r in range(R):
        for kind in order(["corral", "ceiling"], r):
            port = ctx.port()
            if kind == "corral":
                s, sb = corral_yaml(ctx, f"accept-fair-{r}", [port], start=N, min_spare=N, max_spare=N, maximum=N)
                start_corral(s, sb, N)
                before = {w["pid"]: w["requests"] for w in corral_workers(ctx, sb)}
                bclient(ctx, ["seq", "-p", port, "-n", nconn, "-c", 4])
                after = {w["pid"]: w["requests"] for w in corral_workers(ctx, sb)}
                counts = [after[p] - before.get(p, 0) for p in after]
                s.stop()
            else:
                s = ceiling(ctx, f"accept-fair-ceiling-{r}", port, N)
                s.start()
                wait_port(port, 10, http=False)
                t0 = time.monotonic()
                while len(children(s.pid)) < N and time.monotonic() - t0 < 10:
                    time.sleep(0.02)
                bclient(ctx, ["seq", "-p", port, "-n", nconn, "-c", 4])
                s.stop()
                text = s.logpath.read_text().split("###")[-1]
                counts = [int(x) for x in re.findall(r"child \d+ served (\d+)", text)]
            res[kind].append({"counts": sorted(counts), "jain": jain(counts)})
            ctx.log(f"accept fairness round {r + 1}/{R} {kind}: {sorted(counts)} jain {jain(counts):.4f}")
    rows = []
    for kind in ("corral", "ceiling"):
        j = med(x["jain"] for x in res[kind])
        mid = sorted(res[kind], key=lambda x: x["jain"])[len(res[kind]) // 2]["counts"]
        rows.append(["corral `auto` (1 listener)" if kind == "corral" else "C ceiling", min(mid), max(mid),
                     f"{j:.4f}", ("met" if j >= 0.99 else "**missed**") if kind == "corral" else ""])
    md = f"{nconn} short connections from 4 client threads over {N} workers; Jain's index, median of {R} round(s).\n\n"
    md += table(["server", "min", "max", "Jain", "goal ≥ 0.99"], rows)
    return md, res


# ---- start-up to 1024 idle, and 4096 workers at rest -----------------------------------

def _in_accept(pids: list[int]) -> int:
    if ACCEPT4 is None:
        return 0
    n = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/syscall") as f:
                if f.read().split(" ", 1)[0] == str(ACCEPT4):
                    n += 1
        except OSError:
            pass
    return n


def _time_to_accept(parent: int, n: int, t0: float, timeout: float) -> float | None:
    """Seconds from t0 until n children of `parent` wait in accept4 (/proc/PID/syscall),
    the same criterion for corral and for the ceiling; polled every 50 ms."""
    while time.monotonic() - t0 < timeout:
        kids = children(parent)
        if len(kids) >= n and _in_accept(kids) >= n:
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def accept_startup(ctx: Ctx) -> tuple[str, dict]:
    n = 256 if ctx.quick else 1024
    R = rounds(ctx, 3, 1)
    res: dict = {"corral": [], "corral_idle": [], "floor": []}
    for r in range(R):
        for kind in order(["corral", "floor"], r):
            port = ctx.port()
            if kind == "corral":
                s, sb = corral_cli(ctx, f"accept-start-{r}", port, n)
                t0 = time.monotonic()
                s.start()
                t_idle = wait_corral_idle(ctx, sb, n, timeout=120, poll=0.01)
                t = _time_to_accept(s.pid, n, t0, 120)
                res["corral_idle"].append(t_idle)
            else:
                s = Server(ctx, f"accept-floor-{r}", [ctx.bin / "prefork_ceiling", "-l", f"127.0.0.1:{port}",
                                                      "-n", n, "-e", ctx.hello_http], port=port)
                t0 = time.monotonic()
                s.start()
                t = _time_to_accept(s.pid, n, t0, 120)
            res[kind].append(t)
            s.stop(timeout=120)
            ctx.log(f"accept start-up round {r + 1}/{R} {kind}: {n} in accept4 after {fmt(t, 3)} s")
    c, f = med(res["corral"]), med(res["floor"])
    per = [a / b for a, b in zip(res["corral"], res["floor"]) if a and b]
    ratio = med(per) if per else None
    md = (f"Time from launching the server until {n} hello-http processes wait in `accept4` "
          f"(/proc/PID/syscall of every child, polled every 50 ms, the same test for both): corral "
          f"(`corral run --workers {n} ...`), and the floor: prefork_ceiling -e forking and exec'ing {n} "
          f"hello-http with LISTEN_FDS=1. Median of {R} round(s), interleaved.\n\n")
    md += table(["server", "start-up s", "corral/floor (median of per-round ratios)", "spread", "goal ≤ 1.1"],
                [["corral", fmt(c, 3), fmt(ratio, 3), _spread(per), ("met" if ratio and ratio <= 1.1 else "**missed**")],
                 ["corral, until the scoreboard says idle", fmt(med(res["corral_idle"]), 3), "", "", ""],
                 ["floor: fork + exec", fmt(f, 3), "", "", ""]])
    return md, res


def accept_rest(ctx: Ctx) -> tuple[str, dict]:
    n = 512 if ctx.quick else 4096
    win = 3 if ctx.quick else 10
    port = ctx.port()
    s, sb = corral_cli(ctx, "accept-rest", port, n)
    t0 = time.monotonic()
    s.start()
    t_idle = wait_corral_idle(ctx, sb, n, timeout=300, poll=0.05)
    row: dict = {"workers": n, "startup_s": (time.monotonic() - t0) if t_idle is not None else None}
    time.sleep(2.0)
    c0 = sched_ns(s.pid)
    time.sleep(win)
    c1 = sched_ns(s.pid)
    row["rest_cpu_pct"] = (c1 - c0) / (win * 1e9) * 100 if c0 is not None and c1 is not None else None
    row["rss_kb"] = rss_kb(s.pid)
    times = []
    for _ in range(5):
        ts = time.monotonic()
        st = corral_status(ctx, sb)
        times.append(time.monotonic() - ts)
    row["status_s"] = med(times)
    row["status_spread"] = _spread(times)
    row["status_workers"] = len([w for j in (st or {}).get("jobs", []) for w in j.get("workers", [])])
    s.stop(timeout=300)
    ctx.log(f"accept rest {n}: cpu {fmt(row['rest_cpu_pct'], 3)}% rss {row['rss_kb']} kB "
            f"status {row['status_s']:.3f} s")
    md = (f"corral with {n} hello-http workers (start = min_spare = max_spare = max), after all are idle: "
          f"the supervisor's CPU over {win} s (/proc/PID/schedstat), its VmRSS, and the wall time of "
          f"`corral status --json` (median of 5 calls, min..max).\n\n")
    md += table(["workers", "start-up s", "supervisor CPU % at rest", "supervisor RSS MB", "status --json s",
                 "spread", "workers listed"],
                [[n, fmt(row["startup_s"], 2), fmt(row["rest_cpu_pct"], 3), f"{(row['rss_kb'] or 0) / 1024:.1f}",
                  f"{row['status_s']:.3f}", row["status_spread"], row["status_workers"]]])
    return md, row


def accept_path(ctx: Ctx):
    md = "### Accept path at the ceiling (issue 14)\n\n"
    raw = {}
    for title, fn in (("New connection per request and keep-alive, against the ceiling", accept_throughput),
                      ("Herd", accept_herd), ("Fairness", accept_fairness),
                      ("Start-up against fork + exec", accept_startup), ("At rest with many workers", accept_rest)):
        part, data = fn(ctx)
        md += f"#### {title}\n\n{part}\n"
        raw[fn.__name__] = data
    return md, raw
