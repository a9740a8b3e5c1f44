"""A TCP transfer through pyvpn over a lossy, duplicating, reordering and corrupting underlay.

The impairment relay (:mod:`hostile_relay`) sits between client and server.  With 5 % loss,
5 % duplication, 5 % of datagrams held back up to 3 ms (reordering) and 1 % single-bit
corruption in both directions, a 50 MB TCP transfer (``PYVPN_LOSSY_MB``) must arrive
byte-identical, and each receiver's counters must match the relay's prediction exactly:
every corrupted transport datagram is a ``decrypt_failed`` (or, header damaged, an
``unknown_index``/``unknown_type``), every duplicate a ``replayed_counter``, and the number of
inner packets written to the tun equals the number of intact first copies — so no corrupted or
duplicated packet ever reached the tun.  (Kernel receive-buffer drops, if any, are allowed for.)
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hostile_harness import SERVER_TUN, Daemon, Lab, assert_no_traceback, env_int, report, udp_snmp

HEADER_REASONS = ("unknown_index", "unknown_type", "short", "malformed")


def _check_receiver(name: str, d: Daemon, expected: dict[str, int], drops: dict[str, int], tun_rx: int,
                    peer_rx: int, kernel_drops: int, coalescing: bool) -> None:
    slack = kernel_drops
    for reason in ("decrypt_failed", "replayed_counter"):
        assert abs(drops.get(reason, 0) - expected.get(reason, 0)) <= slack, (name, reason, drops, expected)
    header = sum(drops.get(r, 0) for r in HEADER_REASONS)
    assert abs(header - expected.get("corrupt_header", 0)) <= slack, (name, drops, expected)
    unexpected = {k: v for k, v in drops.items()
                  if k not in ("decrypt_failed", "replayed_counter", "no_route", *HEADER_REASONS)}
    assert not unexpected, (name, unexpected)
    data = expected.get("delivered_data", 0)
    if coalescing:
        assert tun_rx <= data, (name, tun_rx, data)
    else:
        assert abs(tun_rx - data) <= slack, (name, "tun writes", tun_rx, "intact first copies", data)
    assert abs(peer_rx - data - expected.get("delivered_keepalive", 0)) <= slack, (name, peer_rx, expected)


@pytest.mark.root
@pytest.mark.slow
def test_tcp_transfer_survives_loss_duplication_reordering_corruption() -> None:
    size = env_int("PYVPN_LOSSY_MB", 50) << 20
    with Lab(relay=True, relay_args=["--seed", "7"], log_level="info") as lab:
        lab.start()
        assert lab.relay is not None
        srv, cli = lab.server, lab.client
        before: dict[str, Any] = {
            "srv_tun": srv.tun_counters(), "cli_tun": cli.tun_counters(), "srv_drops": srv.drops(),
            "cli_drops": cli.drops(), "srv_peer": srv.first_peer()["rx_packets"],
            "cli_peer": cli.first_peer()["rx_packets"],
            "srv_snmp": udp_snmp(lab.srv_ns), "cli_snmp": udp_snmp(lab.cli_ns)}
        lab.relay.call({"cmd": "reset"})
        lab.relay.set(loss=0.05, dup=0.05, corrupt=0.01, reorder=0.05, reorder_ms=3)
        sink = lab.tool(lab.srv_ns, "tcp-sink", "--bind", SERVER_TUN, "--port", "5001", "--timeout", "60")
        time.sleep(0.3)
        t0 = time.monotonic()
        src = lab.run_tool(lab.cli_ns, "tcp-source", "--connect", f"{SERVER_TUN}:5001", "--bytes", str(size),
                           "--timeout", "60", timeout=300)
        got = lab.tool_result(sink, 60)
        elapsed = time.monotonic() - t0
        lab.relay.set(loss=0, dup=0, corrupt=0, reorder=0)
        time.sleep(0.3)  # let held-back datagrams drain
        st = lab.relay.stats()
        assert st["pending"] == 0

        assert src["error"] is None and got["error"] is None, (src, got)
        assert got["bytes"] == src["bytes"] == size
        assert got["sha256"] == src["sha256"]
        for direction in ("up", "down"):
            for what in ("dropped", "duplicated", "corrupted", "held_back"):
                assert st[direction].get(what, 0) > 0, (direction, what, st)

        coalescing = any(o.startswith("tun:") for o in (srv.show().get("offloads") or []))
        figures: dict[str, Any] = {"bytes": size, "seconds": round(elapsed, 1),
                                   "MB_per_s": round(size / elapsed / 1e6, 2), "relay": st}
        for name, d, direction, tun_key, drops_key, peer_key, snmp_key, ns in (
                ("server", srv, "up", "srv_tun", "srv_drops", "srv_peer", "srv_snmp", lab.srv_ns),
                ("client", cli, "down", "cli_tun", "cli_drops", "cli_peer", "cli_snmp", lab.cli_ns)):
            snmp = udp_snmp(ns)
            kernel = (snmp.get("RcvbufErrors", 0) - before[snmp_key].get("RcvbufErrors", 0)
                      + snmp.get("InErrors", 0) - before[snmp_key].get("InErrors", 0))
            drops = dict(d.drops() - before[drops_key])
            tun_rx = d.tun_counters()["rx_packets"] - before[tun_key]["rx_packets"]
            peer_rx = d.first_peer()["rx_packets"] - before[peer_key]
            _check_receiver(name, d, st["expected"][direction], drops, tun_rx, peer_rx, kernel, coalescing)
            figures[name] = {"drops": drops, "tun_writes": tun_rx, "kernel_drops": kernel}
        report("lossy", **figures)
        assert srv.alive() and cli.alive()
        assert_no_traceback(srv, cli)
