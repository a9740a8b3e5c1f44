"""Replayed handshake and transport datagrams against running daemons.

The relay records every datagram it forwards (handshake included) and later injects them
again, unchanged, from the same address: immediately, after one and two rekeys (forced with the
test-only ``PYVPN_TEST_REKEY_AFTER_TIME``), and after a restart of the receiver.  Each replay
must be dropped with the right reason, nothing may reach the tun, and the peer's state
(handshake count and time, received counters, endpoint) must not move.

One exception is inherent to WireGuard (whitepaper §5.1) and is checked as such: a responder
that has just restarted has forgotten the peer's last TAI64N timestamp, so an old initiation
is answered with a response; the session it starts can never be confirmed (the attacker has
no keys), nothing is delivered, and a second copy is then refused as ``stale_timestamp``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hostile_harness import CLIENT_TUN, SERVER_TUN, Daemon, Lab, assert_no_traceback, report

TRANSPORT = ("data", "keepalive")
# The kernel's own packets on a fresh tun (IPv6 router solicitations, MLD reports to ff02::) have no
# route through the tunnel; they are counted on the send side and have nothing to do with replays.
OUTBOUND_CHATTER = ("no_route",)


def state(d: Daemon) -> dict[str, Any]:
    p = d.first_peer()
    return {"handshakes": p["handshakes"], "latest_handshake": p["latest_handshake"],
            "rx_packets": p["rx_packets"], "rx_bytes": p["rx_bytes"], "endpoint": p["endpoint"],
            "tun_rx": d.tun_counters()["rx_packets"]}


def traffic(lab: Lab) -> None:
    """Both directions: pings and a small TCP transfer."""
    assert lab.ping(count=5, interval=0.05) == 5
    sink = lab.tool(lab.srv_ns, "tcp-sink", "--bind", SERVER_TUN, "--port", "5002", "--timeout", "10")
    time.sleep(0.2)
    src = lab.run_tool(lab.cli_ns, "tcp-source", "--connect", f"{SERVER_TUN}:5002", "--bytes", str(200_000),
                       "--timeout", "10")
    assert lab.tool_result(sink, 15)["sha256"] == src["sha256"]


def inject(lab: Lab, direction: str, kinds: tuple[str, ...]) -> dict[str, int]:
    assert lab.relay is not None
    r = lab.relay.call({"cmd": "inject", "dir": direction, "kinds": list(kinds)})
    time.sleep(0.3)
    return dict(r["sent"])


def quiet_replay(lab: Lab, receiver: Daemon, direction: str, kinds: tuple[str, ...],
                 reasons: tuple[str, ...]) -> dict[str, Any]:
    """Inject recorded datagrams while the tunnel is idle; every one is dropped for ``reasons``."""
    time.sleep(0.2)
    s0, d0 = state(receiver), receiver.drops()
    sent = inject(lab, direction, kinds)
    s1, d1 = state(receiver), receiver.drops()
    delta = {k: v for k, v in (d1 - d0).items() if k not in OUTBOUND_CHATTER}
    assert sum(sent.values()) > 0
    assert sum(delta.get(r, 0) for r in reasons) == sum(sent.values()), (sent, delta)
    assert set(delta) <= set(reasons), delta
    assert s1 == s0, (s0, s1)  # nothing delivered, no state moved
    return {"sent": sent, "drops": delta}


@pytest.mark.root
def test_immediate_replay_is_dropped() -> None:
    with Lab(relay=True) as lab:
        lab.start(record=True)
        traffic(lab)
        assert lab.relay is not None
        rec = lab.relay.call({"cmd": "recorded"})["kinds"]
        assert rec.get("up_init", 0) >= 1 and rec.get("down_resp", 0) >= 1 and rec.get("up_data", 0) > 100
        lab.relay.call({"cmd": "record", "on": False, "clear": False})
        up_t = quiet_replay(lab, lab.server, "up", TRANSPORT, ("replayed_counter",))
        up_i = quiet_replay(lab, lab.server, "up", ("init",), ("stale_timestamp",))
        down_t = quiet_replay(lab, lab.client, "down", TRANSPORT, ("replayed_counter",))
        down_r = quiet_replay(lab, lab.client, "down", ("resp",), ("unknown_index",))
        # the tunnel still works
        assert lab.ping(count=3, interval=0.05) == 3
        report("replay-immediate", to_server_transport=up_t, to_server_init=up_i, to_client_transport=down_t,
               to_client_resp=down_r)
        assert_no_traceback(lab.server, lab.client)


def wait_handshakes(lab: Lab, d: Daemon, n: int, timeout: float = 20.0) -> None:
    """Keep traffic flowing until ``d`` has completed ``n`` handshakes (rekeys are forced short)."""
    deadline = time.monotonic() + timeout
    while d.first_peer()["handshakes"] < n:
        assert time.monotonic() < deadline, f"no rekey to {n} handshakes in {timeout}s\n{lab.logs()}"
        lab.ping(count=2, interval=0.2)


@pytest.mark.root
@pytest.mark.slow
def test_replay_after_rekey_is_dropped() -> None:
    # The client initiates every rekey: REKEY_AFTER_TIME = 2 s, so one every REKEY_TIMEOUT (5 s) of traffic.
    with Lab(relay=True, client_env={"PYVPN_TEST_REKEY_AFTER_TIME": "2"}) as lab:
        lab.start(record=True)
        traffic(lab)
        assert lab.relay is not None
        lab.relay.call({"cmd": "record", "on": False, "clear": False})
        h0 = lab.client.first_peer()["handshakes"]
        # After one rekey the old keypair is the "previous" one: its replay window still answers.
        wait_handshakes(lab, lab.client, h0 + 1)
        assert lab.ping(count=2, interval=0.05) == 2  # the server rotates to the new keypair
        one_up = quiet_replay(lab, lab.server, "up", TRANSPORT, ("replayed_counter", "unknown_index"))
        one_init = quiet_replay(lab, lab.server, "up", ("init",), ("stale_timestamp",))
        one_down = quiet_replay(lab, lab.client, "down", TRANSPORT, ("replayed_counter", "unknown_index"))
        # After a second rekey it is gone: its index is unknown.
        wait_handshakes(lab, lab.client, h0 + 2)
        assert lab.ping(count=2, interval=0.05) == 2
        two_up = quiet_replay(lab, lab.server, "up", TRANSPORT, ("unknown_index",))
        two_down = quiet_replay(lab, lab.client, "down", TRANSPORT, ("unknown_index",))
        two_init = quiet_replay(lab, lab.server, "up", ("init",), ("stale_timestamp",))
        two_resp = quiet_replay(lab, lab.client, "down", ("resp",), ("unknown_index",))
        assert lab.ping(count=3, interval=0.05) == 3
        report("replay-after-rekey", handshakes=lab.client.first_peer()["handshakes"], after_one_rekey_up=one_up,
               after_one_rekey_init=one_init, after_one_rekey_down=one_down, after_two_rekeys_up=two_up,
               after_two_rekeys_down=two_down, after_two_rekeys_init=two_init, after_two_rekeys_resp=two_resp)
        assert_no_traceback(lab.server, lab.client)


@pytest.mark.root
@pytest.mark.slow
def test_replay_after_receiver_restart_is_dropped() -> None:
    # The server knows the client's (relayed) endpoint so that it can re-initiate after its restart.
    with Lab(relay=True, server_knows_endpoint=True) as lab:
        lab.start(record=True)
        traffic(lab)
        assert lab.relay is not None
        lab.relay.call({"cmd": "record", "on": False, "clear": False})

        # -- restart the server: old transport is unknown; an old initiation (§5.1) is answered once
        lab.server.stop()
        lab.server.start()
        srv_transport = quiet_replay(lab, lab.server, "up", TRANSPORT, ("unknown_index",))
        s0, d0 = state(lab.server), lab.server.drops()
        resp0 = lab.relay.stats()["down"].get("received_resp", 0)
        sent = inject(lab, "up", ("init",))
        s1, d1 = state(lab.server), lab.server.drops()
        answered = lab.relay.stats()["down"].get("received_resp", 0) - resp0
        assert answered == 1 and sum(sent.values()) == 1, (sent, answered, dict(d1 - d0))
        assert s1["handshakes"] == s0["handshakes"] == 0 and s1["latest_handshake"] == 0
        assert s1["tun_rx"] == s0["tun_rx"] and s1["rx_packets"] == s0["rx_packets"]
        srv_init_again = quiet_replay(lab, lab.server, "up", ("init",), ("stale_timestamp",))
        # The real tunnel recovers: the server initiates on a packet to the client.  Its answer to the
        # replayed initiation counts as a sent handshake (as in wireguard-go), so its own initiation
        # waits out REKEY_TIMEOUT (5 s) first.
        t0 = time.monotonic()
        while lab.ping(count=1, timeout=1, src_ns=lab.srv_ns, dst=CLIENT_TUN) != 1:
            assert time.monotonic() - t0 < 15, lab.logs()
        recovered = time.monotonic() - t0
        assert lab.ping(count=3, interval=0.05) == 3
        srv_after = quiet_replay(lab, lab.server, "up", TRANSPORT + ("init",),
                                 ("unknown_index", "stale_timestamp"))

        # -- restart the client: old responses and transport are unknown to it
        lab.client.stop()
        lab.client.start()
        lab.handshake()
        cli_after = quiet_replay(lab, lab.client, "down", TRANSPORT + ("resp",), ("unknown_index",))
        assert lab.ping(count=3, interval=0.05) == 3
        report("replay-after-restart", server_transport=srv_transport, server_old_init_answered=answered,
               server_recovered_after_s=round(recovered, 1),
               server_old_init_again=srv_init_again, server_after_new_session=srv_after, client_after=cli_after)
        assert_no_traceback(lab.server, lab.client)
