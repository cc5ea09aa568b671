"""The eight scenarios. Each takes the Ctx, runs its contenders interleaved over
rounds, and returns (markdown, raw data)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from common import (Ctx, Server, bclient, children, corral_status, corral_workers, fmt, gnuplot, jain, med,
                    rss_kb, table, vol_ctxt, wait_port, wrk)
from contenders import (apache, ceiling, corral_cli, corral_yaml, socket_activate, start_apache, start_ceiling,
                        start_corral, tcpserver, xinetd)

MUTEXES = ["auto", "pipe", "fcntl", "epoll", "none"]


def rounds(ctx: Ctx, full: int, quick: int) -> int:
    return ctx.rounds or (quick if ctx.quick else full)


def order(items: list, r: int) -> list:
    """A B C, then C B A, ...: no contender always runs first or last."""
    return list(items) if r % 2 == 0 else list(reversed(items))


def sched_ns(pid: int) -> int | None:
    """Time on cpu of one process (all its threads), ns: /proc/PID/schedstat."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def perf_works() -> bool:
    try:
        r = subprocess.run(["perf", "stat", "-e", "cpu-clock", "true"], capture_output=True, text=True, timeout=20)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def perf_profile(ctx: Ctx, tag: str, secs: float, load, server: Server | None = None) -> str | None:
    """perf record (cpu-clock sampling; this VM has no hardware counters) of the
    server's processes (every pid in its cgroup, and what they fork from then on),
    or of the whole machine without a server, while `load()` runs; writes
    results/perf-TAG.txt (by command and library, then the top symbols)."""
    if not ctx.perf or not perf_works():
        return None
    data = ctx.results / f"perf-{tag}.data"
    pids = server.pids() if server else []
    target = ["-p", ",".join(map(str, pids))] if pids else ["-a"]
    rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-g", "-o", str(data)] + target + ["--",
                            "sleep", str(secs + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        load()
    finally:
        rec.wait(timeout=secs + 60)
    out = ctx.results / f"perf-{tag}.txt"
    with open(out, "w") as f:
        for sort in (["comm,dso"], ["comm,sym"]):
            r = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", sort[0], "--stdio",
                                "-g", "none", "--percent-limit", "0.7"], capture_output=True, text=True, timeout=300)
            f.write(f"## perf report --sort {sort[0]}\n")
            f.write("\n".join(l for l in r.stdout.splitlines() if l and not l.startswith("#")) + "\n\n")
    data.unlink(missing_ok=True)
    return out.name


# =====================================================================================
# 1 and 2: new connection per request, keep-alive
# =====================================================================================

def throughput(ctx: Ctx, close: bool):
    tag = "close" if close else "keepalive"
    n = 8
    secs = 3 if ctx.quick else 5
    conns = 16 if close else n  # keep-alive: one connection per worker (a prefork worker holds one)
    R = rounds(ctx, 8, 2)
    ports = {k: ctx.port() for k in ("corral", "apache", "ceiling")}
    c, sb = corral_cli(ctx, f"{tag}-corral", ports["corral"], n)
    a = apache(ctx, f"{tag}-apache", [ports["apache"]], start=n, min_spare=n, max_spare=n, maximum=n,
               keepalive=not close)
    ce = ceiling(ctx, f"{tag}-ceiling", ports["ceiling"], n)
    srv = {"corral": c, "apache": a, "ceiling": ce}
    start_corral(c, sb, n)
    start_apache(a, n)
    start_ceiling(ce, n)
    pids0 = sorted(w["pid"] for w in corral_workers(ctx, sb))
    for k in srv:  # warm-up
        wrk(ctx, ports[k], 1, conns, close)
    data = {k: [] for k in srv}
    for r in range(R):
        for k in order(list(srv), r):
            cpu0 = srv[k].cpu_ns()
            res = wrk(ctx, ports[k], secs, conns, close)
            cpu1 = srv[k].cpu_ns()
            res.pop("raw")
            res["cpu_us"] = ((cpu1 - cpu0) / 1e3 / res["requests"]) if cpu0 is not None and res["requests"] else None
            data[k].append(res)
            ctx.log(f"{tag} round {r + 1}/{R} {k}: {res['rps']:.0f} req/s p50 {res['p50']:.3f} ms "
                    f"p99 {res['p99']:.3f} ms cpu {fmt(res['cpu_us'])} us/req errors {res['errors']}")
    pids1 = sorted(w["pid"] for w in corral_workers(ctx, sb))
    prof = {}
    for k in srv:
        p = perf_profile(ctx, f"{tag}-{k}", min(secs, 5), lambda k=k: wrk(ctx, ports[k], min(secs, 5), conns, close),
                         srv[k])
        if p:
            prof[k] = p
    for s in srv.values():
        s.stop()

    m = {k: {f: med(x[f] for x in v) for f in ("rps", "p50", "p99", "cpu_us")} for k, v in data.items()}
    for k, v in data.items():
        m[k]["min"] = min(x["rps"] for x in v)
        m[k]["max"] = max(x["rps"] for x in v)
        m[k]["errors"] = sum(x["errors"] for x in v)
    # ratios per round (same round = same noise), then the median of the ratios
    def rr(a_, b_, f="rps"):
        return med(x[f] / y[f] for x, y in zip(data[a_], data[b_]) if y[f])
    ratios = {"corral/ceiling": rr("corral", "ceiling"), "corral/apache": rr("corral", "apache"),
              "ceiling/apache": rr("ceiling", "apache"),
              "cpu corral/ceiling": rr("corral", "ceiling", "cpu_us"), "cpu apache/ceiling": rr("apache", "ceiling", "cpu_us")}
    title = ("1. New connection per request (`Connection: close`)" if close else "2. Keep-alive")
    md = f"### {title}\n\n"
    hdr = ' -H "Connection: close"' if close else ''
    md += (f"wrk -t1 -c{conns} -d{secs}s --latency{hdr}, "
           f"{R} rounds interleaved, medians; 8 workers each. Range = min..max req/s over the rounds.\n\n")
    rows = []
    for k, label in (("corral", "corral + hello-http"), ("apache", "Apache 2.4 prefork"),
                     ("ceiling", "C prefork ceiling")):
        x = m[k]
        rows.append([label, fmt(x["rps"], 0), f"{fmt(x['min'], 0)}..{fmt(x['max'], 0)}", f"{x['p50']:.3f}",
                     f"{x['p99']:.3f}", fmt(x["cpu_us"]), x["errors"]])
    md += table(["contender", "req/s", "range", "p50 ms", "p99 ms", "server CPU µs/req", "errors"], rows)
    goal_apache = 2.0 if close else 4.0
    md += (f"\nRatios (median of per-round ratios): corral/ceiling **{ratios['corral/ceiling']:.3f}** "
           f"(goal ≥ 0.95: {'met' if ratios['corral/ceiling'] >= 0.95 else 'missed'}); "
           f"corral/Apache **{ratios['corral/apache']:.2f}x** (goal ≥ {goal_apache:.0f}x: "
           f"{'met' if ratios['corral/apache'] >= goal_apache else 'missed'}); ceiling/Apache "
           f"{ratios['ceiling/apache']:.2f}x.\n\n"
           f"Server CPU per request, corral/ceiling: **{ratios['cpu corral/ceiling']:.3f}** (median of per-round "
           f"ratios; Apache/ceiling {ratios['cpu apache/ceiling']:.2f}). On a noisy machine this is the steadier "
           f"figure, and the one that decides when the server, not the client, is the bottleneck: corral would "
           f"then reach about {1 / ratios['cpu corral/ceiling']:.2f}x the ceiling's requests/s.\n")
    if pids0 != pids1:
        md += "\n**Warning:** corral's worker pids changed during the run (a worker was replaced).\n"
    if prof:
        md += "\nProfiles (perf record -p of the server processes, cpu-clock): " + ", ".join(f"`{p}`" for p in prof.values()) + "\n"
    # plot
    dat = ctx.results / f"{tag}.dat"
    dat.write_text("".join(f"\"{lab}\" {m[k]['rps']:.1f} {m[k]['min']:.1f} {m[k]['max']:.1f}\n"
                           for k, lab in (("corral", "corral"), ("apache", "Apache prefork"), ("ceiling", "C ceiling"))))
    png = gnuplot(ctx, tag, f"""set title "{title.split('. ', 1)[1].replace('`', '')}: requests/s (median, min..max over {R} rounds)"
set style data histograms
set style fill solid 0.6 border -1
set boxwidth 0.6
set yrange [0:*]
set ylabel "requests/s"
set grid ytics
unset key
plot '{dat}' using 0:2:xtic(1) with boxes lc rgb '#4477aa', '' using 0:2:3:4 with yerrorbars lc rgb 'black' pt 0
""")
    if png:
        md += f"\n![{tag}]({png})\n"
    return md, {"medians": m, "ratios": ratios, "rounds": data, "pids_stable": pids0 == pids1,
                "profiles": prof, "png": png}


