"""The contenders, each started by hand on 127.0.0.1 with its own files in a
temp dir: corral (prefork and inetd), Apache 2.4 prefork, the hand-written C
prefork ceiling, tcpserver, xinetd and systemd-socket-activate."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from common import Ctx, Server, wait_corral_idle, wait_port

APACHE_MODULES = Path("/usr/lib/apache2/modules")


def _dir(ctx: Ctx, name: str) -> Path:
    d = ctx.tmp / f"{name}-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    os.chmod(d, 0o755)
    return d


# ---- corral ------------------------------------------------------------------------

def corral_cli(ctx: Ctx, name: str, port: int, n: int, program: Path | None = None) -> tuple[Server, Path]:
    """The command of the issue: corral run --listen ... --workers N ... -- hello-http."""
    d = _dir(ctx, name)
    sb = d / "sb"
    argv = [ctx.corral, "run", "--listen", f"127.0.0.1:{port}", "--workers", n, "--min-spare", n,
            "--max-spare", n, "--max", n, "--scoreboard-dir", sb, "--", program or ctx.hello_http]
    return Server(ctx, name, argv, cwd=d, port=port), sb


def corral_yaml(ctx: Ctx, name: str, ports: list[int], *, start: int, min_spare: int, max_spare: int,
                maximum: int, mutex: str = "auto", mode: str = "prefork", command: list | None = None,
                extra: str = "", max_requests: int | None = None) -> tuple[Server, Path]:
    d = _dir(ctx, name)
    sb = d / "sb"
    cmd = command or [str(ctx.hello_http)]
    listen = "\n".join(f'      - "127.0.0.1:{p}"' for p in ports)
    cfg = f"""scoreboard_dir: {sb}
jobs:
  bench:
    command: [{", ".join('"%s"' % c for c in cmd)}]
    mode: {mode}
    listen:
{listen}
    workers:
      start: {start}
      min_spare: {min_spare}
      max_spare: {max_spare}
      max: {maximum}
"""
    if max_requests is not None:
        cfg += f"      max_requests: {max_requests}\n"
    if mode != "inetd":
        cfg += f"    accept_mutex: {mutex}\n"
    cfg += extra
    (d / "corral.yaml").write_text(cfg)
    return Server(ctx, name, [ctx.corral, "run", d / "corral.yaml"], cwd=d, port=ports[0]), sb


def start_corral(srv: Server, sb: Path, idle: int, timeout: float = 60) -> float | None:
    srv.start()
    t = wait_corral_idle(srv.ctx, sb, idle, timeout)
    if t is None:
        srv.ctx.log(f"{srv.name}: {idle} idle workers not reached in {timeout}s (see {srv.logpath})")
    return t


# ---- Apache 2.4 prefork ---------------------------------------------------------------

def apache(ctx: Ctx, name: str, ports: list[int], *, start: int, min_spare: int, max_spare: int,
           maximum: int, keepalive: bool, pid_log: bool = False, keepalive_timeout: int = 5,
           max_conn_per_child: int = 0) -> Server:
    """apache2 -f CONF -k start -DFOREGROUND with its own ServerRoot; serves the
    6-byte static file /hello.txt ("hello\\n"). Logging off: ErrorLog to a file, no
    CustomLog (pid_log: a CustomLog of the child pid only, for the fairness count)."""
    d = _dir(ctx, name)
    docroot = d / "htdocs"
    docroot.mkdir()
    (docroot / "hello.txt").write_text("hello\n")
    for p in (docroot, docroot / "hello.txt"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    (d / "logs").mkdir()
    os.chmod(d / "logs", 0o777)
    listen = "\n".join(f"Listen 127.0.0.1:{p}" for p in ports)
    # Apache raises MaxSpareServers to MinSpareServers+1 itself; say it here.
    max_spare = max(max_spare, min_spare + 1)
    user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
    custom = ""
    if pid_log:
        # mod_log_config is built into Debian's apache2
        custom = f'LogFormat "%P" pidonly\nCustomLog "{d}/logs/pids.log" pidonly\n'
    conf = f"""# corral bench: Apache 2.4 prefork, run by hand
