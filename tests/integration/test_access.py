"""Who may connect (allow:/deny:), datagram listeners (udp:, unix-dgram:) and abstract
unix sockets (unix:@name), with the real corral on real sockets: peers on 127.0.0.1,
127.0.0.2 (the client binds its source address: loopback holds all of 127.0.0.0/8) and
::1."""
import os
import re
import shutil
import signal
import socket
import uuid

import harness
import scoreboard
from harness import PYTHON, CorralTest, connect, recv_all, recv_until, wait_until
from test_listen import ipv6_loopback

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO = os.path.join(harness.BUILD, "examples", "echo")
RESPONDER = os.path.join(HERE, "dgram_responder.py")
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"

# How long a refused peer's connect is given: its SYN is dropped, so it is never
# answered (no RST either), and connect() runs into this timeout.
REFUSED_WAIT = 1.5


def dial(port, source, dest=None, timeout=5.0):
    """A TCP connection from `source` (an address this host has) to `dest`:port."""
    v6 = ":" in source
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    try:
        s.connect((dest or source, port))
    except BaseException:
        s.close()
        raise
    return s


def echo_works(port, source, dest=None):
    with dial(port, source, dest) as s:
        s.sendall(b"hello\n")
        return recv_until(s) == b"hello\n"


def datagram(port, source, payload, dest="127.0.0.1", timeout=5.0):
    """Sends one datagram from `source` and returns the answer, or None on timeout."""
    v6 = ":" in source
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind((source, 0))
        s.sendto(payload, (dest, port))
        try:
            return s.recvfrom(65536)[0]
        except socket.timeout:
            return None