# =====================================================================================
# 3: thundering herd
# =====================================================================================

def lock_kind(pid: int) -> str:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "?"
    for e in env:
        if e.startswith(b"CORRAL_LOCK_KIND="):
            return e.split(b"=", 1)[1].decode()
    return "?"


def herd(ctx: Ctx):
    R = rounds(ctx, 2, 1)
    nconn = 300 if ctx.quick else 2000
    gap_us = 2000
    configs = []
    for L in (1, 2):
        for mx in MUTEXES:
            for n in (4, 64):
                configs.append(("corral", mx, L, n))
        for n in (4, 64):
            configs.append(("apache", "apache", L, n))
    for n in (4, 64):
        configs.append(("ceiling", "blocking accept", 1, n))
    results: dict = {}
    auto_kind = {}
    for r in range(R):
        for cfg in order(configs, r):
            kind, mx, L, n = cfg
            ports = [ctx.port() for _ in range(L)]
            name = f"herd-{kind}-{mx.replace(' ', '_')}-{L}l-{n}w"
            if kind == "corral":
                s, sb = corral_yaml(ctx, name, ports, start=n, min_spare=n, max_spare=n, maximum=n, mutex=mx)
                ok = start_corral(s, sb, n) is not None
                pids = [w["pid"] for w in corral_workers(ctx, sb)]
                if mx == "auto" and pids:
                    auto_kind[L] = lock_kind(pids[0])
            elif kind == "apache":
                s = apache(ctx, name, ports, start=n, min_spare=n, max_spare=n, maximum=n, keepalive=False)
                ok = start_apache(s, n)
                time.sleep(1.2)  # let its maintenance settle
                pids = children(s.pid)
            else:
                s = ceiling(ctx, name, ports[0], n)
                ok = start_ceiling(s, n)
                pids = children(s.pid)
            time.sleep(0.5)
            sup0 = vol_ctxt([s.pid]) if kind == "corral" else None
            v0 = vol_ctxt(pids)
            res = bclient(ctx, ["seq", "-p", ",".join(map(str, ports)), "-n", nconn, "-g", gap_us])
            v1 = vol_ctxt(pids)
            sup1 = vol_ctxt([s.pid]) if kind == "corral" else None
            same = True
            if kind == "corral":
                same = sorted(pids) == sorted(w["pid"] for w in corral_workers(ctx, sb))
            else:
                same = sorted(pids) == sorted(children(s.pid))
            s.stop()
            okc = int(res.get("ok", 0))
            per = (v1 - v0) / okc if okc and ok else None
            sup = (sup1 - sup0) / okc if sup0 is not None and okc else None
            results.setdefault(cfg, []).append({"per_conn": per, "pids_stable": same, "ok": okc,
                                                "errors": res.get("errors"), "sup_per_conn": sup,
                                                "workers": len(pids)})
            ctx.log(f"herd round {r + 1}/{R} {kind} {mx} {L} listener(s) {n} workers: "
                    f"{fmt(per, 2)} cs/conn ({okc} conns, {len(pids)} workers{'' if same else ', PIDS CHANGED'})")
    md = "### 3. Thundering herd\n\n"
    md += (f"{nconn} short connections, one at a time, {gap_us / 1000:.0f} ms apart (workers idle between them); "
           "with 2 listeners they alternate. Figure: the sum of `voluntary_ctxt_switches` over every worker pid "
           f"(/proc/PID/status) per accepted connection; median over {R} round(s). `auto` resolved to "
           + ", ".join(f"`{v}` with {k} listener(s)" for k, v in sorted(auto_kind.items())) + ".\n\n")
    rows = []
    plotrows = []
    for L in (1, 2):
        for mx in MUTEXES + ["apache", "blocking accept"]:
            kind = "corral" if mx in MUTEXES else ("apache" if mx == "apache" else "ceiling")
            v = {n: results.get((kind, mx, L, n)) for n in (4, 64)}
            if not v[4]:
                continue
            a4, a64 = (med(x["per_conn"] for x in v[n]) for n in (4, 64))
            ratio = a64 / a4 if a4 else float("nan")
            stable = all(x["pids_stable"] for n in (4, 64) for x in v[n])
            label = (f"corral `{mx}`" + (f" (= {auto_kind.get(L, '?')})" if mx == "auto" else "")
                     if kind == "corral" else ("Apache prefork" if kind == "apache" else "C ceiling (blocking accept)"))
            goal = ""
            if mx == "auto":
                goal = "met" if ratio <= 1.05 else "**missed**"
            sup = med(x["sup_per_conn"] for n in (4, 64) for x in v[n]) if kind == "corral" else None
            rows.append([L, label, fmt(a4, 2), fmt(a64, 2), f"{ratio:.2f}", goal,
                         fmt(sup, 3) if sup is not None else "", "" if stable else "pids changed"])
            plotrows.append((f"{L}L {mx}", a4, a64))
    md += table(["listeners", "accept mutex", "cs/conn, 4 idle", "cs/conn, 64 idle", "64/4", "goal ≤ 1.05",
                 "supervisor cs/conn", "note"], rows)
    dat = ctx.results / "herd.dat"
    dat.write_text("".join(f"\"{lab}\" {a:.3f} {b:.3f}\n" for lab, a, b in plotrows))
    png = gnuplot(ctx, "herd", f"""set title "Thundering herd: worker context switches per connection"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.7 border -1
set logscale y
set yrange [0.5:*]
set ylabel "voluntary context switches / connection (log)"
set xtics rotate by -40
set grid ytics
set key top left
plot '{dat}' using 2:xtic(1) title '4 idle workers' lc rgb '#4477aa', '' using 3 title '64 idle workers' lc rgb '#ee6677'
""")
    if png:
        md += f"\n![herd]({png})\n"
    return md, {"results": {f"{k[0]}|{k[1]}|{k[2]}|{k[3]}": v for k, v in results.items()}, "auto": auto_kind,
                "png": png}


# =====================================================================================
# 4: fairness
# =====================================================================================

