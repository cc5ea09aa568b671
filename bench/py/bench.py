"""Entry point behind bench/run.sh: runs the scenarios, writes results/results.md
(Markdown tables of medians and ratios), results/raw.json and the PNG plots."""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Ctx  # noqa: E402
import accept_path  # noqa: E402
import scenarios as sc  # noqa: E402
import warm  # noqa: E402

SCENARIOS = {
    "close": lambda ctx: sc.throughput(ctx, close=True),
    "keepalive": lambda ctx: sc.throughput(ctx, close=False),
    "herd": sc.herd,
    "fairness": sc.fairness,
    "scale": sc.scale,
    "inetd": sc.inetd,
    "burst": sc.burst,
    "churn": sc.churn,
    "accept": accept_path.accept_path,
    "warm": warm.warm,
}


def sh(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"


def machine(ctx: Ctx, args) -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    snap = ctx.build
    git = (snap / "GIT_REV").read_text().strip()[:10] if (snap / "GIT_REV").exists() else "?"
    dirty = (snap / "GIT_DIRTY").read_text() if (snap / "GIT_DIRTY").exists() else ""
    btype = (snap / "BUILD_TYPE").read_text().strip().split("=")[-1] if (snap / "BUILD_TYPE").exists() else "?"
    pin = (f"client (wrk, bclient) pinned to cpu {ctx.client_cpus}, servers to cpu {ctx.server_cpus} with taskset"
           if ctx.client_cpus else "no pinning (--no-pin, or fewer than 2 cpus)")
    cpu = ("server CPU from a cpuacct cgroup per server (the whole process tree, exited children included)"
           if ctx.cgroups else "no cgroup: server CPU not measured")
    return "\n".join([
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; command: `bench/run.sh {' '.join(args)}`",
        f"- machine: {os.cpu_count()} cpus ({model}), {int(mem) // 1024 // 1024} GiB, Linux {platform.release()}, "
        f"{sh(['sh', '-c', '. /etc/os-release; echo $PRETTY_NAME'])}; load average at start "
        f"{os.getloadavg()[0]:.2f}",
        f"- {sh([str(ctx.corral), '--version'])} at git {git}{' + uncommitted changes (' + ', '.join(l[3:] for l in dirty.splitlines() if l.strip()) + ')' if dirty.strip() else ''}, "
        f"{btype} build, copied to results/{snap.name}/ before the run; "
        f"{sh(['sh', '-c', 'apache2 -v | head -1'])}; {sh(['sh', '-c', 'wrk -v 2>&1 | head -1'])}; "
        f"{sh(['sh', '-c', 'xinetd -version 2>&1 | head -1'])}; "
        f"ucspi-tcp {sh(['dpkg-query', '-W', '-f=${Version}', 'ucspi-tcp'])}; "
        f"systemd {sh(['dpkg-query', '-W', '-f=${Version}', 'systemd'])}",
        f"- {pin} (scenarios that say so run unpinned)",
        f"- {cpu}",
    ]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench/run.sh")
    ap.add_argument("--root", required=True)
    ap.add_argument("--build", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--quick", action="store_true", help="a short version of everything")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (default: by scenario)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin client and servers to cpus")
    ap.add_argument("--no-perf", action="store_true", help="skip the perf profiles")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each scenario, wait up to SECONDS for the machine to be quiet "
                         "(under 25%% of the cpus busy for 3 s in a row)")
    ap.add_argument("scenario", nargs="*", help=" ".join(SCENARIOS))
    a = ap.parse_args()
    wanted = a.scenario or list(SCENARIOS)
    for s in wanted:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}; known: {' '.join(SCENARIOS)}")
    user_args = (["--quick"] if a.quick else []) + ([f"--rounds {a.rounds}"] if a.rounds else []) + \
        (["--no-pin"] if a.no_pin else []) + (["--no-perf"] if a.no_perf else []) + \
        ([f"--wait-quiet {a.wait_quiet:g}"] if a.wait_quiet else []) + a.scenario
    ctx = Ctx(Path(a.root), Path(a.build), Path(a.results), a.quick, a.rounds, not a.no_pin, not a.no_perf)
    ctx.named = list(a.scenario)  # type: ignore[attr-defined]
    if os.geteuid() != 0:
        ctx.log("not root: no cgroup CPU accounting, and Apache/xinetd may not start")

    def on_signal(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")
    signal.signal(signal.SIGTERM, on_signal)

    header = "# corral benchmarks: results\n\n" + machine(ctx, user_args) + "\n"
    sections: list[str] = []
    raw: dict = {"args": user_args, "scenarios": {}}
    t_all = time.monotonic()
    ctx.log(f"scenarios: {' '.join(wanted)}; {'quick' if a.quick else 'full'} run; results in {ctx.results}")
    ctx.log("pinning: " + (f"client on cpu {ctx.client_cpus}, servers on cpu {ctx.server_cpus} (taskset)"
                           if ctx.client_cpus else "off"))
    status = 0
    try:
        for name in wanted:
            if a.wait_quiet > 0:
                waited, busy = wait_quiet(a.wait_quiet)
                ctx.log(f"waited {waited:.0f} s for a quiet machine: {busy * 100:.0f}% busy")
            t0 = time.monotonic()
            load0 = os.getloadavg()[0]
            busy0 = machine_busy(1.0)
            ctx.log(f"=== {name}")
            try:
                md, data = SCENARIOS[name](ctx)
            except KeyboardInterrupt:
                raise
            except Exception:  # one broken scenario must not lose the others
                tb = traceback.format_exc()
                ctx.log(f"{name} failed:\n{tb}")
                md, data = f"### {name}\n\nFAILED:\n\n```\n{tb}\n```\n", {"error": tb}
                status = 1
                for s in list(ctx.servers):
                    s.stop()
            took = time.monotonic() - t0
            load1 = os.getloadavg()[0]
            md += (f"\n_{name}: {took:.0f} s; before it the machine was {busy0 * 100:.0f}% busy (1 s sample); "
                   f"1-minute load average {load0:.2f} at the start, {load1:.2f} at the end_\n")
            sections.append(md)
            raw["scenarios"][name] = {"seconds": took, "load": [load0, load1], "data": data}
            ctx.log(f"=== {name} done in {took:.0f} s")
            write(ctx, header, sections, raw, time.monotonic() - t_all)
    except KeyboardInterrupt as e:
        ctx.log(f"interrupted ({e}); stopping every server started")
        status = 130
    finally:
        ctx.cleanup()
    write(ctx, header, sections, raw, time.monotonic() - t_all)
    ctx.log(f"done in {time.monotonic() - t_all:.0f} s: {ctx.results / (report_name(ctx) + '.md')}")
    return status


def _cpu_times() -> tuple[int, int]:
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return sum(f), idle


def machine_busy(secs: float) -> float:
    """Fraction of all cpus busy over `secs` (from /proc/stat)."""
    t0, i0 = _cpu_times()
    time.sleep(secs)
    t1, i1 = _cpu_times()
    return 1 - (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0


def wait_quiet(max_s: float, threshold: float = 0.25, need: int = 3) -> tuple[float, float]:
    t0 = time.monotonic()
    ok = 0
    busy = 1.0
    while time.monotonic() - t0 < max_s:
        busy = machine_busy(1.0)
        ok = ok + 1 if busy < threshold else 0
        if ok >= need:
            break
    return time.monotonic() - t0, busy


def report_name(ctx: Ctx) -> str:
    return "results" if not ctx.named else "results-" + "-".join(ctx.named)


def write(ctx: Ctx, header: str, sections: list[str], raw: dict, total: float) -> None:
    text = header + f"Total time: {total:.0f} s.\n\n" + "\n".join(sections)
    (ctx.results / f"{report_name(ctx)}.md").write_text(text)
    (ctx.results / f"{report_name(ctx).replace('results', 'raw')}.json").write_text(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