class AccessTest(CorralTest):
    def prefork(self, listen_yaml, extra="", name="web"):
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  {name}:
    command: ["{ECHO}"]
    listen: {listen_yaml}
    workers: {{ start: 2, min_spare: 1, max_spare: 4, max: 8 }}
{extra}"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, name, 1)
        return c

    def assert_refused_by_kernel(self, port, source, dest=None):
        """A SYN the socket filter drops is never answered: connect() times out (neither
        accepted nor reset)."""
        with self.assertRaises(socket.timeout, msg=f"{source} should be refused"):
            dial(port, source, dest, timeout=REFUSED_WAIT).close()

    def test_prefork_longest_prefix_wins_and_a_refused_syn_is_dropped(self):
        c = self.prefork('["127.0.0.1:0"]', '    allow: ["127.0.0.0/8"]\n    deny: ["127.0.0.1"]\n')
        port = c.port(self.sbdir, "web")
        self.assertTrue(echo_works(port, "127.0.0.2", "127.0.0.1"))
        self.assert_refused_by_kernel(port, "127.0.0.1")
        self.assertTrue(echo_works(port, "127.0.0.3", "127.0.0.1"))
        # Nobody accepted the refused peer: the workers saw only the allowed ones.
        accepted = sum(w["requests"] for w in c.job(self.sbdir, "web")["workers"])
        self.assertEqual(accepted, 2)
        self.assertEqual(c.stop(), 0)

    def test_a_tie_goes_to_deny_and_a_non_empty_allow_refuses_the_rest(self):
        c = self.prefork('["127.0.0.1:0"]',
                         '    allow: ["127.0.0.2", "127.0.0.3/32"]\n    deny: ["127.0.0.3/32"]\n')
        port = c.port(self.sbdir, "web")
        self.assertTrue(echo_works(port, "127.0.0.2", "127.0.0.1"))
        self.assert_refused_by_kernel(port, "127.0.0.3", "127.0.0.1")
        self.assert_refused_by_kernel(port, "127.0.0.1")
        self.assertEqual(c.stop(), 0)

    def test_ipv4_peers_of_a_dual_stack_socket_match_ipv4_rules(self):
        if not ipv6_loopback():
            self.skipTest("no IPv6 loopback")
        # ":0" is one IPv6 socket for both families: an IPv4 peer arrives there as
        # ::ffff:127.0.0.2, and must match its IPv4 rule.
        c = self.prefork('[":0"]', '    allow: ["127.0.0.2", "::1"]\n')
        port = c.port(self.sbdir, "web")
        self.assertTrue(echo_works(port, "127.0.0.2", "127.0.0.1"))
        self.assertTrue(echo_works(port, "::1"))
        self.assert_refused_by_kernel(port, "127.0.0.1")
        self.assertEqual(c.stop(), 0)

    def test_ipv6_deny(self):
        if not ipv6_loopback():
            self.skipTest("no IPv6 loopback")
        c = self.prefork('[":0"]', '    deny: ["::1/128"]\n')
        port = c.port(self.sbdir, "web")
        self.assert_refused_by_kernel(port, "::1")
        self.assertTrue(echo_works(port, "127.0.0.1"))
        self.assertEqual(c.stop(), 0)

    def test_listener_rules_replace_the_jobs(self):
        sock = os.path.join(self.tmp, "web.sock")
        c = self.prefork(
            f'["127.0.0.1:0", {{ address: "127.0.0.1:0", allow: ["127.0.0.1"] }}, "unix:{sock}"]',
            '    allow: ["127.0.0.2"]\n')
        job_port = c.port(self.sbdir, "web", 0)
        own_port = c.port(self.sbdir, "web", 1)
        self.assertTrue(echo_works(job_port, "127.0.0.2", "127.0.0.1"))
        self.assert_refused_by_kernel(job_port, "127.0.0.1")
        self.assertTrue(echo_works(own_port, "127.0.0.1"))
        self.assert_refused_by_kernel(own_port, "127.0.0.2", "127.0.0.1")
        # The unix socket has no peer address and no filter.
        with socket.socket(socket.AF_UNIX) as u:
            u.settimeout(5)
            u.connect(sock)
            u.sendall(b"unix\n")
            self.assertEqual(recv_until(u), b"unix\n")
        self.assertEqual(c.stop(), 0)

    def test_reload_replaces_and_removes_the_filter(self):
        extra = '    deny: ["127.0.0.1"]\n'
        c = self.prefork('["127.0.0.1:0"]', extra)
        port = c.port(self.sbdir, "web")
        self.assert_refused_by_kernel(port, "127.0.0.1")
        with open(c.config_path) as f:
            text = f.read()
        # Replaced: now 127.0.0.2 is the refused one.
        with open(c.config_path, "w") as f:
            f.write(text.replace(extra, '    deny: ["127.0.0.2"]\n'))
        c.signal(signal.SIGHUP)
        c.wait_log(r"reload", count=1)
        wait_until(lambda: echo_works(port, "127.0.0.1"), what="127.0.0.1 let in after the reload", log=c)
        self.assert_refused_by_kernel(port, "127.0.0.2", "127.0.0.1")
        # Removed: everyone.
        with open(c.config_path, "w") as f:
            f.write(text.replace(extra, ""))
        c.signal(signal.SIGHUP)
        wait_until(lambda: echo_works(port, "127.0.0.2", "127.0.0.1"),
                   what="127.0.0.2 let in once the rules are gone", log=c)
        self.assertTrue(echo_works(port, "127.0.0.1"))
        # A rejected reload (a bad rule) keeps the running filter as it was.
        with open(c.config_path, "w") as f:
            f.write(text.replace(extra, '    deny: ["127.0.0.1"]\n    allow: ["nonsense"]\n'))
        c.signal(signal.SIGHUP)
        c.wait_log(r"nonsense", count=1)
        self.assertTrue(echo_works(port, "127.0.0.1"))
        self.assertEqual(c.stop(), 0)

    def test_a_worker_that_detaches_the_filter_is_undone_by_the_next_reload(self):
        # The filter is on the shared socket: a worker can remove it (docs/SECURITY.md).
        # Only the first worker does; a reload puts the rules back.
        marker = os.path.join(self.tmp, "detached")
        worker = self.write("detach.py", f"""
import os, socket, time
s = socket.socket(fileno=3)
if not os.path.exists({marker!r}):
    s.setsockopt(socket.SOL_SOCKET, 27, 0)  # SO_DETACH_FILTER
    open({marker!r}, "w").close()
time.sleep(3600)
""")
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  web:
    mode: plain
    command: ["{PYTHON}", "{worker}"]
    listen: ["127.0.0.1:0"]
    deny: ["127.0.0.1"]
    workers: {{ start: 1 }}
