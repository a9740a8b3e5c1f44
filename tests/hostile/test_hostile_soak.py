"""Soak: mixed traffic through rekeys, with flat memory and file descriptors.

For ``PYVPN_SOAK_SECONDS`` (30 by default) the client pings the server over IPv4 and IPv6 and
runs an iperf3 TCP stream and an iperf3 UDP stream through the tunnel, while both daemons rekey
every ~5 s (test-only ``PYVPN_TEST_REKEY_AFTER_TIME=2``; the initiator rekeys on its next send
once the interval has passed, at most once per REKEY_TIMEOUT).  Both daemons' RSS
(``/proc/PID/status`` VmRSS) and fd counts (``/proc/PID/fd``) are sampled after a warm-up and at
the end: RSS may grow by at most 8 MiB + 2 % and fds not at all (±2 for sockets in flight).
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from hostile_harness import SERVER_TUN, SERVER_TUN6, Lab, assert_no_traceback, env_int, report


def _popen(ns: Any, argv: list[str]) -> subprocess.Popen[bytes]:
    proc: subprocess.Popen[bytes] = ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc


@pytest.mark.root
@pytest.mark.slow
def test_soak_mixed_traffic_through_rekeys_flat_rss_and_fds() -> None:
    seconds = env_int("PYVPN_SOAK_SECONDS", 30)
    warmup = min(5, seconds // 4)
    rekey = {"PYVPN_TEST_REKEY_AFTER_TIME": "2"}
    with Lab(server_env=rekey, client_env=rekey, log_level="info") as lab:
        lab.start()
        srv, cli = lab.server, lab.client
        h0 = srv.first_peer()["handshakes"]
        procs = [_popen(lab.srv_ns, ["iperf3", "-s", "-1", "-p", "5201", "-B", SERVER_TUN]),
                 _popen(lab.srv_ns, ["iperf3", "-s", "-1", "-p", "5202", "-B", SERVER_TUN])]
        time.sleep(0.5)
        tcp = _popen(lab.cli_ns, ["iperf3", "-c", SERVER_TUN, "-p", "5201", "-t", str(seconds), "-b", "40M",
                                       "-J"])
        udp = _popen(lab.cli_ns, ["iperf3", "-c", SERVER_TUN, "-p", "5202", "-u", "-t", str(seconds), "-b",
                                       "4M", "-l", "1000", "-J"])
        pings = [_popen(lab.cli_ns, ["ping", "-n", "-q", "-i", "0.1", "-c", str(seconds * 10), "-W", "1",
                                          dst]) for dst in (SERVER_TUN, SERVER_TUN6)]
        time.sleep(warmup)
        start = {d.role: (d.rss_kb(), d.fd_count()) for d in (srv, cli)}
        peak = {d.role: start[d.role][0] for d in (srv, cli)}
        deadline = time.monotonic() + seconds - warmup + 15
        while any(p.poll() is None for p in (tcp, udp, *pings)):
            assert time.monotonic() < deadline, "soak traffic did not finish in time"
            for d in (srv, cli):
                assert d.alive(), d.log_tail()
                peak[d.role] = max(peak[d.role], d.rss_kb())
            time.sleep(1.0)
        end = {d.role: (d.rss_kb(), d.fd_count()) for d in (srv, cli)}
        handshakes = srv.first_peer()["handshakes"] - h0
        tcp_j = json.loads(tcp.communicate()[0] or b"{}")
        udp_j = json.loads(udp.communicate()[0] or b"{}")
        ping_out = [p.communicate()[0].decode() for p in pings]
        for p in procs:
            p.wait(10)
        received = [int(line.split(",")[1].split()[0]) for out in ping_out for line in out.splitlines()
                    if "received" in line]
        tcp_sum = tcp_j.get("end", {}).get("sum_received", {})
        udp_sum = udp_j.get("end", {}).get("sum", {})
        figures = {
            "seconds": seconds, "rekeys": handshakes, "rss_kb_start_end_peak": {
                r: [start[r][0], end[r][0], peak[r]] for r in start},
            "fds_start_end": {r: [start[r][1], end[r][1]] for r in start},
            "tcp_Mbit_s": round(tcp_sum.get("bits_per_second", 0) / 1e6, 1),
            "udp_lost_percent": udp_sum.get("lost_percent"), "ping_received": received,
            "ping_sent_each": seconds * 10, "server_drops": dict(srv.drops()), "client_drops": dict(cli.drops())}
        report("soak", **figures)
        assert handshakes >= max(1, seconds // 6), handshakes
        assert len(received) == 2 and min(received) >= seconds * 10 * 0.9, received
        assert tcp_sum.get("bytes", 0) > 0 and udp_sum.get("packets", 0) > 0
        for role, (rss0, fd0) in start.items():
            rss1, fd1 = end[role]
            assert rss1 - rss0 <= 8 * 1024 + rss0 * 0.02, (role, rss0, rss1)
            assert abs(fd1 - fd0) <= 2, (role, fd0, fd1)
        assert_no_traceback(srv, cli)
