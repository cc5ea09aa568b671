"""Warm inetd mode (issue 18): a legacy Python program (bench/inetd/hello_py.py, standard
library only, about 35 ms of start-up) under corral `inetd: { warm: true }`, plain corral
inetd, tcpserver, xinetd and systemd-socket-activate, interleaved in one run.

Paced (open loop, 10 and 30 connections/s): connect-to-first-byte from bclient's fb_*
(scheduled start to the first byte of the answer). Saturated: wrk -c16 `Connection:
close`. CPU per connection: the cpuacct cgroup of each server's whole process tree."""
from __future__ import annotations

import time
from pathlib import Path

from common import Ctx, bclient, fmt, med, table, wait_port, wrk
from contenders import corral_yaml, socket_activate, start_corral, tcpserver, xinetd
from scenarios import order, rounds, unpinned

WARM_POOL = {"start": 8, "min_spare": 8, "max_spare": 16, "max": 64}
RATES = (10, 30)


def warm(ctx: Ctx):
    with unpinned(ctx):
        return _warm(ctx)


def _wait_idle(ctx: Ctx, sb: Path, n: int, timeout: float = 20.0) -> None:
    from common import scoreboard_idle
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idle = scoreboard_idle(sb)
        if idle is not None and idle >= n:
            return
        time.sleep(0.02)
    ctx.log(f"warm: {n} idle acceptors not reached in {timeout}s")