"""
        c = self.corral(["run", "{config}"], config=config)
        job = wait_until(lambda: (lambda j: j if j and j["listeners"] else None)(c.job(self.sbdir, "web")), log=c)
        port = int(job["listeners"][0].rsplit(":", 1)[1])
        wait_until(lambda: os.path.exists(marker), log=c)
        # The kernel completes the handshake (nobody accepts; the backlog holds it).
        dial(port, "127.0.0.1").close()
        c.signal(signal.SIGHUP)
        def refused_again():
            try:
                dial(port, "127.0.0.1", timeout=0.5).close()
                return False
            except socket.timeout:
                return True
        wait_until(refused_again, what="the rules back after the reload", log=c)
        self.assertEqual(c.stop(), 0)

    def test_sigusr2_keeps_the_rules_and_a_udp_listener(self):
        binary = self.upgradable_binary()
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  web:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    deny: ["127.0.0.1"]
    workers: {{ start: 2, min_spare: 1, max_spare: 4, max: 8 }}
  dns:
    mode: plain
    command: ["{PYTHON}", "{RESPONDER}"]
    listen: [{{ address: "udp:127.0.0.1:0", allow: ["127.0.0.2"] }}]
    workers: {{ start: 1 }}
"""
        saved = harness.CORRAL
        harness.CORRAL = binary  # run the copy, so that it can be replaced on disk
        try:
            c = self.corral(["run", "{config}"], config=config)
        finally:
            harness.CORRAL = saved
        c.wait_idle(self.sbdir, "web", 1)
        port = c.port(self.sbdir, "web")
        udp = wait_until(lambda: c.job(self.sbdir, "dns"), log=c)["listeners"][0]
        self.assertTrue(udp.startswith("udp:127.0.0.1:"), udp)
        udp_port = int(udp.rsplit(":", 1)[1])
        self.assertTrue(wait_until(lambda: datagram(udp_port, "127.0.0.2", b"a", timeout=1), log=c))
        self.replace_binary(binary)
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 2 job\(s\) and 2 listener\(s\)")
        self.assertTrue(echo_works(port, "127.0.0.2", "127.0.0.1"))
        self.assert_refused_by_kernel(port, "127.0.0.1")
        answer = datagram(udp_port, "127.0.0.2", b"after")
        self.assertIsNotNone(answer)
        self.assertTrue(answer.endswith(b": after"), answer)
        self.assertIsNone(datagram(udp_port, "127.0.0.1", b"refused", timeout=REFUSED_WAIT))
        self.assertEqual(c.job(self.sbdir, "dns")["listeners"], [udp])
        self.assertEqual(c.stop(), 0)


class InetdAccessTest(CorralTest):
    def test_a_refused_peer_is_closed_without_a_byte_and_logged_once(self):
        script = self.write("greet.sh", "#!/bin/sh\necho hello $REMOTE_ADDR\n", 0o755)
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  legacy:
    mode: inetd
    command: ["{script}"]
    listen: ["127.0.0.1:0", {{ address: "127.0.0.1:0", allow: ["127.0.0.1"] }}]
    allow: ["127.0.0.0/8", "::1"]
    deny: ["127.0.0.1/32"]
    workers: {{ start: 1, min_spare: 1, max_spare: 1, max: 4 }}
