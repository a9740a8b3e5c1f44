"""Crashes, restarts and faults under a running tunnel.

- ``kill -9`` of the client mid-transfer, then a restart: the new client initiates at once and
  the tunnel carries traffic again within a second or two.
- ``kill -9`` of the server mid-transfer, then a restart: the client still holds the old
  session; its packets are ``unknown_index`` until its new-handshake timer fires
  (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter = 15–15.3 s after its first unanswered packet), so
  the tunnel must be back within that bound (plus scheduling slack) of the kill.
- The tun device deleted under the daemon (``ip link del``): the daemon says so and exits on
  its own within a few seconds, removing its sockets.
- The underlay address removed and re-added, the underlay link down and up, and sends refused
  by a firewall rule (EPERM): no crash, no hang, no traceback; the failures are counted and
  logged, and traffic flows again once the fault is gone.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from hostile_harness import SERVER_TUN, Lab, assert_no_traceback, report

from crypto.constants import KEEPALIVE_TIMEOUT, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX
from vpn.testlab.netns import wait_for


def recover(lab: Lab, timeout: float) -> float:
    """Seconds until a ping through the tunnel succeeds again (bounded)."""
    t0 = time.monotonic()
    while lab.ping(count=1, timeout=0.5) != 1:
        assert time.monotonic() - t0 < timeout, f"no recovery within {timeout:.0f}s\n{lab.logs()}"
        for d in (lab.server, lab.client):
            assert d.alive(), f"{d.role} died\n{lab.logs()}"
    return time.monotonic() - t0


def start_transfer(lab: Lab, port: int) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    sink = lab.tool(lab.srv_ns, "tcp-sink", "--bind", SERVER_TUN, "--port", str(port), "--timeout", "40")
    time.sleep(0.2)
    src = lab.tool(lab.cli_ns, "tcp-source", "--connect", f"{SERVER_TUN}:{port}", "--bytes", str(1 << 40),
                   "--seconds", "60", "--timeout", "40")
    time.sleep(1.0)
    return sink, src


@pytest.mark.root
def test_kill9_client_mid_transfer_recovers_at_once() -> None:
    with Lab(log_level="info") as lab:
        lab.start()
        _sink, _src = start_transfer(lab, 5006)  # its client end dies with the tun; only the tunnel matters
        lab.client.kill9()
        t_kill = time.monotonic()
        lab.client.start()
        took = recover(lab, timeout=10)
        total = time.monotonic() - t_kill
        sink = lab.tool(lab.srv_ns, "tcp-sink", "--bind", SERVER_TUN, "--port", "5007", "--timeout", "10")
        time.sleep(0.2)
        src = lab.run_tool(lab.cli_ns, "tcp-source", "--connect", f"{SERVER_TUN}:5007", "--bytes", str(4 << 20))
        assert lab.tool_result(sink, 20)["sha256"] == src["sha256"]
        report("kill9-client", recovered_after_restart_s=round(took, 2), kill_to_traffic_s=round(total, 2),
               server_drops=dict(lab.server.drops()))
        assert lab.server.alive()
        assert_no_traceback(lab.server, lab.client)


@pytest.mark.root
@pytest.mark.slow
def test_kill9_server_mid_transfer_recovers_within_the_handshake_timers() -> None:
    bound = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX
    with Lab(log_level="info") as lab:
        lab.start()
        sink, src = start_transfer(lab, 5008)
        lab.server.kill9()
        t_kill = time.monotonic()
        lab.server.start()
        restarted = time.monotonic() - t_kill
        took = recover(lab, timeout=bound + 10)
        since_kill = time.monotonic() - t_kill
        time.sleep(1.0)
        report("kill9-server", restart_s=round(restarted, 2), kill_to_traffic_s=round(since_kill, 2),
               mid_transfer_tcp_still_running=sink.poll() is None and src.poll() is None,
               handshake_timer_bound_s=round(bound, 2), server_drops=dict(lab.server.drops()),
               client_drops=dict(lab.client.drops()))
        assert since_kill <= bound + 5, since_kill  # 5 s of slack for a loaded machine
        assert took >= 0 and lab.client.alive()
        assert_no_traceback(lab.server, lab.client)


@pytest.mark.root
def test_tun_deleted_daemon_exits_cleanly() -> None:
    with Lab(log_level="info") as lab:
        lab.start()
        from vpn.control import socket_path

        ctl = socket_path(lab.server.iface)
        uapi = Path("/var/run/wireguard") / f"{lab.server.iface}.sock"
        assert ctl.exists() and uapi.exists()
        t0 = time.monotonic()
        lab.srv_ns.run(f"ip link del {lab.server.iface}")
        assert wait_for(lambda: not lab.server.alive(), timeout=10), "daemon still running 10 s after its tun vanished"
        took = time.monotonic() - t0
        code = lab.server.proc.returncode if lab.server.proc else None
        log = lab.server.log_text()
        report("tun-deleted", exit_seconds=round(took, 2), exit_code=code,
               log_lines=[ln for ln in log.splitlines() if "delet" in ln or "tun" in ln.lower()][-3:])
        assert took < 5
        assert code == 0
        assert "interface was deleted" in log or "the tun device is gone" in log
        assert not ctl.exists() and not uapi.exists()
        assert lab.client.alive()
        assert_no_traceback(lab.server, lab.client)


@pytest.mark.root
def test_underlay_faults_are_survived_and_counted() -> None:
    with Lab(log_level="info") as lab:
        lab.start()
        cli, ns = lab.client, lab.cli_ns
        figures: dict[str, object] = {}
        faults = [
            ("address_removed", "ip addr del 198.18.1.2/24 dev eth0", "ip addr add 198.18.1.2/24 dev eth0"),
            ("link_down", "ip link set eth0 down", "ip link set eth0 up"),
            ("firewall_eperm", "nft -f -", "nft delete table inet pvhostile"),
        ]
        nft_rules = ("table inet pvhostile {\n chain out {\n  type filter hook output priority 0;\n"
                     "  udp dport 51820 drop\n }\n}\n")
        for name, break_cmd, fix_cmd in faults:
            before = cli.log_text()
            ns.run(break_cmd, input=nft_rules if "nft -f" in break_cmd else None)
            lost = lab.ping(count=4, interval=0.2, timeout=0.5)
            ns.run(fix_cmd)
            took = recover(lab, timeout=20)
            start = len(before)
            wait_for(lambda: "no more UDP socket errors" in cli.log_text()[start:], timeout=5)  # noqa: B023
            new_log = cli.log_text()[start:]
            figures[name] = {"ping_replies_during": lost, "recovered_s": round(took, 2),
                             "log": [ln for ln in new_log.splitlines() if "UDP" in ln][:2]}
            assert lost == 0, name
            assert cli.alive() and lab.server.alive()
            # a clear line about the failing sends, and one when they stop
            assert "UDP socket errors" in new_log and "no more UDP socket errors" in new_log, (name, new_log)
        report("underlay-faults", **figures)
        assert_no_traceback(lab.server, cli)
