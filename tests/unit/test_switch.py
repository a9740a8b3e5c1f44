"""Unit tests for ``vpn.l2.switch``, its MAC table, VLAN helpers and token bucket: MAC learning and aging on
a fake clock, forwarding tables, whole hub and full-mesh topologies simulated in memory (no frame back to its
source, no duplicates), the table bound under a flood of 100k random source MACs, VLAN helpers, and a fuzz
loop."""

from __future__ import annotations

import dataclasses
import random
import tracemalloc
from collections import Counter, deque

import pytest

from crypto.ratelimiter import TokenBucket
from vpn.l2.ethernet import VlanMap, add_vlan, is_group, same_head_runs, strip_vlan, vlan_of
from vpn.l2.mactable import LOCAL, MacEvent, MacTable
from vpn.l2.switch import DROP, LOCAL_ONLY, Forward, Switch
from vpn.testlab.packets import eth

BCAST = bytes.fromhex("ffffffffffff")
MCAST = bytes.fromhex("01005e000001")


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, n >> 8, n & 0xFF])


def frame(dst: bytes, src: bytes, payload: bytes = b"payload", *, tag: bytes = b"") -> bytes:
    return eth(payload, dst=dst, src=src, ethertype=0x88B5, tags=tag)


# -- MacTable -----------------------------------------------------------------------------------------------------
def test_learn_lookup_and_unknown() -> None:
    t: MacTable[str] = MacTable()
    assert t.lookup(mac(1), now=0.0) is None
    t.learn(mac(1), "A", now=0.0)
    t.learn(mac(2), LOCAL, now=0.0)
    assert t.lookup(mac(1), now=1.0) == "A"
    assert t.lookup(mac(2), now=1.0) == LOCAL
    assert len(t) == 2
    assert t.counters == Counter(learned=2)


def test_aging_with_fake_clock() -> None:
    t: MacTable[str] = MacTable(age=300.0)
    t.learn(mac(1), "A", now=1000.0)
    assert t.lookup(mac(1), now=1299.9) == "A"
    assert t.lookup(mac(1), now=1300.0) is None  # lives exactly `age` seconds
    assert len(t) == 0 and t.counters["expired"] == 1


def test_refresh_extends_life() -> None:
    t: MacTable[str] = MacTable(age=300.0)
    t.learn(mac(1), "A", now=0.0)
    t.learn(mac(1), "A", now=200.0)
    assert t.lookup(mac(1), now=499.0) == "A"
    assert t.lookup(mac(1), now=500.0) is None
    assert t.counters["learned"] == 1 and t.counters["moved"] == 0


def test_move() -> None:
    t: MacTable[str] = MacTable()
    t.learn(mac(1), "A", now=0.0)
    t.learn(mac(1), "B", now=1.0)
    assert t.lookup(mac(1), now=2.0) == "B"
    t.learn(mac(1), LOCAL, now=3.0)
    assert t.lookup(mac(1), now=4.0) == LOCAL
    assert t.counters["moved"] == 2 and len(t) == 1


def test_relearn_after_expiry_is_not_a_move() -> None:
    t: MacTable[str] = MacTable(age=10.0)
    t.learn(mac(1), "A", now=0.0)
    t.learn(mac(1), "B", now=50.0)
    assert t.counters == Counter(learned=2, expired=1)
    assert t.lookup(mac(1), now=55.0) == "B"


def test_expire_removes_only_old_entries() -> None:
    t: MacTable[str] = MacTable(age=100.0)
    for i in range(10):
        t.learn(mac(i), "A", now=float(i * 10))  # seen at 0, 10, ..., 90
    t.learn(mac(0), "A", now=95.0)  # refreshed: now the youngest
    assert t.expire(now=125.0) == 2  # seen at 10 and 20 (115 and 105 s old); 30 is 95 s old
    assert [m for m, _p, _age in t.entries(now=125.0)] == [mac(i) for i in (3, 4, 5, 6, 7, 8, 9, 0)]
    assert t.expire(now=125.0) == 0
    assert t.expire(now=10_000.0) == 8 and len(t) == 0
    assert t.counters["expired"] == 10


def test_group_macs_never_learned() -> None:
    t: MacTable[str] = MacTable()
    for m in (BCAST, MCAST, bytes.fromhex("333300000001"), bytes.fromhex("0180c2000000")):
        assert is_group(m)
        t.learn(m, "A", now=0.0)
        assert t.lookup(m, now=0.0) is None
    assert len(t) == 0 and t.counters == Counter(group_source=4)