"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "legacy", 1)
        port = c.port(self.sbdir, "legacy", 0)
        own = c.port(self.sbdir, "legacy", 1)
        with dial(port, "127.0.0.2", "127.0.0.1") as s:
            self.assertEqual(recv_all(s), b"hello 127.0.0.2\n")
        # Refused: accepted by the acceptor (inetd mode sees its peers), closed at once
        # without a byte, and the acceptor goes on waiting.
        for _ in range(10):
            with dial(port, "127.0.0.1") as s:
                self.assertEqual(recv_all(s), b"")
        c.wait_log(r"job legacy: refused 127\.0\.0\.1:\d+ on 127\.0\.0\.1:%d: not allowed" % port)
        # The listener's own rules replace the job's.
        with dial(own, "127.0.0.1") as s:
            self.assertEqual(recv_all(s), b"hello 127.0.0.1\n")
        with dial(own, "127.0.0.2", "127.0.0.1") as s:
            self.assertEqual(recv_all(s), b"")
        c.wait_log(r"refused 127\.0\.0\.2:\d+ on 127\.0\.0\.1:%d" % own)
        # Still serving, and ten refusals from 127.0.0.1 made one line, whichever
        # acceptors saw them (they share one record in the scoreboard).
        with dial(port, "127.0.0.2", "127.0.0.1") as s:
            self.assertEqual(recv_all(s), b"hello 127.0.0.2\n")
        lines = len(re.findall(r"refused 127\.0\.0\.1:", c.log_text()))
        self.assertEqual(lines, 1, c.log_text())
        # Every refusal is counted (status "refused"): ten on the first listener, one on
        # the second, whether the acceptor that refused is still alive or was reaped.
        job = wait_until(lambda: (lambda j: j if j and j.get("refused") == 11 else None)(
            c.job(self.sbdir, "legacy")), 10, what="refused == 11 in status")
        self.assertEqual(job["refused"], 11)
        # The rules never reach the program's environment.
        self.assertEqual(c.stop(), 0)

    def test_refusals_are_logged_once_per_source_across_acceptors(self):
        # Four idle acceptors blocked in accept on one socket: the kernel wakes them in
        # turn, so the refusals are spread over them, and the log must still say it once.
        script = self.write("greet.sh", "#!/bin/sh\necho hello\n", 0o755)
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  legacy:
    mode: inetd
    command: ["{script}"]
    listen: ["127.0.0.1:0"]
    deny: ["127.0.0.1"]
    workers: {{ start: 4, min_spare: 4, max_spare: 4, max: 4 }}
"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "legacy", 4)
        port = c.port(self.sbdir, "legacy")
        for _ in range(20):
            with dial(port, "127.0.0.1") as s:
                self.assertEqual(recv_all(s), b"")
        wait_until(lambda: (c.job(self.sbdir, "legacy") or {}).get("refused") == 20,
                   what="20 refusals counted", log=c)
        path = os.path.join(self.sbdir, "legacy.scoreboard")
        refusing = [s for s in scoreboard.read_slots(path) if s.get("refused", 0) > 0]
        self.assertGreater(len(refusing), 1, "the refusals reached one acceptor only")
        lines = re.findall(r"refused 127\.0\.0\.1:", c.log_text())
        self.assertEqual(len(lines), 1, c.log_text())
        self.assertEqual(c.stop(), 0)

    def test_the_rules_do_not_reach_the_program(self):
        script = self.write("env.sh", "#!/bin/sh\necho \"access=${CORRAL_ACCESS:-unset}\"\n", 0o755)
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  legacy:
    mode: inetd
    command: ["{script}"]
    listen: ["127.0.0.1:0"]
    allow: ["127.0.0.1"]
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 4 }}
"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "legacy", 1)
        with connect(c.port(self.sbdir, "legacy")) as s:
            self.assertEqual(recv_all(s), b"access=unset\n")
        self.assertEqual(c.stop(), 0)