def fairness(ctx: Ctx):
    R = rounds(ctx, 3, 1)
    nconn = 10000
    threads = 4
    n = 8
    contenders = [("corral", mx) for mx in MUTEXES] + [("apache", None), ("ceiling", None)]
    res: dict = {}
    for r in range(R):
        for kind, mx in order(contenders, r):
            port = ctx.port()
            name = f"fair-{kind}-{mx or ''}"
            counts: list[int] = []
            if kind == "corral":
                s, sb = corral_yaml(ctx, name, [port], start=n, min_spare=n, max_spare=n, maximum=n, mutex=mx)
                start_corral(s, sb, n)
                before = {w["pid"]: w["requests"] for w in corral_workers(ctx, sb)}
                out = bclient(ctx, ["seq", "-p", port, "-n", nconn, "-c", threads])
                after = {w["pid"]: w["requests"] for w in corral_workers(ctx, sb)}
                counts = [after[p] - before.get(p, 0) for p in after]
                s.stop()
            elif kind == "apache":
                s = apache(ctx, name, [port], start=n, min_spare=n, max_spare=n, maximum=n, keepalive=False,
                           pid_log=True)
                start_apache(s, n)
                time.sleep(1.2)
                log = s.dir / "logs" / "pids.log"  # type: ignore[attr-defined]
                skip = len(log.read_text().splitlines()) if log.exists() else 0
                out = bclient(ctx, ["seq", "-p", port, "-n", nconn, "-c", threads])
                time.sleep(0.3)
                lines = log.read_text().splitlines()[skip:]
                per: dict = {}
                for p in children(s.pid):
                    per[str(p)] = 0
                for l in lines:
                    per[l.strip()] = per.get(l.strip(), 0) + 1
                counts = list(per.values())
                s.stop()
            else:
                s = ceiling(ctx, name, port, n)
                s.start()
                wait_port(port, 10, http=False)  # no request: the counters stay at 0
                t0 = time.monotonic()
                while len(children(s.pid)) < n and time.monotonic() - t0 < 10:
                    time.sleep(0.02)
                time.sleep(0.2)
                out = bclient(ctx, ["seq", "-p", port, "-n", nconn, "-c", threads])
                s.stop()
                text = s.logpath.read_text().split("###")[-1]
                counts = [int(x) for x in re.findall(r"child \d+ served (\d+)", text)]
            counts.sort()
            key = f"{kind}" + (f" {mx}" if mx else "")
            res.setdefault(key, []).append({"counts": counts, "jain": jain(counts), "ok": out.get("ok")})
            ctx.log(f"fairness round {r + 1}/{R} {key}: {counts} jain {jain(counts):.4f}")
    md = "### 4. Fairness\n\n"
    md += (f"{nconn} short connections (`Connection: close`), {threads} client threads each making connections "
           f"back to back, over 8 workers. Per-worker counts: corral from `requests` in `corral status --json` "
           f"(difference before/after), Apache from a CustomLog of `%P` only (this scenario's Apache logs the "
           f"child pid of each request), the ceiling from its children's own counters (printed at exit, as in "
           f"UNP Table 30.2). Jain's index = (Σx)²/(n·Σx²): 1 is perfectly even, 1/8 is one worker doing all. "
           f"Min/median/max are of the round with the median index; Jain is the median over {R} round(s).\n\n")
    rows = []
    plot = []
    for key, v in res.items():
        v_sorted = sorted(v, key=lambda x: x["jain"])
        mid = v_sorted[len(v_sorted) // 2]
        c = mid["counts"]
        label = {"corral auto": "corral default (`auto`)"}.get(key, key.replace("corral ", "corral `") + "`"
                                                               if key.startswith("corral") else key)
        label = {"apache": "Apache prefork", "ceiling": "C ceiling (blocking accept)"}.get(key, label)
        rows.append([label, len(c), min(c) if c else "", fmt(med(c), 0), max(c) if c else "", sum(c),
                     f"{med(x['jain'] for x in v):.4f}"])
        plot.append((key, c))
    md += table(["contender", "workers", "min", "median", "max", "total", "Jain"], rows)
    dat = ctx.results / "fairness.dat"
    width = max(len(c) for _, c in plot) if plot else 0
    lines = []
    for key, c in plot:
        cs = sorted(c, reverse=True) + [0] * (width - len(c))
        lines.append(f"\"{key}\" " + " ".join(str(x) for x in cs))
    dat.write_text("\n".join(lines) + "\n")
    cols = ", ".join(f"'' using {i + 2} notitle lc rgb '#{'4477aa' if i % 2 == 0 else '66ccee'}'" for i in range(1, width))
    png = gnuplot(ctx, "fairness", f"""set title "Fairness: connections per worker (10,000 short connections, 8 workers; sorted)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.7 border -1
set ylabel "connections served"
set xtics rotate by -30
set grid ytics
set yrange [0:*]
plot '{dat}' using 2:xtic(1) notitle lc rgb '#4477aa'{', ' + cols if cols else ''}
""")
    if png:
        md += f"\n![fairness]({png})\n"
    return md, {"results": res, "png": png}


# =====================================================================================
# 5: scale
# =====================================================================================

@contextmanager
def unpinned(ctx: Ctx):
    """Clients and servers on any cpu for the scenario run inside."""
    saved = ctx.client_cpus, ctx.server_cpus
    ctx.client_cpus = ctx.server_cpus = ""
    try:
        yield
    finally:
        ctx.client_cpus, ctx.server_cpus = saved


def scale(ctx: Ctx):
    """Unpinned: starting 1024 processes is CPU work that may use both cores."""
    with unpinned(ctx):
        return _scale(ctx)


def _scale(ctx: Ctx):
    sizes = [8, 64, 256, 1024]
    R = rounds(ctx, 2, 1)
    win = 3 if ctx.quick else 10
    res: dict = {}
    for r in range(R):
        for n in order(sizes, r):
            port = ctx.port()
            s, sb = corral_yaml(ctx, f"scale-{n}", [port], start=n, min_spare=n, max_spare=n, maximum=n)
            t0 = time.monotonic()
            s.start()
            from common import wait_corral_idle
            t_idle = wait_corral_idle(ctx, sb, n, timeout=120, poll=0.01)
            startup = (time.monotonic() - t0) if t_idle is not None else None
            start_cpu_ms = (s.cpu_ns() or 0) / 1e6 / n
            # the time of one `corral status --json` (it bounds the start-up resolution)
            ts = time.monotonic()
            corral_status(ctx, sb)
            status_s = time.monotonic() - ts
            time.sleep(1.0)
            pid = s.pid
            # at rest
            c0, v0 = sched_ns(pid), vol_ctxt([pid])
            time.sleep(win)
            c1, v1 = sched_ns(pid), vol_ctxt([pid])
            rest_cpu = (c1 - c0) / (win * 1e9) * 100 if c0 is not None and c1 is not None else None
            rest_wake = (v1 - v0) / win
            rest_rss = rss_kb(pid)
            # under load: wrk with a new connection per request (workers change state all the time)
            peak = [rest_rss or 0]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    v = rss_kb(pid)
                    if v:
                        peak[0] = max(peak[0], v)
                    time.sleep(0.2)
            th = threading.Thread(target=sample)
            th.start()
            c0 = sched_ns(pid)
            w = wrk(ctx, port, win, 16, True)
            c1 = sched_ns(pid)
            stop.set()
            th.join()
            load_cpu = (c1 - c0) / (win * 1e9) * 100 if c0 is not None and c1 is not None else None
            workers = corral_workers(ctx, sb)
            wpid = workers[0]["pid"] if workers else None
            wrss = rss_kb(wpid) if wpid else None
            wpss = None
            if wpid:
                try:
                    for line in Path(f"/proc/{wpid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Pss:"):
                            wpss = int(line.split()[1])
                except OSError:
                    pass
            s.stop(timeout=60)
            # the ceiling with as many children, same load, for reference
            cport = ctx.port()
            ce = ceiling(ctx, f"scale-ceiling-{n}", cport, n)
            start_ceiling(ce, n, timeout=60)
            cw = wrk(ctx, cport, win, 16, True)
            ce.stop(timeout=60)
            row = {"startup_s": startup, "start_cpu_ms_per_worker": start_cpu_ms, "ceiling_rps": cw["rps"], "status_s": status_s, "rest_cpu_pct": rest_cpu, "rest_wakeups_s": rest_wake,
                   "rest_rss_kb": rest_rss, "load_cpu_pct": load_cpu, "load_rss_kb": peak[0], "load_rps": w["rps"],
                   "worker_rss_kb": wrss, "worker_pss_kb": wpss}
            res.setdefault(n, []).append(row)
            ctx.log(f"scale round {r + 1}/{R} {n} workers: start {fmt(startup, 3)} s, rest {fmt(rest_cpu, 3)}% "
                    f"{rest_wake:.1f} wakeups/s RSS {rest_rss} kB; load {fmt(load_cpu, 2)}% RSS {peak[0]} kB "
                    f"({w['rps']:.0f} req/s; ceiling {cw['rps']:.0f}); start CPU {start_cpu_ms:.1f} ms/worker")
    md = "### 5. Scale\n\n"
    md += (f"corral + hello-http with start = min_spare = max_spare = max = N, not pinned (start-up may use both "
           f"cores). Start-up: from launching `corral run` until N slots of the scoreboard file read `idle` (read "
           f"directly every 10 ms, as docs/PROTOCOL.md lays it out; then confirmed by one `corral status --json`); "
           f"start CPU = CPU of the whole tree (supervisor and workers, cgroup) until then, per worker. At rest: the "
           f"supervisor's CPU from /proc/PID/schedstat (ns on cpu) over {win} s, its wake-ups (voluntary context "
           f"switches) per second, VmRSS. Under load: wrk -c16 `Connection: close` for {win} s; peak VmRSS sampled "
           f"every 200 ms; the C ceiling with N children under the same load, for reference. Medians over {R} round(s).\n\n")
    rows = []
    for n in sizes:
        v = res.get(n, [])
        g = lambda f: med(x[f] for x in v)
        rows.append([n, fmt(g("startup_s"), 3), fmt(g("start_cpu_ms_per_worker"), 1), fmt(g("status_s"), 3),
                     fmt(g("rest_cpu_pct"), 3), fmt(g("rest_wakeups_s"), 1), f"{g('rest_rss_kb') / 1024:.1f}",
                     fmt(g("load_cpu_pct"), 2), f"{g('load_rss_kb') / 1024:.1f}", fmt(g("load_rps"), 0),
                     fmt(g("ceiling_rps"), 0), fmt(g("worker_pss_kb"), 0)])
    md += table(["workers", "start-up s", "start CPU ms/worker", "one status call s", "supervisor CPU % at rest",
                 "wake-ups/s at rest", "RSS MB at rest", "supervisor CPU % under load", "peak RSS MB under load",
                 "req/s under load", "ceiling req/s, same N", "worker PSS kB"], rows)
    if 1024 in res:
        v = res[1024]
        cpu, rss, st = med(x["rest_cpu_pct"] for x in v), med(x["rest_rss_kb"] for x in v), med(x["startup_s"] for x in v)
        md += (f"\nGoals at 1024 workers: CPU at rest {fmt(cpu, 3)}% (goal < 0.1%: {'met' if cpu < 0.1 else '**missed**'}), "
               f"RSS {rss / 1024:.1f} MB (goal < 10 MB: {'met' if rss < 10240 else '**missed**'}), start-up {fmt(st, 2)} s "
               f"(goal < 2 s: {'met' if st is not None and st < 2 else '**missed**'}).\n")
    dat = ctx.results / "scale.dat"
    dat.write_text("".join(f"{n} {med(x['startup_s'] for x in res[n]) or 0:.4f} {med(x['rest_rss_kb'] for x in res[n]) / 1024:.3f} "
                           f"{med(x['load_rss_kb'] for x in res[n]) / 1024:.3f}\n" for n in sizes if n in res))
    png = gnuplot(ctx, "scale", f"""set title "Scale: start-up time and supervisor RSS"
set logscale x 2
set xlabel "workers"
set ylabel "start-up until all idle (s)"
set y2label "supervisor RSS (MB)"
set y2tics
set ytics nomirror
set yrange [0:*]
set y2range [0:*]
set grid
set key top left
plot '{dat}' using 1:2 with linespoints lw 2 title 'start-up (s)', '' using 1:3 axes x1y2 with linespoints lw 2 title 'RSS at rest (MB)', '' using 1:4 axes x1y2 with linespoints lw 2 dt 2 title 'peak RSS under load (MB)'
""")
    if png:
        md += f"\n![scale]({png})\n"
    return md, {"results": res, "png": png}


# =====================================================================================
# 6: inetd
# =====================================================================================

INETD_POOL = {"start": 16, "min_spare": 16, "max_spare": 32, "max": 64}


def inetd(ctx: Ctx):
    """Unpinned: the clients cost little next to fork+exec, and a server held to one
    core would saturate below 150 connections/s on this machine."""
    with unpinned(ctx):
        return _inetd(ctx)


def _inetd(ctx: Ctx):
    R = rounds(ctx, 3, 1)
    secs = 3 if ctx.quick else 10
    psecs = 4 if ctx.quick else 10
    prog = ctx.bin / "hello1"
    ports = {k: ctx.port() for k in ("corral", "tcpserver", "xinetd", "systemd")}
    p = INETD_POOL
    c, sb = corral_yaml(ctx, "inetd-corral", [ports["corral"]], start=p["start"], min_spare=p["min_spare"],
                        max_spare=p["max_spare"], maximum=p["max"], mode="inetd", command=[str(prog)])
    srv = {"corral": c, "tcpserver": tcpserver(ctx, "inetd-tcpserver", ports["tcpserver"], prog),
           "xinetd": xinetd(ctx, "inetd-xinetd", ports["xinetd"], prog),
           "systemd": socket_activate(ctx, "inetd-systemd", ports["systemd"], prog)}
    # systemd tools log every connection at info level; keep that off the hot path
    srv["systemd"].env["SYSTEMD_LOG_LEVEL"] = "warning"
    start_corral(c, sb, p["start"])
    for k in ("tcpserver", "xinetd", "systemd"):
        srv[k].start()
        if not wait_port(ports[k], 10):
            ctx.log(f"inetd: {k} not answering (see {srv[k].logpath})")
    for k in srv:
        wrk(ctx, ports[k], 1, 16, True, path="/")
    sat = {k: [] for k in srv}
    paced = {(k, rate): [] for k in srv for rate in (50, 150)}
    for r in range(R):
        for k in order(list(srv), r):
            cpu0 = srv[k].cpu_ns()
            w = wrk(ctx, ports[k], secs, 16, True, path="/")
            cpu1 = srv[k].cpu_ns()
            w.pop("raw")
            w["cpu_us"] = (cpu1 - cpu0) / 1e3 / w["requests"] if cpu0 is not None and w["requests"] else None
            sat[k].append(w)
            ctx.log(f"inetd round {r + 1}/{R} {k} 16 clients: {w['rps']:.0f} conn/s p50 {w['p50']:.2f} ms "
                    f"p99 {w['p99']:.2f} ms cpu {fmt(w['cpu_us'])} us/conn errors {w['errors']}")
        for rate in (50, 150):
            for k in order(list(srv), r):
                time.sleep(0.5)
                cpu0 = srv[k].cpu_ns()
                out = ctx.results / f"inetd-paced-{k}-{rate}-r{r}.ms"
                b = bclient(ctx, ["paced", "-p", ports[k], "-r", rate, "-d", psecs, "-t", 5000, "-o", out])
                cpu1 = srv[k].cpu_ns()
                okc = b.get("ok", 0)
                b["cpu_us"] = (cpu1 - cpu0) / 1e3 / okc if cpu0 is not None and okc else None
                paced[(k, rate)].append(b)
                ctx.log(f"inetd round {r + 1}/{R} {k} paced {rate}/s: p50 {fmt(b.get('lat_p50_ms'), 2)} ms "
                        f"p99 {fmt(b.get('lat_p99_ms'), 2)} ms ok {okc:.0f}/{b.get('attempted', 0):.0f} "
                        f"cpu {fmt(b['cpu_us'])} us/conn")
    prof = perf_profile(ctx, "inetd-corral", min(secs, 5), lambda: wrk(ctx, ports["corral"], min(secs, 5), 16, True, path="/"), srv["corral"])
    prof_tcp = perf_profile(ctx, "inetd-tcpserver", min(secs, 5),
                            lambda: wrk(ctx, ports["tcpserver"], min(secs, 5), 16, True, path="/"), srv["tcpserver"])
    for s in srv.values():
        s.stop()
    labels = {"corral": "corral `--inetd`", "tcpserver": "tcpserver (ucspi-tcp)", "xinetd": "xinetd",
              "systemd": "systemd-socket-activate --inetd -a"}
    md = "### 6. inetd mode (issue 5)\n\n"
    md += (f"The same tiny dynamically linked C program (bench/inetd/hello1.c: read one request, answer, exit). corral: "
           f"`mode: inetd`, workers start {p['start']}, min_spare {p['min_spare']}, max_spare {p['max_spare']}, "
           f"max {p['max']}; tcpserver -c 64 -H -R -l0; xinetd -dontfork with its own config (UNLISTED, "
           f"instances 64, cps 100000, NOLIBWRAP, no logging); systemd-socket-activate with SYSTEMD_LOG_LEVEL=warning. "
           f"Saturated: wrk -c16 `Connection: close` for {secs} s. Paced: bclient paced, open loop, evenly spaced "
           f"connection attempts for {psecs} s, latency from the scheduled start to the server's close. Not pinned: "
           f"client and servers share both cores (the clients' cost is small next to fork+exec). Server CPU "
           f"per connection: the cpuacct cgroup of each server's whole process tree. {R} round(s), medians.\n\n")
    rows = []
    for k in srv:
        s_ = sat[k]
        row = [labels[k], fmt(med(x["rps"] for x in s_), 0), f"{med(x['p50'] for x in s_):.2f}",
               f"{med(x['p99'] for x in s_):.2f}", fmt(med(x["cpu_us"] for x in s_), 0)]
        for rate in (50, 150):
            v = paced[(k, rate)]
            row += [f"{med(x.get('lat_p50_ms') for x in v):.2f}", f"{med(x.get('lat_p99_ms') for x in v):.2f}",
                    fmt(med(x["cpu_us"] for x in v), 0)]
        err = sum(x["errors"] for x in s_) + sum(x.get("errors", 0) + x.get("timeouts", 0) for rate in (50, 150)
                                                  for x in paced[(k, rate)])
        row.append(int(err))
        rows.append(row)
    md += table(["contender", "conn/s @16", "p50 ms @16", "p99 ms @16", "CPU µs/conn @16", "p50 ms @50/s",
                 "p99 ms @50/s", "CPU µs/conn @50/s", "p50 ms @150/s", "p99 ms @150/s", "CPU µs/conn @150/s",
                 "errors"], rows)
    # goals
    best_rate = max(med(x["rps"] for x in sat[k]) for k in srv if k != "corral")
    crate = med(x["rps"] for x in sat["corral"])
    tcp_cpu = med(x["cpu_us"] for x in sat["tcpserver"])
    c_cpu = med(x["cpu_us"] for x in sat["corral"])
    md += (f"\nGoals: conn/s at 16 clients {fmt(crate, 0)} against the best peer's {fmt(best_rate, 0)} "
           f"(ratio {crate / best_rate:.2f}, goal ≥ 1: {'met' if crate >= best_rate else '**missed**'}); CPU per "
           f"connection {fmt(c_cpu, 0)} µs against tcpserver's {fmt(tcp_cpu, 0)} µs (goal ≤: "
           f"{'met' if c_cpu <= tcp_cpu else '**missed**'}).")
    for rate in (50, 150):
        for q in ("p50", "p99"):
            best = min(med(x.get(f"lat_{q}_ms") for x in paced[(k, rate)]) for k in srv if k != "corral")
            mine = med(x.get(f"lat_{q}_ms") for x in paced[("corral", rate)])
            md += (f" {q} at {rate}/s: {mine:.2f} ms against the best peer's {best:.2f} ms "
                   f"({'met' if mine <= best else '**missed**'}).")
    md += "\n"
    if prof:
        md += f"\nProfiles at 16 clients (perf record -p of the server processes, cpu-clock): `{prof}`" + (f", `{prof_tcp}`" if prof_tcp else "") + "\n"
    # plot: p50/p99 for the paced rates
    dat = ctx.results / "inetd.dat"
    lines = []
    for k in srv:
        vals = []
        for rate in (50, 150):
            v = paced[(k, rate)]
            vals += [med(x.get("lat_p50_ms") for x in v), med(x.get("lat_p99_ms") for x in v)]
        lines.append(f"\"{k}\" " + " ".join(f"{x:.3f}" for x in vals) + f" {med(x['rps'] for x in sat[k]):.1f}")
    dat.write_text("\n".join(lines) + "\n")
    png = gnuplot(ctx, "inetd", f"""set title "inetd-style: latency with paced arrivals (left) and saturated rate (right)"
set multiplot layout 1,2
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.7 border -1
set ylabel "ms (log scale)"
set logscale y
set yrange [1:100000]
set grid ytics
set key top left
set title "latency, paced open loop"
plot '{dat}' using 2:xtic(1) title 'p50 @50/s', '' using 3 title 'p99 @50/s', '' using 4 title 'p50 @150/s', '' using 5 title 'p99 @150/s'
set title "connections/s, 16 clients"
set ylabel "connections/s"
unset logscale y
set yrange [0:*]
unset key
plot '{dat}' using 6:xtic(1) lc rgb '#4477aa'
unset multiplot
""")
    if png:
        md += f"\n![inetd]({png})\n"
    return md, {"saturated": sat, "paced": {f"{k}|{r}": v for (k, r), v in paced.items()},
                "profiles": [prof, prof_tcp], "png": png}


# =====================================================================================
# 7: burst
# =====================================================================================

class Sampler:
    """Samples the worker pids (children of `pid`) every `dt` s: births and deaths."""

    def __init__(self, pid: int, dt: float = 0.01):
        self.pid, self.dt = pid, dt
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, int]] = []
        self.seen: set[int] = set(children(pid))
        self.start_set = set(self.seen)
        self.births: list[float] = []
        self.deaths: list[float] = []
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        prev = set(self.seen)
        while not self._stop.is_set():
            now = time.monotonic() - self.t0
            cur = set(children(self.pid))
            for p in cur - prev:
                if p not in self.seen:
                    self.births.append(now)
                    self.seen.add(p)
            for _ in prev - cur:
                self.deaths.append(now)
            prev = cur
            self.timeline.append((now, len(cur)))
            time.sleep(self.dt)

    def start(self):
        self.t0 = time.monotonic()
        self._th.start()
        return self

    def stop(self):
        self._stop.set()
        self._th.join()