def test_full_table_refuses_new_macs_but_reclaims_expired_ones() -> None:
    t: MacTable[str] = MacTable(max_entries=3, age=60.0)
    for i in range(3):
        t.learn(mac(i), "A", now=0.0)
    t.learn(mac(9), "B", now=1.0)
    assert t.lookup(mac(9), now=1.0) is None and t.counters["refused"] == 1
    t.learn(mac(0), "B", now=2.0)  # known MACs still refresh and move on a full table
    assert t.lookup(mac(0), now=2.0) == "B"
    t.learn(mac(9), "B", now=60.0)  # mac(1), mac(2) have expired: reclaimed for the newcomer
    assert t.lookup(mac(9), now=60.0) == "B" and len(t) == 2
    assert t.lookup(mac(0), now=60.0) == "B"


def test_remove_port_and_entries_snapshot() -> None:
    t: MacTable[str] = MacTable()
    for i in range(6):
        t.learn(mac(i), "AB"[i % 2], now=float(i))
    assert t.remove_port("A") == 3
    assert [(m, p) for m, p, _age in t.entries(now=10.0)] == [(mac(1), "B"), (mac(3), "B"), (mac(5), "B")]
    assert [age for _m, _p, age in t.entries(now=10.0)] == [9.0, 7.0, 5.0]
    assert t.counters["removed"] == 3


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"age": 0.0}, {"age": -1.0}, {"age": float("nan")}])
def test_table_rejects_bad_config(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MacTable(**kwargs)  # type: ignore[arg-type]


# -- Switch: single-node decisions -------------------------------------------------------------------------------
def spoke(*peers: str, hub: bool = False, **kw: float) -> Switch[str]:
    sw: Switch[str] = Switch(100, hub=hub, **kw)  # type: ignore[arg-type]
    for p in peers:
        sw.add_peer(p)
    return sw


def test_from_local_floods_group_and_unknown_then_unicasts_learned() -> None:
    sw = spoke("A", "B", "C")
    me, far = mac(1), mac(2)
    assert sw.from_local(frame(BCAST, me), now=0.0) == Forward(False, ("A", "B", "C"))
    assert sw.from_local(frame(MCAST, me), now=0.0) == Forward(False, ("A", "B", "C"))
    assert sw.from_local(frame(far, me), now=0.0) == Forward(False, ("A", "B", "C"))  # unknown
    assert sw.from_peer(frame(me, far), "B", now=1.0) == LOCAL_ONLY  # learns far -> B
    assert sw.from_local(frame(far, me), now=2.0) == Forward(False, ("B",))
    assert sw.counters == Counter(flood_group=2, flood_unknown=1, local=1, unicast=1)


def test_from_local_to_a_local_mac_is_dropped() -> None:
    sw = spoke("A")
    sw.from_local(frame(BCAST, mac(1)), now=0.0)  # learns mac(1) on LOCAL
    d = sw.from_local(frame(mac(1), mac(2)), now=1.0)
    assert d.dropped and d == DROP
    assert sw.counters["drop_local_destination"] == 1


def test_from_peer_on_a_spoke_never_relays() -> None:
    sw = spoke("A", "B")
    sw.from_local(frame(BCAST, mac(1)), now=0.0)  # mac(1) local
    sw.from_peer(frame(BCAST, mac(2)), "A", now=0.0)  # mac(2) behind A
    sw.from_peer(frame(BCAST, mac(3)), "B", now=0.0)  # mac(3) behind B
    assert sw.from_peer(frame(BCAST, mac(2)), "A", now=1.0) == LOCAL_ONLY
    assert sw.from_peer(frame(mac(9), mac(2)), "A", now=1.0) == LOCAL_ONLY  # unknown: the sender flooded
    assert sw.from_peer(frame(mac(1), mac(2)), "A", now=1.0) == LOCAL_ONLY
    assert sw.from_peer(frame(mac(3), mac(2)), "A", now=1.0) == DROP  # B got its own copy
    assert sw.from_peer(frame(mac(2), mac(2)), "A", now=1.0) == DROP  # hairpin
    assert sw.counters["drop_other_peer"] == 1 and sw.counters["drop_hairpin"] == 1


def test_from_peer_on_a_hub_relays_with_split_horizon() -> None:
    sw = spoke("A", "B", "C", hub=True)
    sw.from_local(frame(BCAST, mac(1)), now=0.0)
    sw.from_peer(frame(BCAST, mac(3)), "C", now=0.0)
    assert sw.from_peer(frame(BCAST, mac(2)), "A", now=1.0) == Forward(True, ("B", "C"))
    assert sw.from_peer(frame(mac(9), mac(2)), "B", now=1.0) == Forward(True, ("A", "C"))  # mac(2) moved to B
    assert sw.from_peer(frame(mac(3), mac(2)), "B", now=1.0) == Forward(False, ("C",))
    assert sw.from_peer(frame(mac(1), mac(2)), "B", now=1.0) == LOCAL_ONLY
    assert sw.from_peer(frame(mac(3), mac(4)), "C", now=1.0) == DROP  # hairpin
    assert sw.table.counters["moved"] == 1


def test_switch_aging_turns_unicast_back_into_flooding() -> None:
    sw = spoke("A", "B", age=30.0)
    sw.from_peer(frame(BCAST, mac(2)), "A", now=0.0)
    assert sw.from_local(frame(mac(2), mac(1)), now=29.0).to_peers == ("A",)
    assert sw.from_local(frame(mac(2), mac(1)), now=30.0).to_peers == ("A", "B")
    sw.from_peer(frame(BCAST, mac(3)), "B", now=30.0)
    assert sw.expire(now=100.0) == 2  # mac(1) (local) and mac(3)


def test_runts_and_bad_sources_are_dropped_and_counted() -> None:
    sw = spoke("A", hub=True)
    for n in range(14):
        assert sw.from_local(bytes(n), now=0.0).dropped
        assert sw.from_peer(b"\xff" * n, "A", now=0.0).dropped
    assert sw.counters["drop_runt"] == 28
    for src in (BCAST, MCAST, bytes(6)):
        assert sw.from_local(frame(mac(1), src), now=0.0).dropped
        assert sw.from_peer(frame(BCAST, src), "A", now=0.0).dropped
    assert sw.counters["drop_bad_source"] == 6
    assert len(sw.table) == 0
    assert sw.from_local(frame(BCAST, mac(1))[:14], now=0.0).to_peers == ("A",)  # 14 bytes is enough


def test_peers_add_remove() -> None:
    sw = spoke("A", "B", hub=True)
    sw.add_peer("A")  # idempotent
    assert sw.peers == ("A", "B")
    with pytest.raises(ValueError):
        sw.add_peer(LOCAL)
    sw.from_peer(frame(BCAST, mac(2)), "A", now=0.0)
    sw.from_peer(frame(BCAST, mac(3)), "A", now=0.0)
    sw.from_peer(frame(BCAST, mac(4)), "B", now=0.0)
    assert sw.remove_peer("A") == 2
    assert sw.remove_peer("A") == 0
    assert sw.peers == ("B",)
    assert sw.from_peer(frame(BCAST, mac(2)), "A", now=1.0).dropped  # gone peers are not heard
    assert sw.counters["drop_unknown_peer"] == 1
    assert sw.from_local(frame(mac(2), mac(1)), now=1.0).to_peers == ("B",)  # forgotten: flooded
    sw.add_peer("C")
    assert sw.from_local(frame(BCAST, mac(1)), now=1.0).to_peers == ("B", "C")
    assert sw.from_peer(frame(BCAST, mac(5)), "C", now=1.0) == Forward(True, ("B",))


def test_no_peers_means_floods_go_nowhere() -> None:
    sw: Switch[str] = Switch(1)
    assert sw.from_local(frame(BCAST, mac(1)), now=0.0).dropped


def test_forward_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DROP.deliver_local = True  # type: ignore[misc]


@pytest.mark.parametrize("vni", [-1, 1 << 24])
def test_switch_rejects_bad_vni(vni: int) -> None:
    with pytest.raises(ValueError):
        Switch(vni)


def test_vlan_tagged_frames_switch_on_their_macs_and_stay_intact() -> None:
    sw = spoke("A", "B")
    tagged = bytearray(frame(BCAST, mac(1), tag=bytes.fromhex("8100a064")))
    before = bytes(tagged)
    assert sw.from_local(tagged, now=0.0).to_peers == ("A", "B")
    reply = memoryview(bytearray(frame(mac(1), mac(2), tag=bytes.fromhex("88a8000a 81000064"))))
    assert sw.from_peer(reply, "B", now=1.0) == LOCAL_ONLY
    assert sw.from_local(frame(mac(2), mac(1), tag=bytes.fromhex("8100a064")), now=2.0).to_peers == ("B",)
    assert bytes(tagged) == before


# -- Switch: untrusted members (fake clock) ---------------------------------------------------------------------
def test_local_macs_are_sticky_against_a_peer_claim() -> None:
    sw = spoke("A", "B", hub=True)
    gw = mac(1)
    sw.from_local(frame(BCAST, gw), now=0.0)  # the LAN's gateway, seen on the tap
    for t in (1.0, 2.0, 299.0):
        assert sw.from_peer(frame(BCAST, gw), "A", now=t) == DROP  # one forged frame: not even flooded
        assert sw.from_peer(frame(mac(2), gw), "A", now=t) == DROP
    assert sw.table.lookup(gw, now=299.0) == LOCAL
    assert sw.from_local(frame(gw, mac(3)), now=299.0) == DROP  # LAN traffic to the gateway stays on the LAN
    assert sw.counters["drop_local_mac_claim"] == 6 and sw.table.counters["refused_sticky"] == 6
    assert sw.table.take_events() == [(MacEvent("local_claim", gw, LOCAL, "A"), 6)]
    assert sw.table.take_events() == []  # drained
    # the tap always wins: a MAC behind a peer that shows up on the LAN moves there at once
    sw.from_peer(frame(BCAST, mac(4)), "B", now=300.0)
    sw.from_local(frame(BCAST, mac(4)), now=300.5)
    assert sw.table.lookup(mac(4), now=300.5) == LOCAL
    # once the tap has not carried it for `age` seconds, the entry is gone and a peer may learn it
    assert sw.from_peer(frame(BCAST, gw), "A", now=300.0) == Forward(True, ("B",))
    assert sw.table.lookup(gw, now=300.0) == "A"


def test_mac_moves_between_peers_are_damped_and_reported() -> None:
    sw = spoke("A", "B", hub=True, move_limit=3, move_window=60.0)  # type: ignore[arg-type]
    m = mac(7)
    sw.from_peer(frame(BCAST, m), "A", now=0.0)
    for i, p in enumerate("BABA"[:3]):  # three moves within the window are allowed
        assert sw.from_peer(frame(BCAST, m), p, now=1.0 + i) == Forward(True, ("B" if p == "A" else "A",))
    assert sw.table.lookup(m, now=4.0) == "B"
    assert sw.from_peer(frame(BCAST, m), "A", now=5.0) == DROP  # the fourth: refused, stays on B
    assert sw.from_peer(frame(mac(1), m), "A", now=59.0) == DROP
    assert sw.table.lookup(m, now=59.0) == "B"
    assert sw.counters["drop_mac_move_limited"] == 2
    # frames from where it is still pass
    assert sw.from_peer(frame(BCAST, m), "B", now=59.5) == Forward(True, ("A",))
    events = dict(sw.table.take_events())
    assert events[MacEvent("moved", m, "A", "B")] == 2 and events[MacEvent("moved", m, "B", "A")] == 1
    assert events[MacEvent("move_limited", m, "B", "A")] == 2
    # a new window: it may move again
    assert sw.from_peer(frame(BCAST, m), "A", now=61.0) == Forward(True, ("B",))
    assert sw.table.lookup(m, now=61.0) == "A"


def test_per_peer_mac_quota() -> None:
    sw = spoke("A", "B", hub=True, max_entries=100, max_per_peer=4, age=10.0)  # type: ignore[arg-type]
    for i in range(10):
        d = sw.from_peer(frame(BCAST, mac(0x100 + i)), "A", now=0.0)
        assert d == (Forward(True, ("B",)) if i < 4 else DROP)
    assert sw.table.count("A") == 4 and sw.counters["drop_mac_quota"] == 6
    assert sw.from_peer(frame(BCAST, mac(0x100)), "A", now=1.0) == Forward(True, ("B",))  # known MACs pass
    # other peers and the tap are not affected; the table is not full, so nothing is refused
    for i in range(4):
        assert not sw.from_peer(frame(BCAST, mac(0x200 + i)), "B", now=1.0).dropped
    for i in range(20):
        sw.from_local(frame(BCAST, mac(0x300 + i)), now=1.0)
    assert sw.table.count(LOCAL) == 20 and sw.table.counters["refused"] == 0
    # a move into a full peer is refused too (and leaves the MAC where it was)
    assert sw.from_peer(frame(BCAST, mac(0x200)), "A", now=2.0) == DROP
    assert sw.table.lookup(mac(0x200), now=2.0) == "B" and sw.counters["drop_mac_quota"] == 7
    # expired entries give the quota back
    assert sw.from_peer(frame(BCAST, mac(0x1FF)), "A", now=10.5) == Forward(True, ("B",))
    assert sw.table.count("A") == 2  # mac(0x100) (refreshed at 1.0) and the newcomer
    assert sw.remove_peer("A") == 2 and sw.table.count("A") == 0


def test_table_quota_counts_follow_moves_expiry_and_removal() -> None:
    t: MacTable[str] = MacTable(max_per_peer=2, age=10.0)
    assert t.learn(mac(1), "A", now=0.0) is None and t.learn(mac(2), "A", now=0.0) is None
    assert t.learn(mac(3), "A", now=0.0) == "mac_quota"
    assert t.learn(mac(1), "B", now=1.0) is None  # moved: A has room again
    assert (t.count("A"), t.count("B")) == (1, 1)
    assert t.learn(mac(3), "A", now=1.0) is None
    assert t.lookup(mac(2), now=10.0) is None  # expired on lookup
    assert t.count("A") == 1
    assert t.expire(now=20.0) == 2 and t.count("A") == t.count("B") == 0


def test_storm_control_per_peer_on_a_hub() -> None:
    sw = spoke("A", "B", "C", hub=True, flood_rate_per_peer=10.0, flood_burst_per_peer=5.0)  # type: ignore[arg-type]
    passed = [not sw.from_peer(frame(BCAST, mac(1)), "A", now=0.0).dropped for _ in range(20)]
    assert passed == [True] * 5 + [False] * 15  # the burst, then nothing at the same instant
    assert sw.counters["drop_broadcast_rate_peer"] == 15 and sw.counters["flood_group"] == 5
    # unknown unicast floods too, and counts against the same bucket
    assert sw.from_peer(frame(mac(0x999), mac(1)), "A", now=0.0) == DROP
    # another peer has its own bucket; the tap is not limited
    assert all(not sw.from_peer(frame(MCAST, mac(2)), "B", now=0.0).dropped for _ in range(5))
    assert all(sw.from_local(frame(BCAST, mac(3)), now=0.0).to_peers for _ in range(100))
    # after an idle second the bucket is full again (5); then 10 frames/s pass of 100 frames/s for 2 s
    n = sum(not sw.from_peer(frame(BCAST, mac(1)), "A", now=1.0 + i / 100).dropped for i in range(200))
    assert 5 + 19 <= n <= 5 + 20, n
    # known unicast is never limited
    sw.from_peer(frame(BCAST, mac(4)), "C", now=0.0)
    assert all(sw.from_peer(frame(mac(4), mac(1)), "A", now=3.0) == Forward(False, ("C",)) for _ in range(50))


def test_storm_control_per_segment_and_spokes_do_not_limit_their_hub_per_peer() -> None:
    sw = spoke("A", "B", "C", hub=True, flood_rate_per_peer=100.0, flood_burst_per_peer=100.0,  # type: ignore[arg-type]
               flood_rate=10.0, flood_burst=8.0)
    results = [sw.from_peer(frame(BCAST, mac(1 + i % 3)), "ABC"[i % 3], now=0.0).dropped for i in range(30)]
    assert results.count(False) == 8 and sw.counters["drop_broadcast_rate_segment"] == 22
    assert sw.counters["drop_broadcast_rate_peer"] == 0
    # a spoke: no per-peer bucket (its one peer is the hub), the segment bucket still applies
    s = spoke("H", flood_rate_per_peer=1.0, flood_burst_per_peer=1.0, flood_rate=50.0, flood_burst=50.0)  # type: ignore[arg-type]
    assert sum(s.from_peer(frame(BCAST, mac(9)), "H", now=0.0) == LOCAL_ONLY for _ in range(60)) == 50
    assert s.counters["drop_broadcast_rate_segment"] == 10 and s.counters["drop_broadcast_rate_peer"] == 0


def test_token_bucket() -> None:
    b = TokenBucket(2.0, 3.0)
    assert [b.take(now=0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(now=0.4) is False and b.take(now=0.5) is True  # 0.5 s * 2/s = 1 token
    assert [b.take(now=100.0) for _ in range(4)] == [True, True, True, False]  # never more than the burst
    assert b.take(now=50.0) is False  # a clock going backwards adds nothing
    with pytest.raises(ValueError):
        TokenBucket(0.0, 1.0)
    with pytest.raises(ValueError):
        TokenBucket(1.0, 0.5)


def test_peer_vlan_tags_dropped_where_the_segment_maps_a_vlan() -> None:
    sw = spoke("A", "B", hub=True, untagged_only=True)  # type: ignore[arg-type]
    for tag in ("81000014", "88a80014", "81000000"):  # VLAN 20 (C-tag, S-tag) and a priority tag
        assert sw.from_peer(frame(BCAST, mac(2), tag=bytes.fromhex(tag)), "A", now=0.0) == DROP
    assert sw.counters["drop_peer_vlan_tag"] == 3 and len(sw.table) == 0  # nothing learned from them
    assert sw.from_peer(frame(BCAST, mac(2)), "A", now=0.0) == Forward(True, ("B",))
    # the local side is trusted (its tags are the VLAN map's business), and a trunk passes tags
    assert sw.from_local(frame(BCAST, mac(1), tag=bytes.fromhex("81000014")), now=0.0).to_peers == ("A", "B")
    trunk = spoke("A", "B", hub=True)
    assert trunk.from_peer(frame(BCAST, mac(2), tag=bytes.fromhex("81000014")), "A", now=0.0) == Forward(True, ("B",))


# -- whole topologies in memory ---------------------------------------------------------------------------------
class Net:
    """Nodes with a Switch each, hosts on their taps, and a delivery log."""

    def __init__(self, links: dict[str, list[str]], hubs: set[str]) -> None:
        self.nodes: dict[str, Switch[str]] = {}
        for name, peers in links.items():
            self.nodes[name] = spoke(*peers, hub=name in hubs)
        self.now = 0.0

    def send(self, at: str, fr: bytes) -> tuple[Counter[str], list[tuple[str, str]]]:
        """Inject a frame at a node's tap; return local deliveries per node and every (from, to) hop."""
        delivered: Counter[str] = Counter()
        hops: list[tuple[str, str]] = []
        queue = deque((at, p) for p in self.nodes[at].from_local(fr, now=self.now).to_peers)
        for _ in range(1000):  # bounded: a loop would show up as too many hops, not a hang
            if not queue:
                break
            src, dst = queue.popleft()
            hops.append((src, dst))
            d = self.nodes[dst].from_peer(fr, src, now=self.now)
            assert src not in d.to_peers, f"{dst} sent a frame back to {src}"
            assert len(set(d.to_peers)) == len(d.to_peers)
            if d.deliver_local:
                delivered[dst] += 1
            queue.extend((dst, p) for p in d.to_peers)
        else:  # pragma: no cover
            pytest.fail("forwarding loop")
        self.now += 1.0
        return delivered, hops


def hub_net() -> Net:
    return Net({"H": ["A", "B", "C"], "A": ["H"], "B": ["H"], "C": ["H"]}, hubs={"H"})


def test_hub_with_three_spokes_broadcast_reaches_everyone_once() -> None:
    net = hub_net()
    hosts = {"H": mac(0x10), "A": mac(0xA0), "B": mac(0xB0), "C": mac(0xC0)}
    for node, host in hosts.items():
        delivered, hops = net.send(node, frame(BCAST, host))
        assert delivered == Counter({n: 1 for n in hosts if n != node}), node
        assert len(hops) == len(set(hops)) == 3  # one copy per link, never back
        assert all(dst != node for _src, dst in hops)


def test_hub_learning_and_unicast_paths() -> None:
    net = hub_net()
    hosts = {"H": mac(0x10), "A": mac(0xA0), "B": mac(0xB0), "C": mac(0xC0)}
    for node, host in hosts.items():  # everyone announces itself (ARP-like broadcast)
        net.send(node, frame(BCAST, host))
    hub = net.nodes["H"]
    assert {hub.table.lookup(hosts[n], now=net.now) for n in "ABC"} == {"A", "B", "C"}
    assert hub.table.lookup(hosts["H"], now=net.now) == LOCAL
    for n in "ABC":  # a spoke learns every remote MAC on the hub, its only peer
        others = [hosts[m] for m in hosts if m != n]
        assert {net.nodes[n].table.lookup(h, now=net.now) for h in others} == {"H"}
    for src, src_mac in hosts.items():
        for dst, dst_mac in hosts.items():
            if src == dst:
                continue
            delivered, hops = net.send(src, frame(dst_mac, src_mac))
            assert delivered == Counter({dst: 1}), (src, dst)
            expected = 1 if "H" in (src, dst) else 2  # spoke -> hub -> spoke
            assert len(hops) == expected


def test_hub_unknown_unicast_floods_without_duplicates() -> None:
    net = hub_net()
    delivered, hops = net.send("A", frame(mac(0x999), mac(0xA0)))
    assert delivered == Counter({"H": 1, "B": 1, "C": 1})
    assert sorted(hops) == [("A", "H"), ("H", "B"), ("H", "C")]


def test_full_mesh_learns_on_the_originating_peer() -> None:
    net = Net({"A": ["B", "C"], "B": ["A", "C"], "C": ["A", "B"]}, hubs=set())
    delivered, hops = net.send("A", frame(BCAST, mac(0xA0)))
    assert delivered == Counter({"B": 1, "C": 1})
    assert sorted(hops) == [("A", "B"), ("A", "C")]  # nobody relays
    assert net.nodes["C"].table.lookup(mac(0xA0), now=net.now) == "A"
    net.send("C", frame(BCAST, mac(0xC0)))
    delivered, hops = net.send("A", frame(mac(0xC0), mac(0xA0)))
    assert delivered == Counter({"C": 1}) and hops == [("A", "C")]


def test_random_traffic_in_hub_never_returns_or_duplicates() -> None:
    rng = random.Random(1)
    net = hub_net()
    hosts = {n: [mac(0x100 * (i + 1) + j) for j in range(5)] for i, n in enumerate("HABC")}
    for _ in range(400):
        node = rng.choice("HABC")
        src = rng.choice(hosts[node])
        dst = rng.choice([BCAST, MCAST, mac(0x7777)] + [h for hs in hosts.values() for h in hs])
        delivered, hops = net.send(node, frame(dst, src))
        assert len(hops) == len(set(hops)) <= 3
        assert all(v == 1 for v in delivered.values()) and node not in delivered
        owner = next((n for n, hs in hosts.items() if dst in hs), None)
        if owner is not None and owner != node and delivered:
            assert owner in delivered


# -- bound under a flood of random source MACs ----------------------------------------------------------------------
def test_flood_of_100k_random_source_macs_stays_bounded() -> None:
    sw = spoke("A", "B", "C", hub=True, max_entries=4096)
    legit = [mac(i) for i in range(1, 11)]
    for i, m in enumerate(legit):
        sw.from_peer(frame(BCAST, m), "ABC"[i % 3], now=0.0)
    rng = random.Random(0)
    now = 1.0

    def flood(n: int) -> None:
        nonlocal now
        for _ in range(n):
            src = bytes([rng.getrandbits(8) & 0xFE | 0x02]) + rng.randbytes(5)  # unicast, locally administered
            sw.from_peer(frame(rng.randbytes(6), src), "B", now=now)
            now += 1e-4

    for _ in range(10):
        flood(10_000)
        assert len(sw.table) <= 4096
    assert len(sw.table) == 4096
    assert sw.table.counters["refused"] >= 100_000 - 4096
    # Memory stays flat once the table is full (traced over a short stretch only: tracing is slow).
    tracemalloc.start()
    try:
        flood(500)
        before = tracemalloc.get_traced_memory()[0]
        flood(5000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 16 * 1024, grown
    # Established entries survived the flood; unknown destinations still flood.
    for i, m in enumerate(legit):
        assert sw.from_local(frame(m, mac(0x500)), now=now).to_peers == ("ABC"[i % 3],)
    assert sw.from_local(frame(mac(0x501), mac(0x500)), now=now).to_peers == ("A", "B", "C")


# -- VLAN helpers ----------------------------------------------------------------------------------------------------
def test_vlan_of_strip_add() -> None:
    untagged = frame(mac(1), mac(2))
    assert vlan_of(untagged) is None and strip_vlan(untagged) == (None, untagged)
    tagged = add_vlan(untagged, 100, pcp=5)
    assert tagged[12:16] == bytes.fromhex("8100a064")
    assert vlan_of(tagged) == 100
    assert strip_vlan(tagged) == (100, untagged)
    qinq = add_vlan(tagged, 10, tpid=0x88A8)
    assert qinq[12:20] == bytes.fromhex("88a8000a 8100a064")
    assert vlan_of(qinq) == 10 and strip_vlan(qinq) == (10, tagged)
    assert vlan_of(tagged[:17]) is None
    for bad in ({"vid": 4095}, {"vid": -1}, {"vid": 1, "pcp": 8}, {"vid": 1, "tpid": 0x0800}):
        with pytest.raises(ValueError):
            add_vlan(untagged, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        add_vlan(untagged[:13], 1)


def test_vlan_map() -> None:
    vm = VlanMap({100: 5100, 200: 5200}, untagged=5000)
    base = frame(mac(1), mac(2))
    assert vm.to_vni(base) == (5000, base)
    assert vm.to_vni(add_vlan(base, 100, pcp=3)) == (5100, base)
    assert vm.to_vni(add_vlan(base, 0, pcp=6)) == (5000, base)  # priority tag = untagged
    assert vm.to_vni(add_vlan(base, 300)) is None
    assert vm.from_vni(5200, base) == add_vlan(base, 200)
    assert vm.from_vni(5000, base) == base
    assert vm.from_vni(9999, base) is None
    assert VlanMap([(7, 1)]).to_vni(base) is None  # untagged unmapped
    for args, kw in (({1: 5, 2: 5},), {}), (({1: 5},), {"untagged": 5}), (({0: 5},), {}), (({1: 1 << 24},), {}):
        with pytest.raises(ValueError):
            VlanMap(*args, **kw)  # type: ignore[arg-type]


def test_same_head_runs_groups_consecutive_frames_by_their_ethernet_header() -> None:
    a, b = frame(mac(1), mac(2), b"x"), frame(mac(1), mac(2), b"yy")  # same 14-byte head, other payloads
    c = frame(mac(3), mac(2))
    tagged = add_vlan(a, 10)  # same MACs, but the TPID is part of the head
    assert same_head_runs([a]) == [[a]]
    assert same_head_runs([a, b, a]) == [[a, b, a]]
    assert same_head_runs([a, b, c, a, tagged, tagged]) == [[a, b], [c], [a], [tagged, tagged]]
    frames = [frame(mac(rng % 3), mac(2), bytes(rng % 5)) for rng in range(40)]
    runs = same_head_runs(frames)
    assert [f for run in runs for f in run] == frames  # in order, nothing lost
    assert all(len({f[:14] for f in run}) == 1 for run in runs)
    assert all(x[-1][:14] != y[0][:14] for x, y in zip(runs, runs[1:], strict=False))  # maximal runs


# -- fuzz ------------------------------------------------------------------------------------------------------------
def test_fuzz_switch_never_raises_and_respects_split_horizon() -> None:
    rng = random.Random(99)
    peers = ["A", "B", "C", "D"]
    guarded = {"max_per_peer": 8, "flood_rate_per_peer": 50.0, "flood_burst_per_peer": 10.0, "flood_rate": 80.0,
               "flood_burst": 20.0, "untagged_only": True, "move_limit": 2, "move_window": 3.0}
    for hub, kw in ((False, {}), (True, {}), (False, guarded), (True, guarded)):
        sw = spoke(*peers[:3], hub=hub, max_entries=64, age=5.0, **kw)  # type: ignore[arg-type]
        now = 0.0
        for _ in range(20_000):
            now += rng.random() * 0.01
            n = rng.choice((0, 6, 13, 14, 15, 18, 60))
            data = rng.randbytes(n)
            if n >= 12 and rng.random() < 0.5:  # reuse a small MAC population so learning happens
                data = mac(rng.randrange(40)) + mac(rng.randrange(40)) + data[12:]
            if rng.random() < 0.3:
                d = sw.from_local(data, now=now)
                assert not d.deliver_local
            else:
                p = rng.choice(peers)
                d = sw.from_peer(data, p, now=now)
                assert p not in d.to_peers
                if not hub:
                    assert d.to_peers == ()
            assert set(d.to_peers) <= set(sw.peers) and len(set(d.to_peers)) == len(d.to_peers)
            assert len(sw.table) <= 64
            if kw:
                assert all(sw.table.count(p) <= 8 for p in peers)
            if rng.random() < 0.001:
                sw.expire(now=now)