class CheckTest(CorralTest):
    def check(self, job_yaml):
        path = self.write("c.yaml", f"jobs:\n  web:\n{job_yaml}")
        out = self.run_cli(["check", path])
        self.assertNotEqual(out.returncode, 0, out.stdout + out.stderr)
        return path, out.stdout + out.stderr

    def test_errors_name_file_line_and_column(self):
        base = f'    command: ["{ECHO}"]\n'
        cases = [
            ('    listen: ["127.0.0.1:8080"]\n    allow: []\n', 5, r"allow: \[\] is empty"),
            ('    listen: ["127.0.0.1:8080"]\n    deny: ["10.0.0.0/33"]\n', 5, r"at most 32"),
            ('    listen: ["127.0.0.1:8080"]\n    allow: ["10.0.0.1/8"]\n', 5,
             r"bits are set after the first 8; the network is 10\.0\.0\.0/8"),
            ('    listen: ["127.0.0.1:8080"]\n    allow: ["example.com"]\n', 5, r"not a numeric IPv4 or IPv6"),
            ('    listen: [{ address: "unix:/tmp/x.sock", allow: ["::1"] }]\n', 4, r"apply to IP listeners"),
            ('    listen: ["unix:/tmp/x.sock"]\n    deny: ["::1"]\n', 5, r"has none"),
            ('    listen: ["udp:127.0.0.1:5353"]\n', 4, r"datagram socket, which only mode plain"),
            ('    mode: inetd\n    listen: ["unix-dgram:/tmp/x.dgram"]\n', 5, r"datagram socket"),
            ('    listen: [{ address: "unix:@web", mode: "0600" }]\n', 4, r"abstract socket: it has no file"),
        ]
        for text, line, message in cases:
            with self.subTest(text=text):
                path, out = self.check(base + text)
                self.assertRegex(out, re.escape(path) + r":%d:\d+: .*" % line + message)

    def test_good_rules_and_addresses_pass(self):
        path = self.write("c.yaml", f"""jobs:
  web:
    command: ["{ECHO}"]
    listen: [":8080", {{ address: "127.0.0.1:8081", deny: ["127.0.0.2"] }}, "unix:@corral-web"]
    allow: ["10.0.0.0/8", "::1", "192.168.1.7", "::ffff:172.16.0.0/108"]
    deny: ["10.1.0.0/16"]
  dns:
    mode: plain
    command: ["{ECHO}"]
    listen: ["udp:127.0.0.1:5353", "udp:[::1]:5353", "unix-dgram:/tmp/app.dgram", "127.0.0.1:5353"]
""")
        out = self.run_cli(["check", path])
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)


class DatagramTest(CorralTest):
    def plain(self, listen_yaml, workers=1):
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  dns:
    mode: plain
    command: ["{PYTHON}", "{RESPONDER}"]
    listen: {listen_yaml}
    workers: {{ start: {workers} }}