def burst_server(ctx: Ctx, kind: str, port: int, name: str):
    """A pool at rest: min_spare 2, max_spare 8, max 64 (start 2); returns (server, sb)."""
    if kind == "corral":
        s, sb = corral_yaml(ctx, name, [port], start=2, min_spare=2, max_spare=8, maximum=64)
        start_corral(s, sb, 2)
        return s, sb
    if kind == "apache":
        s = apache(ctx, name, [port], start=2, min_spare=2, max_spare=8, maximum=64, keepalive=True,
                   keepalive_timeout=10)
        start_apache(s, 2)
        return s, None
    s = ceiling(ctx, name, port, 64)
    start_ceiling(s, 64)
    return s, None


def count_log(path: Path, since_pos: int, pattern: str) -> int:
    with open(path, "rb") as f:
        f.seek(since_pos)
        return len(re.findall(pattern.encode(), f.read()))


def burst(ctx: Ctx):
    """Unpinned: growing a pool is process creation, CPU work that may use both cores;
    the clients (64 connections) cost next to nothing."""
    with unpinned(ctx):
        return _burst(ctx)


def _burst(ctx: Ctx):
    R = rounds(ctx, 3, 1)
    nclients, hold_ms = 64, 2000
    osc_secs = 15 if ctx.quick else 60
    kinds = ["corral", "apache", "ceiling"]
    res: dict = {k: [] for k in kinds}
    timelines = {}
    for r in range(R):
        for kind in order(kinds, r):
            port = ctx.port()
            s, sb = burst_server(ctx, kind, port, f"burst-{kind}")
            time.sleep(3.0)  # the pool at rest
            logpos = s.logpath.stat().st_size
            smp = Sampler(s.pid).start()
            before = len(smp.start_set)
            out = ctx.results / f"burst-{kind}-r{r}.ms"
            b = bclient(ctx, ["hold", "-p", port, "-n", nclients, "-H", hold_ms, "-t", 30000, "-o", out])
            time.sleep(0.5)
            smp.stop()
            served_t = b.get("all_served_ms", float("nan"))
            forks = len(smp.births)
            log_forks = count_log(s.logpath, logpos, r"started worker") if kind == "corral" else None
            s.stop()
            row = {"all_served_ms": served_t, "p50_ms": b.get("wait_p50_ms"), "p99_ms": b.get("wait_p99_ms"),
                   "served": b.get("served"), "errors": b.get("errors"), "forks": forks, "log_forks": log_forks,
                   "workers_before": before, "workers_max": max((n for _, n in smp.timeline), default=0)}
            res[kind].append(row)
            if r == 0:
                timelines[kind] = (smp.timeline, out)
            ctx.log(f"burst round {r + 1}/{R} {kind}: all {nclients} served in {fmt(served_t, 1)} ms, p50 "
                    f"{fmt(row['p50_ms'], 1)} ms p99 {fmt(row['p99_ms'], 1)} ms, forks {forks}"
                    f"{'' if log_forks is None else f' (log: {log_forks})'}, workers {before} -> {row['workers_max']}")
    # oscillation: corral and Apache, once each per half-period. 3 s is the half-period
    # of the test; 8 s is longer than corral's retire hysteresis (3 s), so that
    # its retiring shows too.
    halves = [3000] if ctx.quick else [3000, 8000]
    osc = {}
    for half in halves:
        for kind in ("corral", "apache"):
            port = ctx.port()
            s, sb = burst_server(ctx, kind, port, f"osc-{kind}-{half}")
            time.sleep(3.0)
            logpos = s.logpath.stat().st_size
            smp = Sampler(s.pid, dt=0.02).start()
            b = bclient(ctx, ["osc", "-p", port, "-d", osc_secs, "-a", 40, "-b", 4, "-P", half, "-t", 30000],
                        timeout=osc_secs + 120)
            smp.stop()
            # steady state: after the first high and low phase
            cut = 2 * half / 1000
            late_b = sum(1 for t in smp.births if t >= cut)
            late_d = sum(1 for t in smp.deaths if t >= cut)
            log_forks = count_log(s.logpath, logpos, r"started worker") if kind == "corral" else None
            log_retire = count_log(s.logpath, logpos, r"retiring worker") if kind == "corral" else None
            s.stop()
            osc[(kind, half)] = {"forks": len(smp.births), "exits": len(smp.deaths), "forks_steady": late_b,
                                 "exits_steady": late_d, "log_forks": log_forks, "log_retires": log_retire,
                                 "phases": b.get("phases"), "worst_all_served_ms": b.get("worst_all_served_ms"),
                                 "errors": b.get("errors"), "timeline": smp.timeline}
            ctx.log(f"oscillation {kind} {osc_secs}s, {half / 1000:g} s phases: forks {len(smp.births)} exits "
                    f"{len(smp.deaths)} (steady: {late_b}+{late_d}); worst phase all-served "
                    f"{fmt(b.get('worst_all_served_ms'), 0)} ms")
    labels = {"corral": "corral + hello-http", "apache": "Apache 2.4 prefork",
              "ceiling": "C ceiling, 64 pre-forked (reference)"}
    md = "### 7. Burst (issue 4)\n\n"
    md += (f"A pool at rest (start 2, min_spare 2, max_spare 8, max 64; Apache: StartServers 2, MinSpareServers 2, "
           f"MaxSpareServers 8, MaxRequestWorkers 64, KeepAlive On, KeepAliveTimeout 10), then {nclients} clients at "
           f"once, each sending one keep-alive request, reading the answer, and holding the idle keep-alive "
           f"connection {hold_ms / 1000:.0f} s (which holds one prefork worker or Apache child each). Wait = from the "
           f"burst start to the client's answer; 'all served' = the last answer. Forks: new worker pids seen by "
           f"sampling the server's children every 10 ms (corral: also its log's 'started worker' lines). Not "
           f"pinned: client and servers share both cores. {R} round(s), medians.\n\n")
    rows = []
    for k in kinds:
        v = res[k]
        rows.append([labels[k], fmt(med(x["all_served_ms"] for x in v), 0), fmt(med(x["p50_ms"] for x in v), 0),
                     fmt(med(x["p99_ms"] for x in v), 0), fmt(med(x["forks"] for x in v), 0),
                     f"{med(x['workers_before'] for x in v):.0f} → {med(x['workers_max'] for x in v):.0f}",
                     int(sum((x["errors"] or 0) for x in v))])
    md += table(["contender", "all 64 served, ms", "p50 wait ms", "p99 wait ms", "forks in burst", "workers",
                 "errors"], rows)
    cm = med(x["all_served_ms"] for x in res["corral"])
    am = med(x["all_served_ms"] for x in res["apache"])
    md += (f"\nGoal: all 64 served within 200 ms: corral {fmt(cm, 0)} ms ({'met' if cm <= 200 else '**missed**'}); "
           f"Apache {fmt(am, 0)} ms; corral/Apache time ratio {cm / am:.2f}.\n\n")
    md += (f"Oscillating load for {osc_secs} s: phases alternating 40 and 4 held connections (bclient osc -a 40 -b 4 "
           f"-P HALF), each connection held to the end of its phase. Churn counted from sampled worker pids (every "
           f"20 ms); 'steady' leaves out the first high+low cycle, when the pool grows for the first time.\n\n")
    orows = []
    for half in halves:
        for k in ("corral", "apache"):
            o = osc[(k, half)]
            orows.append([labels[k], f"{half / 1000:g} s", o["forks"], o["exits"], o["forks"] + o["exits"],
                          o["forks_steady"] + o["exits_steady"], fmt(o["worst_all_served_ms"], 0),
                          int(o["errors"] or 0)])
    md += table(["contender", "phase", "forks", "exits/kills", "forks+kills", "forks+kills, steady",
                 "worst phase: all served ms", "errors"], orows)
    # plots: worker count over time in the burst; cumulative served
    dats = []
    for k, (tl, out) in timelines.items():
        d = ctx.results / f"burst-timeline-{k}.dat"
        d.write_text("".join(f"{t:.3f} {n}\n" for t, n in tl))
        dats.append((k, d, out))
    plots = []
    colors = {"corral": "#4477aa", "apache": "#ee6677", "ceiling": "#228833"}
    for k, d, out in dats:
        if out.exists():
            cdf = ctx.results / f"burst-served-{k}.dat"
            ws = sorted(float(x) for x in out.read_text().split())
            cdf.write_text("".join(f"{w / 1000:.4f} {i + 1}\n" for i, w in enumerate(ws)))
            plots.append(f"'{cdf}' using 1:2 with steps lw 2 lc rgb '{colors[k]}' title '{k}: clients served'")
        plots.append(f"'{d}' using 1:2 with lines dt 2 lw 2 lc rgb '{colors[k]}' title '{k}: worker processes'")
    png = gnuplot(ctx, "burst", f"""set title "Burst of 64 held connections onto a pool at rest (min_spare 2, max_spare 8, max 64)"
set xlabel "seconds since the burst"
set ylabel "count"
set yrange [0:70]
set xrange [0:*]
set grid
set key bottom right
plot {", ".join(plots)}
""")
    if png:
        md += f"\n![burst]({png})\n"
    odat = []
    for half in halves:
        for k in ("corral", "apache"):
            d = ctx.results / f"osc-timeline-{k}-{half}.dat"
            d.write_text("".join(f"{t:.3f} {n}\n" for t, n in osc[(k, half)]["timeline"]))
            odat.append(f"'{d}' using 1:2 with lines lw 2 lc rgb '{colors[k]}' dt {1 if half == halves[0] else 2} "
                        f"title '{k}, {half / 1000:g} s phases'")
    png2 = gnuplot(ctx, "oscillation", f"""set title "Oscillating load (phases of 40 and 4 held connections): worker processes"
set xlabel "seconds"
set ylabel "worker processes"
set yrange [0:75]
set grid
set key top right
plot {", ".join(odat)}
""")
    if png2:
        md += f"\n![oscillation]({png2})\n"
    for k in osc:
        osc[k].pop("timeline")
    return md, {"burst": res, "osc": {f"{k}|{h}": v for (k, h), v in osc.items()}, "png": [png, png2]}