def _warm(ctx: Ctx):
    R = rounds(ctx, 3, 1)
    secs = 4 if ctx.quick else 10
    psecs = 4 if ctx.quick else 10
    prog = Path(ctx.root) / "bench" / "inetd" / "hello_py.py"
    keys = ["warm", "inetd", "tcpserver", "xinetd", "systemd"]
    ports = {k: ctx.port() for k in keys}
    p = WARM_POOL
    sbs = {}
    srv = {}
    for k in ("warm", "inetd"):
        extra = "    inetd: { warm: true }\n" if k == "warm" else ""
        srv[k], sbs[k] = corral_yaml(ctx, f"warm-corral-{k}", [ports[k]], start=p["start"], min_spare=p["min_spare"],
                                     max_spare=p["max_spare"], maximum=p["max"], mode="inetd",
                                     command=[str(prog)], extra=extra)
    srv["tcpserver"] = tcpserver(ctx, "warm-tcpserver", ports["tcpserver"], prog)
    srv["xinetd"] = xinetd(ctx, "warm-xinetd", ports["xinetd"], prog)
    srv["systemd"] = socket_activate(ctx, "warm-systemd", ports["systemd"], prog)
    srv["systemd"].env["SYSTEMD_LOG_LEVEL"] = "warning"
    for k in ("warm", "inetd"):
        start_corral(srv[k], sbs[k], p["start"])
    for k in ("tcpserver", "xinetd", "systemd"):
        srv[k].start()
        if not wait_port(ports[k], 10):
            ctx.log(f"warm: {k} not answering (see {srv[k].logpath})")

    def settle(k: str) -> None:
        # The same pause for everyone; corral's pools get back to their spares in it.
        time.sleep(1.0)
        if k in sbs:
            _wait_idle(ctx, sbs[k], p["min_spare"])

    for k in srv:
        wrk(ctx, ports[k], 1, 4, True, path="/")
    sat = {k: [] for k in srv}
    paced = {(k, rate): [] for k in srv for rate in RATES}
    for r in range(R):
        for rate in RATES:
            for k in order(list(srv), r):
                settle(k)
                cpu0 = srv[k].cpu_ns()
                out = ctx.results / f"warm-paced-{k}-{rate}-r{r}.ms"
                b = bclient(ctx, ["paced", "-p", ports[k], "-r", rate, "-d", psecs, "-t", 5000, "-o", out])
                cpu1 = srv[k].cpu_ns()
                okc = b.get("ok", 0)
                b["cpu_us"] = (cpu1 - cpu0) / 1e3 / okc if cpu0 is not None and okc else None
                paced[(k, rate)].append(b)
                ctx.log(f"warm round {r + 1}/{R} {k} paced {rate}/s: first byte p50 {fmt(b.get('fb_p50_ms'), 2)} "
                        f"p99 {fmt(b.get('fb_p99_ms'), 2)} ms ok {okc:.0f}/{b.get('attempted', 0):.0f} "
                        f"cpu {fmt(b['cpu_us'])} us/conn")
        for k in order(list(srv), r):
            settle(k)
            cpu0 = srv[k].cpu_ns()
            w = wrk(ctx, ports[k], secs, 16, True, path="/")
            cpu1 = srv[k].cpu_ns()
            w.pop("raw", None)
            w["cpu_us"] = (cpu1 - cpu0) / 1e3 / w["requests"] if cpu0 is not None and w["requests"] else None
            sat[k].append(w)
            ctx.log(f"warm round {r + 1}/{R} {k} 16 clients: {w['rps']:.1f} conn/s p50 {w['p50']:.2f} ms "
                    f"p99 {w['p99']:.2f} ms cpu {fmt(w['cpu_us'])} us/conn errors {w['errors']}")
    for s in srv.values():
        s.stop()
    labels = {"warm": "corral `inetd: { warm: true }`", "inetd": "corral `mode: inetd`",
              "tcpserver": "tcpserver (ucspi-tcp)", "xinetd": "xinetd", "systemd": "systemd-socket-activate --inetd -a"}
    md = "### Warm inetd mode (issue 18)\n\n"
    md += (f"bench/inetd/hello_py.py (Python, standard library, json + decimal imported) under each server. corral: "
           f"workers start {p['start']}, min_spare {p['min_spare']}, max_spare {p['max_spare']}, max {p['max']}. "
           f"Paced: bclient paced, open loop, {psecs} s, first byte = scheduled start to the answer's first byte. "
           f"Saturated: wrk -c16 `Connection: close` {secs} s. Unpinned. Server CPU per connection: the cgroup of "
           f"each server's process tree. {R} round(s), medians.\n\n")
    header = ["contender"]
    for rate in RATES:
        header += [f"first byte p50 / p99 ms @{rate}/s", f"CPU µs/conn @{rate}/s"]
    header += ["conn/s @16", "p50 / p99 ms @16", "CPU µs/conn @16", "errors"]
    rows = []
    for k in srv:
        row = [labels[k]]
        err = 0
        for rate in RATES:
            v = paced[(k, rate)]
            row += [f"{med(x.get('fb_p50_ms') for x in v):.2f} / {med(x.get('fb_p99_ms') for x in v):.2f}",
                    fmt(med(x["cpu_us"] for x in v), 0)]
            err += sum(x.get("errors", 0) + x.get("timeouts", 0) for x in v)
        s_ = sat[k]
        row += [fmt(med(x["rps"] for x in s_), 1), f"{med(x['p50'] for x in s_):.2f} / {med(x['p99'] for x in s_):.2f}",
                fmt(med(x["cpu_us"] for x in s_), 0)]
        err += sum(x["errors"] for x in s_)
        row.append(int(err))
        rows.append(row)
    md += table(header, rows) + "\n"
    ratios = []
    for rate in RATES:
        t = med(x.get("fb_p50_ms") for x in paced[("tcpserver", rate)])
        w_ = med(x.get("fb_p50_ms") for x in paced[("warm", rate)])
        t99 = med(x.get("fb_p99_ms") for x in paced[("tcpserver", rate)])
        w99 = med(x.get("fb_p99_ms") for x in paced[("warm", rate)])
        if t and w_:
            ratios.append(f"@{rate}/s: p50 tcpserver/warm {t / w_:.1f}x, p99 warm/tcpserver {w99 / t99:.2f}x")
    wi = med(x["rps"] for x in sat["warm"])
    ci = med(x["rps"] for x in sat["inetd"])
    if wi and ci:
        ratios.append(f"@16 clients: conn/s warm/inetd {wi / ci:.2f}x")
    md += "\n" + "; ".join(ratios) + "\n"
    data = {"saturated": sat, "paced": {f"{k}@{r}": v for (k, r), v in paced.items()}}
    return md, data