"""
        return self.corral(["run", "{config}"], config=config)

    def test_udp_v4_v6_and_unix_datagram_in_plain_mode(self):
        dgram_path = os.path.join(self.tmp, "app.dgram")
        listens = ['{ address: "udp:127.0.0.1:0", name: v4 }', f'{{ address: "unix-dgram:{dgram_path}", name: local }}']
        if ipv6_loopback():
            listens.append('{ address: "udp:[::1]:0", name: v6 }')
        c = self.plain("[" + ", ".join(listens) + "]")
        job = wait_until(lambda: (lambda j: j if j and j["workers"] else None)(c.job(self.sbdir, "dns")), log=c)
        shown = job["listeners"]
        self.assertTrue(shown[0].startswith("udp:127.0.0.1:"), shown)
        self.assertEqual(shown[1], f"unix-dgram:{dgram_path}")
        port = int(shown[0].rsplit(":", 1)[1])
        answer = wait_until(lambda: datagram(port, "127.0.0.1", b"ping", timeout=1), log=c)
        self.assertRegex(answer, rb"^v4 pid \d+: ping$")
        if ipv6_loopback():
            self.assertTrue(shown[2].startswith("udp:[::1]:"), shown)
            answer = datagram(int(shown[2].rsplit(":", 1)[1]), "::1", b"six", dest="::1")
            self.assertRegex(answer, rb"^v6 pid \d+: six$")
        client_path = os.path.join(self.tmp, "client.dgram")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.bind(client_path)
            u.sendto(b"local", dgram_path)
            self.assertRegex(u.recv(4096), rb"^local pid \d+: local$")
        self.assertEqual(c.stop(), 0)
        self.assertFalse(os.path.exists(dgram_path), "corral removes the socket file it bound")

    def test_adopted_from_systemd_socket_activate_datagram(self):
        for _ in range(5):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  dns:
    mode: plain
    command: ["{PYTHON}", "{RESPONDER}"]
    listen: ["systemd:dns", "udp:127.0.0.1:{port}"]
    workers: {{ start: 1 }}
"""
            # Two sockets: one taken by name, one adopted by its address (udp:).
            second = port + 1 if port < 65535 else port - 1
            launcher = [SOCKET_ACTIVATE, "--datagram", "-l", f"127.0.0.1:{second}", "--fdname=dns:other",
                        "-l", f"127.0.0.1:{port}", "--"]
            c = self.corral(["run", "{config}"], config=config, launcher=launcher)
            wait_until(lambda: "Listening on" in c.log_text() or c.proc.poll() is not None, log=c)
            if c.proc.poll() is None and "Address already in use" not in c.log_text():
                break
            c.cleanup()
        else:
            self.fail("no free ports for systemd-socket-activate")
        # systemd-socket-activate execs corral at the first datagram, which waits for it.
        answer = wait_until(lambda: datagram(port, "127.0.0.1", b"first", timeout=1), timeout=20, log=c)
        self.assertRegex(answer, rb"pid \d+: first$")
        answer = datagram(second, "127.0.0.1", b"second")
        self.assertRegex(answer, rb"^dns pid \d+: second$")
        job = c.job(self.sbdir, "dns")
        self.assertEqual(sorted(job["listeners"]), sorted([f"udp:127.0.0.1:{second}", f"udp:127.0.0.1:{port}"]))
        self.assertIn("adopted socket udp:127.0.0.1:", c.log_text())
        self.assertEqual(c.stop(), 0)


    def test_a_prefork_job_refuses_a_datagram_socket_from_systemd(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  web:
    command: ["{ECHO}"]
    listen: ["systemd:dns"]
"""
        launcher = [PYTHON, os.path.join(HERE, "sd_launcher.py"), "--fds", str(sock.fileno()),
                    "--names", "dns", "--"]
        c = self.corral(["run", "{config}"], config=config, launcher=launcher,
                        pass_fds=[sock.fileno()])
        self.assertEqual(c.wait_exit(), 1, c.log_text())
        self.assertIn(f"udp:127.0.0.1:{sock.getsockname()[1]} is a datagram socket, which only "
                      "mode plain passes on", c.log_text())


class AbstractTest(CorralTest):
    def test_abstract_unix_socket_has_no_file_and_shows_as_at_name(self):
        name = f"corral-test-{uuid.uuid4().hex[:12]}"
        metrics = f"127.0.0.1:{self.free_tcp_port()}"
        config = f"""
scoreboard_dir: {self.sbdir}
metrics: {{ listen: "{metrics}" }}
jobs:
  web:
    command: ["{ECHO}"]
    listen: ["unix:@{name}"]
    workers: {{ start: 2, min_spare: 1, max_spare: 4, max: 8 }}
"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "web", 1)
        self.assertEqual(c.job(self.sbdir, "web")["listeners"], [f"@{name}"])
        with socket.socket(socket.AF_UNIX) as u:
            u.settimeout(5)
            u.connect("\0" + name)
            u.sendall(b"abstract\n")
            self.assertEqual(recv_until(u), b"abstract\n")
        self.assertFalse(any(name in f for f in os.listdir(self.tmp)))
        host, port = metrics.rsplit(":", 1)
        text = wait_until(lambda: self.scrape(host, int(port)), log=c)
        # The listener label, and the queue from sock_diag (abstract sockets too).
        self.assertRegex(text, r'corral_listener_queue_capacity\{pool="web",listener="@%s"\} 1024' % re.escape(name))
        self.assertEqual(c.stop(), 0)

    def free_tcp_port(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def scrape(self, host, port):
        try:
            with connect(port, host) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                return recv_all(s).decode()
        except OSError:
            return None
