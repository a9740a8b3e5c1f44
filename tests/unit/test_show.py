"""``pyvpn show``: nothing cut at any width, wg show's block layout, peer selection, the JSON schema
checked against docs/show-json.md, and drop reasons (explained; the expected ones not counted)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from crypto.drops import Drop
from crypto.keys import encode_key, private_from_random, public_from_private
from tunnel.testing import MemoryNetwork, MemoryTun
from vpn.config import parse_config
from vpn.daemon import control_extra
from vpn.device import Device
from vpn.drops import DROP_REASONS, EXPECTED, explain, split_expected
from vpn.l2.plan import plan_segments
from vpn.l2.runtime import L2Runtime
from vpn.routing import route_reads
from vpn.status import SCHEMA_VERSION, PeerNotFound, render, select_peers, show_json
from vpn.testlab.packets import ICMPV6, UDP, ipv4, ipv6
from vpn.testlab.show_schema import check_object, documented_schema

ROOT = Path(__file__).resolve().parents[2]


def key(n: int) -> bytes:
    return public_from_private(private_from_random(bytes([n]) * 32))


def snapshot(npeers: int = 3) -> dict[str, Any]:
    """A server with peers whose endpoints and AllowedIPs are long (IPv6), as the control socket sends it."""
    peers = []
    for i in range(1, npeers + 1):
        peers.append({
            "public_key": key(i), "name": f"client-{i}" if i % 2 else None,
            "endpoint": f"[fd00:18:1234:5678:9abc:def0:1234:{i:x}]:{40000 + i}",
            "allowed_ips": [f"198.19.{i}.0/24", f"fd00:19:{i:x}::/64", f"fd00:aaaa:bbbb:cccc:{i:x}::/80"],
            "latest_handshake": 0.0, "rx_bytes": 1234567 * i, "tx_bytes": 7654321 * i, "rx_packets": 10,
            "tx_packets": 20, "handshakes": 1, "persistent_keepalive": 25 if i == 1 else 0,
            "has_preshared_key": True, "drops": {"spoofed_source": i},
            "policy": {"allow": [], "deny": [], "rate_limit": None, "expires": None, "disabled": False,
                       "state": "active"},
            "denied": 0, "ratelimited": 0, "refused_handshakes": 0,
        })
    return {"interface": "wg0", "public_key": key(0), "listen_port": 51820, "mtu": 1420, "forward": True,
            "forwarded_packets": 0, "peers": peers, "drops": {"no_route": 4}, "ignored": {"link_local_no_peer": 9},
            "under_load": False, "mode": "l3", "role": "server", "offloads": ["tun:vnet_hdr"],
            "stall": {"state": "ok", "seconds": 0.0, "queued": [], "stalls": 0, "after": 5, "loop_blocked": 0}}


def whole(snap: dict[str, Any]) -> list[str]:
    out = [encode_key(snap["public_key"])]
    for p in snap["peers"]:
        out += [encode_key(p["public_key"]), p["endpoint"], *p["allowed_ips"]]
    return out


def rendered(snap: dict[str, Any], *, width: int, terminal: bool) -> str:
    buf = io.StringIO()
    render([snap], Console(file=buf, width=width, force_terminal=terminal, color_system=None, highlight=False))
    return buf.getvalue()


def lines_with_all(text: str, strings: list[str]) -> list[str]:
    """The strings of ``strings`` that are NOT whole on one line of ``text``."""
    lines = text.splitlines()
    return [s for s in strings if not any(s in ln for ln in lines)]


# -- never cut -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [40, 80, 120])
@pytest.mark.parametrize("terminal", [True, False])
def test_keys_endpoints_and_allowed_ips_are_never_cut(width: int, terminal: bool) -> None:
    snap = snapshot()
    text = rendered(snap, width=width, terminal=terminal)
    assert lines_with_all(text, whole(snap)) == []
    assert "…" not in text
    # wg show's layout: a block per peer, "peer: KEY" on its own line (grep-able), one field a line
    for p in snap["peers"]:
        assert f"peer: {encode_key(p['public_key'])}" in text.splitlines()
        assert f"  allowed ips: {', '.join(p['allowed_ips'])}" in text.splitlines()
        assert f"  endpoint: {p['endpoint']}" in text.splitlines()
    assert "  name: client-1" in text.splitlines()
    assert "┃" not in text  # no table


def test_a_wide_terminal_gets_the_table_and_still_nothing_is_cut() -> None:
    snap = snapshot()
    text = rendered(snap, width=260, terminal=True)
    assert "┃" in text and "\npeer: " not in text
    assert lines_with_all(text, whole(snap)) == []


def test_a_pipe_gets_blocks_whatever_its_width() -> None:
    text = rendered(snapshot(), width=260, terminal=False)
    assert "┃" not in text and "\npeer: " in text


def test_extras_are_kept_in_blocks() -> None:
    snap = snapshot(1)
    snap["segments"] = [{"vni": 100, "tap": "tap100", "macs": 3, "mac_limit": 4096, "plain": False,
                         "peers": ["client-1"]}]
    snap["mode"] = "l3+l2"
    text = rendered(snap, width=80, terminal=False)
    for needle in ("mode: l3+l2", "offloads: tun:vnet_hdr",
                   "segment vni 100 on tap100: 3 MACs learned, table limit 4096",
                   "persistent keepalive: every 25 seconds", "transfer: 1.18 MiB received, 7.30 MiB sent",
                   "spoofed_source: 1", "drops by reason:", "ignored (expected, not counted as drops):"):
        assert needle in text, needle
    # each drop reason comes with what it means
    assert f"no_route: 4  ({DROP_REASONS['no_route']})" in text
    assert f"link_local_no_peer: 9  ({DROP_REASONS['link_local_no_peer']})" in text


def test_markup_like_names_and_ipv6_endpoints_print_verbatim() -> None:
    snap = snapshot(1)
    snap["peers"][0]["name"] = "[bold]eve[/]"
    for width in (80, 260):
        text = rendered(snap, width=width, terminal=True)
        assert "[bold]eve[/]" in text and snap["peers"][0]["endpoint"] in text


# -- choosing a peer -------------------------------------------------------------------------------------
def test_select_by_name_or_key_prefix() -> None:
    a, b = snapshot(3), {**snapshot(0), "interface": "wg1"}
    b["peers"] = [dict(snapshot(4)["peers"][3], name="client-1")]
    (only,) = select_peers([a], "client-3")
    assert [p["name"] for p in only["peers"]] == ["client-3"]
    both = select_peers([a, b], "client-1")  # the same name on two interfaces: both shown
    assert [s["interface"] for s in both] == ["wg0", "wg1"]
    k2 = encode_key(key(2))
    (only,) = select_peers([a, b], k2[:10])
    assert [encode_key(p["public_key"]) for p in only["peers"]] == [k2]
    assert select_peers([a], k2)[0]["peers"][0]["public_key"] == key(2)  # the whole key
    with pytest.raises(PeerNotFound, match="no peer"):
        select_peers([a], "nobody")
    with pytest.raises(PeerNotFound):
        select_peers([a], "")


def test_an_ambiguous_key_prefix_is_refused_naming_the_candidates() -> None:
    snap = snapshot(0)
    snap["peers"] = [dict(snapshot(1)["peers"][0], public_key=bytes(31) + bytes([n])) for n in (1, 2)]
    with pytest.raises(PeerNotFound, match="2 peers") as e:
        select_peers([snap], "AAAA")
    assert encode_key(bytes(31) + b"\x01") in str(e.value)


# -- the JSON schema against its documentation -----------------------------------------------------------
def l2_device(net: MemoryNetwork) -> tuple[Device, L2Runtime]:
    priv = private_from_random(bytes([7]) * 32)
    text = (f"[Interface]\nPrivateKey = {encode_key(priv)}\nAddress = 198.19.0.1/24\n\n"
            f"[Peer]\n#pyvpn Name = alice\nPublicKey = {encode_key(key(1))}\nAllowedIPs = 198.19.0.2/32\n"
            f"PresharedKey = {encode_key(bytes(32))}\nEndpoint = 198.18.0.2:51820\nPersistentKeepalive = 25\n\n"
            f"[Peer]\nPublicKey = {encode_key(key(2))}\nAllowedIPs = 198.19.0.3/32\n"
            "\n#pyvpn [Segment]\n#pyvpn VNI = 100\n#pyvpn Tap = tap100\n")
    cfg = parse_config(text)
    fakes: dict[str, Any] = {"tun": MemoryTun("wg0"), "udp": net.endpoint("198.18.0.1", 51820)}
    dev = Device(**fakes, private_key=priv)
    for p in cfg.peers:
        dev.add_peer(p.public_key, allowed_ips=[str(n) for n in p.allowed_ips], name=p.name, endpoint=p.endpoint,
                     preshared_key=p.preshared_key, persistent_keepalive=p.persistent_keepalive or 0)
    plans = plan_segments(cfg, role="server", tunnel_mtu=1420)
    l2 = L2Runtime(dev, plans, taps={tp.name: MemoryTun(tp.name, tp.mtu, tap=True) for tp in plans},
                   plain_sockets={}, interface_addresses=["198.19.0.1/24"], peer_vteps={})
    return dev, l2


def test_json_matches_the_documented_schema() -> None:
    schema = documented_schema(SCHEMA_VERSION)
    assert {"interface", "peer", "segment"} <= set(schema)

    async def main() -> list[dict[str, Any]]:
        net = MemoryNetwork()
        dev, l2 = l2_device(net)
        dev.start()
        l2.start()
        try:
            dev.drops["no_route"] += 1
            out = []
            for with_l2 in (True, False):
                if not with_l2:
                    l2.close()
                    dev.l2 = None
                snap = dev.snapshot()
                snap.update(control_extra(dev, "server"))  # what the control socket adds (vpn/daemon.py)
                out.append(json.loads(json.dumps(show_json(snap))))  # as the CLI prints it
            return out
        finally:
            dev.close()

    for doc in asyncio.run(main()):
        assert doc["schema_version"] == SCHEMA_VERSION
        check_object(doc, "interface", schema, "interface")
        assert len(doc["peers"]) == 2
    with_l2, without = asyncio.run(main())
    assert with_l2["segments"] and "segments" not in without
    # segment members: names, else whole keys (never abbreviated), in JSON and in `pyvpn show`
    assert with_l2["segments"][0]["peers"] == ["alice", encode_key(key(2))]
    text = rendered(with_l2, width=80, terminal=False)
    assert f"  members: alice, {encode_key(key(2))}" in text.splitlines()


def test_the_schema_check_notices_drift() -> None:
    schema = documented_schema(SCHEMA_VERSION)
    good = json.loads(json.dumps(show_json(snapshot(1))))
    check_object(good, "interface", schema, "interface")
    with pytest.raises(AssertionError, match="not in docs"):
        check_object({**good, "surprise": 1}, "interface", schema, "interface")
    with pytest.raises(AssertionError, match="missing"):
        check_object({k: v for k, v in good.items() if k != "peers"}, "interface", schema, "interface")
    with pytest.raises(AssertionError):
        check_object({**good, "listen_port": "51820"}, "interface", schema, "interface")


# -- drop reasons ----------------------------------------------------------------------------------------
def counted_reasons() -> set[str]:
    """Every drop reason the code counts, read from the source (new ones must be explained)."""
    found: set[str] = {str(r) for r in Drop}  # the protocol core's reasons are the Drop enum
    for path in [*ROOT.glob("crypto/*.py"), *ROOT.glob("tunnel/**/*.py"), *ROOT.glob("vpn/*.py"),
                 *ROOT.glob("vpn/l2/*.py")]:
        src = path.read_text()
        for m in re.finditer(r"drops\[([^\]]+)\]", src):
            found.update(re.findall(r'"([a-z0-9_]+)"', m.group(1)))
        found.update(re.findall(r'reason\s*=\s*"([a-z0-9_]+)"', src))
        found.update("l2_" + r for r in re.findall(r'counters\["drop_([a-z0-9_]+)"\]', src))
        if path.name == "mactable.py":  # MacTable.learn() names why it refuses; the switch counts "drop_" + that
            found.update("l2_" + r for r in re.findall(r'return "([a-z0-9_]+)"', src))
    return found


def test_every_counted_drop_reason_is_explained() -> None:
    reasons = counted_reasons()
    assert {"no_route", "link_local_no_peer", "decrypt_failed", "l2_hairpin", "short"} <= reasons
    assert sorted(r for r in reasons if not explain(r)) == []
    assert explain("l2_tap_write_EIO").endswith("(EIO)")
    assert explain("never_heard_of") == ""


def solicit6(src: str, dst: str) -> bytes:
    """An ICMPv6 router solicitation."""
    return ipv6(src, dst, ICMPV6, b"\x85\x00" + bytes(6), hops=255)


def udp4_to(dst: str) -> bytes:
    return ipv4("198.19.0.1", dst, UDP, bytes(8), df=False, ttl=1, csum=False)  # an all-zero UDP header


def test_link_scope_packets_without_a_peer_are_expected_not_no_route() -> None:
    drops: Counter[str] = Counter()
    bufs = [solicit6("fe80::1", "ff02::2"), solicit6("fe80::1", "ff02::16"), solicit6("fd00::1", "fe80::2"),
            udp4_to("224.0.0.251"), udp4_to("255.255.255.255"), solicit6("fd00::1", "fd00::9"), udp4_to("198.19.9.9")]
    assert route_reads(bufs, lambda _dst: None, drops) == {}
    assert drops == {"link_local_no_peer": 5, "no_route": 2}
    assert split_expected(drops) == ({"no_route": 2}, {"link_local_no_peer": 5})
    assert "link_local_no_peer" in EXPECTED and "no_route" not in EXPECTED
    # a peer whose AllowedIPs cover them still gets them
    got = route_reads(bufs[:1], lambda _dst: "peer", Counter())
    assert got == {"peer": bufs[:1]}


def test_a_device_reports_expected_drops_as_ignored() -> None:
    async def main() -> dict[str, Any]:
        net = MemoryNetwork()
        tun = MemoryTun("wg0")
        fakes: dict[str, Any] = {"tun": tun, "udp": net.endpoint("198.18.0.1", 51820)}
        dev = Device(**fakes, private_key=private_from_random(os.urandom(32)))
        dev.add_peer(key(1), allowed_ips=["198.19.0.2/32"])
        dev.start()
        try:
            # the kernel's chatter, a packet for no peer, and one for a client that has not connected yet
            tun.inject([solicit6("fe80::1", "ff02::2"), solicit6("fe80::1", "ff02::16"), udp4_to("198.19.0.77"),
                        udp4_to("198.19.0.2")])
            for _ in range(200):
                if sum(dev.drop_counts().values()) >= 4:
                    break
                await asyncio.sleep(0.005)
            return dev.snapshot()
        finally:
            dev.close()

    snap = asyncio.run(main())
    assert snap["drops"] == {"no_route": 1}
    # the server cannot start a handshake with a client that never came: expected, it initiates
    assert snap["ignored"] == {"link_local_no_peer": 2, "handshake_no_endpoint": 1}