# =====================================================================================
# 8: churn (issue 12): a pool that is used up by every connection
# =====================================================================================

CHURN_POOL = {"start": 8, "min_spare": 4, "max_spare": 16, "max": 64}


def churn(ctx: Ctx):
    """Unpinned, like inetd and burst: every connection costs a process creation, CPU
    work that may use both cores; the client (16 threads of blocking connections)
    costs little next to it."""
    with unpinned(ctx):
        return _churn(ctx)


def _seq_file(path: Path) -> list[tuple[float, float]]:
    out = []
    try:
        for line in path.read_text().splitlines():
            a, b = line.split()
            out.append((float(a), float(b)))
    except (OSError, ValueError):
        pass
    return out


def _churn(ctx: Ctx):
    R = rounds(ctx, 5, 2)
    secs = 3 if ctx.quick else 5
    nmax = 100000  # the count bound (the reference without recycling reaches ~15,000/s); -d secs is the time bound
    clients = 16
    prog = ctx.bin / "hello1"
    p = CHURN_POOL
    pool = dict(start=p["start"], min_spare=p["min_spare"], max_spare=p["max_spare"], maximum=p["max"])
    keys = ["corral-inetd", "tcpserver", "xinetd", "systemd", "corral-mr1", "corral-mr0", "apache-mr1"]
    ports = {k: ctx.port() for k in keys}
    srv: dict[str, Server] = {}
    sbs: dict[str, Path] = {}
    srv["corral-inetd"], sbs["corral-inetd"] = corral_yaml(ctx, "churn-corral-inetd", [ports["corral-inetd"]],
                                                           mode="inetd", command=[str(prog)], **pool)
    srv["tcpserver"] = tcpserver(ctx, "churn-tcpserver", ports["tcpserver"], prog, maxconc=p["max"])
    srv["xinetd"] = xinetd(ctx, "churn-xinetd", ports["xinetd"], prog, instances=p["max"])
    srv["systemd"] = socket_activate(ctx, "churn-systemd", ports["systemd"], prog)
    srv["systemd"].env["SYSTEMD_LOG_LEVEL"] = "warning"  # it logs every connection at info level
    srv["corral-mr1"], sbs["corral-mr1"] = corral_yaml(ctx, "churn-corral-mr1", [ports["corral-mr1"]],
                                                       max_requests=1, **pool)
    srv["corral-mr0"], sbs["corral-mr0"] = corral_yaml(ctx, "churn-corral-mr0", [ports["corral-mr0"]], **pool)
    srv["apache-mr1"] = apache(ctx, "churn-apache-mr1", [ports["apache-mr1"]], start=p["start"],
                               min_spare=p["min_spare"], max_spare=p["max_spare"], maximum=p["max"],
                               keepalive=False, max_conn_per_child=1)
    for k in ("corral-inetd", "corral-mr1", "corral-mr0"):
        start_corral(srv[k], sbs[k], p["start"])
    start_apache(srv["apache-mr1"], p["start"])
    for k in ("tcpserver", "xinetd", "systemd"):
        srv[k].start()
        if not wait_port(ports[k], 10):
            ctx.log(f"churn: {k} not answering (see {srv[k].logpath})")
    path = {k: ("/hello.txt" if k == "apache-mr1" else "/") for k in keys}

    def load(k: str, s: float, out: Path | None = None) -> dict:
        args = ["seq", "-p", ports[k], "-n", nmax, "-c", clients, "-d", s, "-t", 5000, "-u", path[k]]
        if out:
            args += ["-o", out]
        return bclient(ctx, args, timeout=s + 60)

    for k in keys:  # warm-up
        load(k, 1)
    time.sleep(1.0)  # pools back at rest
    data: dict = {k: [] for k in keys}
    for r in range(R):
        for k in order(keys, r):
            s = srv[k]
            time.sleep(0.5)
            smp = Sampler(s.pid).start()
            before = len(smp.start_set)
            cpu0 = s.cpu_ns()
            out = ctx.results / f"churn-{k}-r{r}.seq"
            b = load(k, secs, out)
            cpu1 = s.cpu_ns()
            smp.stop()
            okc = int(b.get("ok", 0))
            row = {"rate": b.get("rate"), "ok": okc, "errors": int(b.get("errors", 0)),
                   "p50": b.get("lat_p50_ms"), "p99": b.get("lat_p99_ms"), "p999": b.get("lat_p999_ms"),
                   "max": b.get("lat_max_ms"), "cpu_us": (cpu1 - cpu0) / 1e3 / okc if cpu0 is not None and okc else None,
                   "procs_before": before, "procs_max": max((n for _, n in smp.timeline), default=0),
                   "procs_min": min((n for _, n in smp.timeline), default=0), "spawns": len(smp.births),
                   "over_100ms": sum(1 for _, l in _seq_file(out) if l > 100), "client_error": b.get("error")}
            data[k].append(row)
            ctx.log(f"churn round {r + 1}/{R} {k}: {fmt(row['rate'], 0)} conn/s p50 {fmt(row['p50'], 2)} p99 "
                    f"{fmt(row['p99'], 2)} p99.9 {fmt(row['p999'], 2)} max {fmt(row['max'], 1)} ms, "
                    f"{row['over_100ms']} over 100 ms, errors {row['errors']}, cpu {fmt(row['cpu_us'], 0)} us/conn, "
                    f"processes {before} -> {row['procs_min']}..{row['procs_max']}, {row['spawns']} new pids")
    prof = {}
    for k in ("corral-inetd", "tcpserver", "corral-mr1"):
        pr = perf_profile(ctx, f"churn-{k}", min(secs, 5), lambda k=k: load(k, min(secs, 5)), srv[k])
        if pr:
            prof[k] = pr
    for s in srv.values():
        s.stop()

    def m(k: str, f: str) -> float:
        return med(x[f] for x in data[k])

    def rr(a_: str, b_: str, f: str) -> float:
        return med(x[f] / y[f] for x, y in zip(data[a_], data[b_]) if x[f] is not None and y[f])

    labels = {"corral-inetd": "corral `mode: inetd` + hello1", "tcpserver": "tcpserver + hello1",
              "xinetd": "xinetd + hello1", "systemd": "systemd-socket-activate --inetd -a + hello1",
              "corral-mr1": "corral prefork, `max_requests: 1` + hello-http",
              "corral-mr0": "corral prefork, `max_requests: 0` + hello-http (reference)",
              "apache-mr1": "Apache prefork, MaxConnectionsPerChild 1 (reference)"}
    md = "### 8. Churn (issue 12)\n\n"
    md += (f"Every connection uses up a process. {clients} client threads (`bclient seq -c {clients} -d {secs} -n "
           f"{nmax} -t 5000`), each making one new connection after the other (`GET`, `Connection: close`, read to "
           f"EOF; latency from connect to EOF) for {secs} s. Pools: start {p['start']}, min_spare {p['min_spare']}, "
           f"max_spare {p['max_spare']}, max {p['max']} (Apache: StartServers, Min/MaxSpareServers, "
           f"MaxRequestWorkers the same; tcpserver -c {p['max']}; xinetd instances {p['max']}). inetd peers run "
           f"bench/inetd/hello1.c (dynamically linked; reads the request, answers at once, exits). Processes: the "
           f"server's children sampled every 10 ms (min..max during the load; 'new pids' = pids seen for the first "
           f"time). Not pinned. {R} rounds, contenders alternating order, medians; ratios are medians of per-round "
           f"ratios.\n\n")
    rows = []
    for k in keys:
        v = data[k]
        rows.append([labels[k], fmt(m(k, "rate"), 0), fmt(m(k, "p50"), 2), fmt(m(k, "p99"), 2), fmt(m(k, "p999"), 2),
                     fmt(max((x["p999"] or 0) for x in v), 1), fmt(m(k, "max"), 1), fmt(max((x["max"] or 0) for x in v), 1),
                     int(sum(x["over_100ms"] for x in v)), fmt(m(k, "cpu_us"), 0),
                     f"{min(x['procs_min'] for x in v)}..{max(x['procs_max'] for x in v)}",
                     int(sum(x["errors"] for x in v))])
    md += table(["contender", "conn/s", "p50 ms", "p99 ms", "p99.9 ms (median)", "p99.9 ms (max round)",
                 "max ms (median)", "max ms (max round)", "conns > 100 ms (all rounds)", "CPU µs/conn",
                 "processes", "errors"], rows)
    ratios = {}
    for peer in ("tcpserver", "xinetd", "systemd"):
        ratios[peer] = {f: rr("corral-inetd", peer, f) for f in ("rate", "p50", "p99", "max", "cpu_us")}
    ratios["mr1/mr0"] = {f: rr("corral-mr1", "corral-mr0", f) for f in ("rate", "p50", "p99", "p999", "cpu_us")}
    ratios["mr1/apache"] = {f: rr("corral-mr1", "apache-mr1", f) for f in ("rate", "p50", "p99", "p999", "cpu_us")}
    md += "\nRatios, corral inetd / peer (median of per-round ratios; conn/s: higher is better, latency: lower):\n\n"
    md += table(["peer", "conn/s", "p50", "p99", "max", "CPU/conn"],
                [[labels[pe], *(f"{ratios[pe][f]:.2f}" for f in ("rate", "p50", "p99", "max", "cpu_us"))]
                 for pe in ("tcpserver", "xinetd", "systemd")])
    md += "\nRatios, corral prefork `max_requests: 1` / reference:\n\n"
    md += table(["reference", "conn/s", "p50", "p99", "p99.9", "CPU/conn"],
                [[labels[k2], *(f"{ratios[rk][f]:.2f}" for f in ("rate", "p50", "p99", "p999", "cpu_us"))]
                 for rk, k2 in (("mr1/mr0", "corral-mr0"), ("mr1/apache", "apache-mr1"))])
    rate_ok = ratios["tcpserver"]["rate"] >= 1.0
    p99_ok = ratios["tcpserver"]["p99"] <= 1.0
    p999 = m("corral-mr1", "p999")
    p999_max = max((x["p999"] or 0) for x in data["corral-mr1"])
    below_max = max(x["procs_max"] for x in data["corral-mr1"]) < p["max"]
    md += (f"\nGoals. inetd: conn/s {fmt(m('corral-inetd', 'rate'), 0)} against tcpserver's "
           f"{fmt(m('tcpserver', 'rate'), 0)} (ratio {ratios['tcpserver']['rate']:.2f}, goal ≥ 1: "
           f"{'met' if rate_ok else '**missed**'}); p99 {fmt(m('corral-inetd', 'p99'), 2)} ms against "
           f"{fmt(m('tcpserver', 'p99'), 2)} ms (ratio {ratios['tcpserver']['p99']:.2f}, goal ≤ 1: "
           f"{'met' if p99_ok else '**missed**'}). Prefork `max_requests: 1`: p99.9 {fmt(p999, 2)} ms, median of "
           f"{R} rounds (max round {fmt(p999_max, 1)} ms; goal ≤ 50 ms: {'met' if p999 <= 50 else '**missed**'}); "
           f"the pool stayed {'below' if below_max else 'AT'} max ({max(x['procs_max'] for x in data['corral-mr1'])} "
           f"processes at most).\n")
    if prof:
        md += "\nProfiles (perf record -p of the server processes, cpu-clock): " + ", ".join(f"`{x}`" for x in prof.values()) + "\n"
    return md, {"rounds": data, "ratios": ratios, "profiles": prof,
                "goals": {"inetd_rate": rate_ok, "inetd_p99": p99_ok, "mr1_p999_ms": p999, "mr1_p999_max_ms": p999_max,
                          "mr1_below_max": below_max}}
