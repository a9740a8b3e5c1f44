"""A handshake-initiation flood against a running server while a client's transfer goes on.

An attacker namespace sends ≥ 10,000 initiations/s for 5 s (``PYVPN_FLOOD_SECONDS``,
``PYVPN_FLOOD_RATE``) from 64 source ports: garbage bodies and real initiations from an unknown
static key, all with a valid mac1 for the server's key; initiations with an invalid mac1 (their
own ports, which must never get an answer); and, on the ports that got a cookie reply, initiations
with a valid mac2 (which then meet the per-source rate limit).  The server must go into cookie
mode, count every datagram under a reason, keep its RSS and fds flat, and keep carrying the
established client's TCP transfer (throughput before/during/after is reported).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from hostile_harness import (
    PORT,
    SERVER_ATTACKER_SIDE,
    SERVER_TUN,
    Daemon,
    Lab,
    assert_no_traceback,
    env_int,
    report,
    udp_snmp,
)
from netns import wait_for

from crypto.constants import COOKIE_REPLIES_BURST, RATELIMIT_BURST
from crypto.keys import encode_key, private_from_random, public_from_private
from crypto.messages import INITIATION_MAC1_OFFSET
from crypto.noise import LABEL_MAC1
from crypto.primitives import hash_, mac
from crypto.tunnel import Core

FLOOD_REASONS = ("cookie_reply_sent", "cookie_reply_limited", "invalid_mac1", "rate_limited", "decrypt_failed",
                 "unknown_peer", "handshake_flood", "stale_timestamp")


def _rate(samples: list[list[float]], start: float, end: float) -> float:
    """MB/s received by the sink between two monotonic times (linear between samples)."""
    def at(t: float) -> float:
        prev = samples[0]
        for s in samples:
            if s[0] >= t:
                if s[0] == prev[0]:
                    return s[1]
                return prev[1] + (s[1] - prev[1]) * (t - prev[0]) / (s[0] - prev[0])
            prev = s
        return samples[-1][1]
    return (at(end) - at(start)) / max(1e-9, end - start) / 1e6


def _settled(d: Daemon) -> bool:
    first = sum(d.drops().values())
    time.sleep(0.2)
    return sum(d.drops().values()) == first


@pytest.mark.root
@pytest.mark.slow
def test_handshake_flood_cookie_mode_and_transfer_continues() -> None:
    seconds = env_int("PYVPN_FLOOD_SECONDS", 5)
    rate = env_int("PYVPN_FLOOD_RATE", 12_000)
    with Lab(attacker=True, log_level="info") as lab:
        lab.start()
        srv = lab.server
        total_s = seconds + 6
        sink = lab.tool(lab.srv_ns, "tcp-sink", "--bind", SERVER_TUN, "--port", "5003", "--timeout", "60",
                        "--sample", "0.25")
        time.sleep(0.3)
        src = lab.tool(lab.cli_ns, "tcp-source", "--connect", f"{SERVER_TUN}:5003", "--bytes", str(1 << 40),
                       "--seconds", str(total_s), "--timeout", "60")
        time.sleep(3.0)  # baseline
        rss0, cpu0, fds0, drops0, snmp0 = srv.rss_kb(), srv.cpu_seconds(), srv.fd_count(), srv.drops(), \
            udp_snmp(lab.srv_ns)
        t0 = time.monotonic()
        fl = lab.run_tool(lab.atk_ns, "flood", "--target", f"{SERVER_ATTACKER_SIDE}:{PORT}", "--server-pub",
                          encode_key(lab.server_key[1]), "--seconds", str(seconds), "--rate", str(rate),
                          timeout=seconds + 30)
        t1 = time.monotonic()
        rss1, cpu1, fds1, snap = srv.rss_kb(), srv.cpu_seconds(), srv.fd_count(), srv.show()
        wait_for(lambda: _settled(srv), timeout=5, interval=0.3)  # the socket queue drains
        drops = dict(srv.drops() - drops0)
        kernel = udp_snmp(lab.srv_ns).get("RcvbufErrors", 0) - snmp0.get("RcvbufErrors", 0)
        sent = lab.tool_result(src, total_s + 60)
        got = lab.tool_result(sink, 60)

        flood_drops = sum(drops.get(r, 0) for r in FLOOD_REASONS)
        samples = got["samples"]
        figures: dict[str, Any] = {
            "flood": {k: fl[k] for k in ("sent", "replies", "total", "source_ports", "cpu_seconds")},
            "flood_rate_per_s": round(fl["rate"]), "server_drops": drops, "kernel_rcvbuf_drops": kernel,
            "server_cpu_during_flood": round((cpu1 - cpu0) / (t1 - t0), 2),
            "server_rss_kb": [rss0, rss1], "server_fds": [fds0, fds1],
            "tcp_MB_per_s": {"before": round(_rate(samples, t0 - 2.5, t0), 1),
                             "during": round(_rate(samples, fl["t0"], fl["t_end"]), 1),
                             "after": round(_rate(samples, t1 + 0.5, t1 + 2.5), 1)},
            "tcp_bytes": got["bytes"]}
        report("flood", **figures)

        assert fl["rate"] >= 10_000, fl
        assert srv.alive(), srv.log_tail()
        # cookie mode: valid-mac1 initiations were answered with cookies, mac2 ones met the rate limit
        assert drops.get("cookie_reply_sent", 0) > 0 and fl["replies"].get("valid_cookie", 0) > 0
        assert fl["replies"]["valid_cookie"] <= drops["cookie_reply_sent"]
        assert fl["replies"].get("cookie_decrypted", 0) > 0 and fl["sent"].get("valid_mac2", 0) > 0
        assert drops.get("rate_limited", 0) > 0
        # invalid mac1: no reply at all
        assert not {k: v for k, v in fl["replies"].items() if k.startswith("invalid_")}, fl["replies"]
        assert drops.get("invalid_mac1", 0) > 0
        # every flood datagram is accounted for: a drop reason, or the kernel's full socket buffer
        assert flood_drops <= fl["total"] <= flood_drops + kernel, (fl["total"], flood_drops, kernel, drops)
        assert set(drops) <= {*FLOOD_REASONS, "no_route"}, drops
        # bounded resources; the established transfer kept going and arrived intact
        assert rss1 - rss0 < 32 * 1024, (rss0, rss1)
        assert abs(fds1 - fds0) <= 2, (fds0, fds1)
        assert sent["error"] is None and got["sha256"] == sent["sha256"] and got["bytes"] == sent["bytes"]
        assert _rate(samples, fl["t0"], fl["t_end"]) > 0
        assert lab.ping(count=3, interval=0.05) == 3
        assert snap["peers"][0]["handshakes"] >= 1
        assert_no_traceback(srv, lab.client)


def test_cookie_replies_are_limited_per_source_and_in_total() -> None:
    """Sans-IO: under load, cookie replies are bounded per source IP and for all sources together."""
    rng = os.urandom
    priv = private_from_random(rng(32))
    core = Core(priv, rng=rng)
    core.force_under_load = True
    key = hash_(LABEL_MAC1, public_from_private(priv))

    def initiation(i: int) -> bytes:
        body = b"\x01\0\0\0" + i.to_bytes(4, "little") + rng(108)
        assert len(body) == INITIATION_MAC1_OFFSET
        return body + mac(key, body) + bytes(16)

    # one source: a burst, then nothing until tokens come back
    for i in range(50):
        core.decapsulate(("198.18.3.2", 1000 + i), [initiation(i)], now=1.0)
    assert core.drops["cookie_reply_sent"] == RATELIMIT_BURST
    assert core.drops["cookie_reply_limited"] == 50 - RATELIMIT_BURST
    core.decapsulate(("198.18.3.2", 999), [initiation(99)], now=2.0)
    assert core.drops["cookie_reply_sent"] == RATELIMIT_BURST + 1
    # many sources: the global budget caps the total
    core.drops.clear()
    for i in range(3 * COOKIE_REPLIES_BURST):
        core.decapsulate((f"198.18.{4 + i // 250}.{i % 250 + 1}", 1), [initiation(i)], now=10.0)
    sent = core.drops["cookie_reply_sent"]
    assert COOKIE_REPLIES_BURST - 1 <= sent <= COOKIE_REPLIES_BURST  # float token arithmetic: ±1
    assert core.drops["cookie_reply_limited"] == 3 * COOKIE_REPLIES_BURST - sent
    assert sum(len(ds) for _, ds in core.take_outbox()) == sent + RATELIMIT_BURST + 1
