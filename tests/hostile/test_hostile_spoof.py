"""Spoofed inner sources, strangers and removed peers against running daemons.

- Inner packets whose source is outside the sending peer's AllowedIPs — an unassigned address,
  or an address that belongs to another peer — are dropped by the server (``spoofed_source``,
  also on the peer's own counter) and never reach its tun.
- A pyvpn client with a key the server does not know never gets a session (``unknown_peer``).
- A peer removed with ``wg set IFACE peer KEY remove`` (the UAPI socket) loses access at once:
  its very next packets are ``unknown_index`` and nothing reaches the tun.
"""

from __future__ import annotations

import time

import pytest
from hostile_harness import (
    CLIENT_TUN,
    PORT,
    SERVER_ATTACKER_SIDE,
    Daemon,
    Lab,
    assert_no_traceback,
    keypair,
    report,
)

from crypto.keys import encode_key
from vpn.testlab import configs
from vpn.testlab.netns import run, wait_for


@pytest.mark.root
def test_spoofed_inner_sources_are_dropped() -> None:
    _, other_pub = keypair()
    extra = [configs.peer(encode_key(other_pub), name="other", allowed_ips=["198.19.0.50/32"])]
    with Lab() as lab:
        lab.start(server_extra_peers=extra)
        srv = lab.server
        d0, tun0 = srv.drops(), srv.tun_counters()
        p0 = srv.first_peer()["drops"].get("spoofed_source", 0)
        sent: dict[str, int] = {}
        for label, spoof, spoof6 in (("unassigned", "198.19.0.77", "fd00:19::77"),
                                     ("other_peer", "198.19.0.50", "fd00:19::50")):
            res = lab.run_tool(lab.cli_ns, "tun-inject", "--ifname", lab.client_if, "--count", "400", "--classes",
                               "spoofed,spoofed6", "--spoof-src", spoof, "--spoof-src6", spoof6, "--src", CLIENT_TUN)
            assert not res["errors"], res
            sent[label] = sum(res["sent"].values())
        wait_for(lambda: srv.drops()["spoofed_source"] - d0["spoofed_source"] >= sum(sent.values()), timeout=5)
        drops = dict(srv.drops() - d0)
        peer_drops = srv.first_peer()["drops"].get("spoofed_source", 0) - p0
        tun_rx = srv.tun_counters()["rx_packets"] - tun0["rx_packets"]
        report("spoofed-sources", sent=sent, server_drops=drops, client_peer_spoofed=peer_drops, tun_writes=tun_rx)
        assert drops.get("spoofed_source", 0) == sum(sent.values()) == peer_drops
        assert tun_rx == 0
        assert lab.ping(count=2, interval=0.05) == 2
        assert_no_traceback(srv, lab.client)


@pytest.mark.root
def test_unknown_key_gets_no_session() -> None:
    with Lab(attacker=True) as lab:
        lab.start()
        srv = lab.server
        d0 = srv.drops()
        s_priv, _ = keypair()
        iface = f"{lab.client_if[:-1]}x"
        conf = lab.write("stranger.conf", configs.config_text(
            configs.interface(encode_key(s_priv), addresses=["198.19.0.66/24"], name=iface),
            [configs.peer(encode_key(lab.server_key[1]), endpoint=f"{SERVER_ATTACKER_SIDE}:{PORT}",
                          allowed_ips=["198.19.0.0/24"])]))
        stranger = Daemon(lab.atk_ns, "client", iface, conf, lab.workdir / "stranger.log")
        try:
            stranger.start()
            assert lab.ping(count=2, interval=0.2, timeout=0.5, src_ns=lab.atk_ns) == 0
            wait_for(lambda: srv.drops()["unknown_peer"] > d0["unknown_peer"], timeout=5)
            drops = dict(srv.drops() - d0)
            peer = stranger.first_peer()
            report("stranger", server_drops=drops, stranger_peer={k: peer[k] for k in (
                "latest_handshake", "rx_bytes", "tx_bytes", "handshakes")})
            assert drops.get("unknown_peer", 0) >= 1
            assert peer["latest_handshake"] == 0 and peer["handshakes"] == 0 and peer["rx_bytes"] == 0
            assert [p["name"] for p in srv.show()["peers"]] == ["client"]
            assert lab.ping(count=2, interval=0.05) == 2  # the real client is unaffected
            assert_no_traceback(srv, stranger)
        finally:
            stranger.stop()


@pytest.mark.root
def test_removed_peer_loses_access_at_once() -> None:
    with Lab() as lab:
        lab.start()
        srv = lab.server
        assert lab.ping(count=3, interval=0.05) == 3
        d0, tun0 = srv.drops(), srv.tun_counters()
        t0 = time.monotonic()
        run(["wg", "set", srv.iface, "peer", encode_key(lab.client_key[1]), "remove"])
        removed_in = time.monotonic() - t0
        assert srv.show()["peers"] == []
        replies = lab.ping(count=5, interval=0.1, timeout=0.5)
        # and from the server side: no route any more
        back = lab.ping(count=2, interval=0.1, timeout=0.5, src_ns=lab.srv_ns, dst=CLIENT_TUN)
        drops = dict(srv.drops() - d0)
        tun_rx = srv.tun_counters()["rx_packets"] - tun0["rx_packets"]
        report("removed-peer", wg_set_seconds=round(removed_in, 3), ping_replies_after=replies, server_drops=drops,
               tun_writes=tun_rx)
        assert replies == 0 and back == 0
        assert drops.get("unknown_index", 0) >= 5
        assert tun_rx == 0
        assert_no_traceback(srv, lab.client)