ServerRoot "{d}"
PidFile "{d}/logs/httpd.pid"
Mutex file:{d}/logs default
ServerName 127.0.0.1
{listen}
LoadModule mpm_prefork_module {APACHE_MODULES}/mod_mpm_prefork.so
LoadModule authz_core_module {APACHE_MODULES}/mod_authz_core.so
LoadModule mime_module {APACHE_MODULES}/mod_mime.so
{user}StartServers {start}
MinSpareServers {min_spare}
MaxSpareServers {max_spare}
ServerLimit {maximum}
MaxRequestWorkers {maximum}
MaxConnectionsPerChild {max_conn_per_child}
ListenBacklog 1024
KeepAlive {"On" if keepalive else "Off"}
KeepAliveTimeout {keepalive_timeout}
MaxKeepAliveRequests 0
ErrorLog "{d}/logs/error.log"
LogLevel warn
{custom}TypesConfig /dev/null
AddType text/plain .txt
DocumentRoot "{docroot}"
<Directory "{docroot}">
    Require all granted
    AllowOverride None
    Options None
</Directory>
"""
    (d / "httpd.conf").write_text(conf)
    srv = Server(ctx, name, ["apache2", "-f", d / "httpd.conf", "-k", "start", "-DFOREGROUND"], cwd=d,
                 port=ports[0])
    srv.dir = d  # type: ignore[attr-defined]
    return srv


def start_apache(srv: Server, children: int | None = None, timeout: float = 30) -> bool:
    from common import children as kids
    srv.start()
    ok = wait_port(srv.port, timeout)
    if ok and children:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(kids(srv.pid)) < children:
            time.sleep(0.05)
    if not ok:
        srv.ctx.log(f"{srv.name}: not answering (see {srv.logpath} and {srv.dir}/logs/error.log)")  # type: ignore
    return ok


# ---- the hand-written ceiling -------------------------------------------------------------

def ceiling(ctx: Ctx, name: str, port: int, n: int) -> Server:
    return Server(ctx, name, [ctx.bin / "prefork_ceiling", "-l", f"127.0.0.1:{port}", "-n", n], port=port)


def start_ceiling(srv: Server, n: int, timeout: float = 10) -> bool:
    from common import children as kids
    srv.start()
    ok = wait_port(srv.port, timeout)
    deadline = time.monotonic() + timeout
    while ok and time.monotonic() < deadline and len(kids(srv.pid)) < n:
        time.sleep(0.02)
    return ok


# ---- inetd peers -------------------------------------------------------------------------

def tcpserver(ctx: Ctx, name: str, port: int, program: Path, maxconc: int = 64) -> Server:
    # -q quiet, -H no remote host name lookup, -R no ident (RFC 1413), -l0 no local
    # name lookup, -c concurrency limit.
    return Server(ctx, name, ["tcpserver", "-q", "-H", "-R", "-l0", "-c", maxconc, "127.0.0.1", port, program],
                  port=port)


def xinetd(ctx: Ctx, name: str, port: int, program: Path, instances: int = 64) -> Server:
    d = _dir(ctx, name)
    conf = f"""# corral bench: xinetd in the foreground with its own config
defaults
{{
    instances = {instances}
    cps = 100000 1
    per_source = UNLIMITED
}}
service hello1
{{
    type = UNLISTED
    socket_type = stream
    protocol = tcp
    wait = no
    user = root
    server = {program}
    port = {port}
    bind = 127.0.0.1
    flags = NOLIBWRAP REUSE
    log_on_success =
    log_on_failure =
}}
"""
    (d / "xinetd.conf").write_text(conf)
    # -dontfork: stay in the foreground; -pidfile into our dir; -filelog: its own log.
    return Server(ctx, name, ["xinetd", "-dontfork", "-f", d / "xinetd.conf", "-pidfile", d / "xinetd.pid",
                              "-filelog", d / "xinetd.log"], cwd=d, port=port)


def socket_activate(ctx: Ctx, name: str, port: int, program: Path) -> Server:
    return Server(ctx, name, ["systemd-socket-activate", "--inetd", "-a", "-l", f"127.0.0.1:{port}", program],
                  port=port)


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None
