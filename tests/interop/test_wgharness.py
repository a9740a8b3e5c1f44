"""The wireguard-go harness: two Debian wireguard-go peers talking to each other, plus its pure helpers.

The root tests double as the reference topology for interop tests: two namespaces joined by a veth
(198.18.0.1 - 198.18.0.2), tunnel 198.19.0.0/24 and fd00:19::/64.  Every root test also checks that nothing
is left behind (namespaces, UAPI sockets, processes), including after a failure half-way.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from vpn.testlab.configs import WgPeer, endpoint, wg_conf_text, wg_quick_file
from vpn.testlab.keys import Keys
from vpn.testlab.netns import namespaces
from vpn.testlab.traffic import iperf3_bytes, iperf3_client, iperf3_server, ping_ok
from vpn.testlab.wggo import WireguardGo, WireguardGoError, parse_wg_dump, reference_topology, sock_path, unique_ifname

needs_wg = pytest.mark.skipif(shutil.which("wg") is None, reason="needs wireguard-tools (wg)")
needs_wireguard_go = pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="needs wireguard-go")

# Two dumps taken from wireguard-go 0.0.20220316 (keys replaced by made-up ones of the right shape).
KA = "A" * 42 + "E="
KB = "B" * 42 + "E="
KC = "C" * 42 + "E="
DUMP = (
    f"{KA}\t{KB}\t51820\toff\n"
    f"{KC}\t{KA}\t198.18.0.2:51821\t198.19.0.2/32,fd00:19::2/128\t1795831613\t692\t636\t25\n"
    f"{KB}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
)


# -- pure helpers (no root) ----------------------------------------------------------------------------------
def test_parse_wg_dump() -> None:
    st = parse_wg_dump(DUMP)
    assert (st.private_key, st.public_key, st.listen_port, st.fwmark) == (KA, KB, 51820, None)
    p = st.peer(KC)
    assert p.preshared_key == KA and p.endpoint == "198.18.0.2:51821"
    assert p.allowed_ips == ("198.19.0.2/32", "fd00:19::2/128")
    assert (p.latest_handshake, p.rx_bytes, p.tx_bytes, p.persistent_keepalive) == (1795831613, 692, 636, 25)
    q = st.peer(KB)
    assert (q.preshared_key, q.endpoint, q.allowed_ips, q.latest_handshake, q.persistent_keepalive) == (
        None, None, (), 0, None)
    assert parse_wg_dump(f"{KA}\t{KB}\t1\t0x2a\n").fwmark == 0x2A
    assert KA not in repr(st)  # keys that must stay secret are kept out of reprs
    with pytest.raises(KeyError):
        st.peer("nope")


@pytest.mark.parametrize("bad", ["", "a\tb\tc\n", f"{KA}\t{KB}\t1\toff\nx\ty\n", f"{KA}\t{KB}\tport\toff\n"])
def test_parse_wg_dump_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_wg_dump(bad)


def test_config_texts(tmp_path: Path) -> None:
    peer = WgPeer(KB, endpoint=endpoint("fd00::2", 51820), allowed_ips=["198.19.0.5/24", "fd00:19::2/128"],
                  persistent_keepalive=25, preshared_key=KC)
    assert peer.allowed_ips == ("198.19.0.0/24", "fd00:19::2/128")
    assert KC not in repr(peer)
    conf = wg_conf_text(private_key=KA, listen_port=51820, peers=[peer])
    assert conf == (f"[Interface]\nPrivateKey = {KA}\nListenPort = 51820\n\n[Peer]\nPublicKey = {KB}\n"
                    f"PresharedKey = {KC}\nAllowedIPs = 198.19.0.0/24, fd00:19::2/128\n"
                    "Endpoint = [fd00::2]:51820\nPersistentKeepalive = 25\n")
    path = tmp_path / "wg0.conf"
    text = wg_quick_file(path, private_key=KA, address=["198.19.0.1/24", "fd00:19::1/64"], mtu=1420,
                         peers=[WgPeer(KB, allowed_ips=["0.0.0.0/0"])])
    assert path.read_text() == text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert text.splitlines()[:4] == ["[Interface]", f"PrivateKey = {KA}",
                                     "Address = 198.19.0.1/24, fd00:19::1/64", "MTU = 1420"]
    assert "AllowedIPs = 0.0.0.0/0" in text
    with pytest.raises(ValueError):
        WgPeer(KB, allowed_ips=["198.19.0.300/32"])
    with pytest.raises(ValueError):
        wg_quick_file(private_key=KA, address=["not-an-address"])


# -- live wireguard-go (root) --------------------------------------------------------------------------------
def _assert_gone(ns_names: list[str], ifnames: list[str], pids: list[int]) -> None:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [n for n in ns_names if n in listed]
    assert not [i for i in ifnames if sock_path(i).exists()]
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]


@pytest.mark.root
@pytest.mark.interop
@needs_wireguard_go
def test_two_wireguard_go_peers() -> None:
    with reference_topology() as t:
        a, b = t.a, t.b
        names = [a.ns.name, b.ns.name]
        ifnames = [a.wg.ifname, b.wg.ifname]
        pids = [p for p in (a.wg.pid, b.wg.pid) if p is not None]
        assert a.wg.show().peers[0].latest_handshake == 0

        assert ping_ok(a.ns, b.tunnel4, count=1), a.wg.log()  # a initiates: b learns a's endpoint
        assert ping_ok(b.ns, a.tunnel4, count=1)
        assert ping_ok(a.ns, b.tunnel6, count=1)
        assert ping_ok(b.ns, a.tunnel6, count=1)

        sa, sb = a.wg.show(), b.wg.show()
        assert sa.public_key == a.wg.public_key and sa.listen_port == a.port
        pa, pb = sa.peer(b.wg.public_key), sb.peer(a.wg.public_key)
        assert pa.latest_handshake > 0 and pb.latest_handshake > 0
        assert pa.rx_bytes > 0 and pa.tx_bytes > 0 and pb.rx_bytes > 0 and pb.tx_bytes > 0
        assert pb.endpoint == f"{a.underlay}:{a.port}"  # roamed in from the handshake
        assert pa.preshared_key == pb.preshared_key == t.preshared_key
        assert "Received handshake response" in a.wg.log()

        b.wg.set_peer(a.wg.public_key, persistent_keepalive=7)
        assert b.wg.show().peer(a.wg.public_key).persistent_keepalive == 7

        server4 = iperf3_server(b.ns, b.tunnel4)
        server6 = iperf3_server(b.ns, b.tunnel6, port=5202)
        tcp = iperf3_client(a.ns, b.tunnel4, seconds=1)
        assert iperf3_bytes(tcp) > 0
        udp6 = iperf3_client(a.ns, b.tunnel6, seconds=1, udp=True, reverse=True, port=5202, bitrate="5M")
        assert iperf3_bytes(udp6) > 0
        for server in (server4, server6):
            server.terminate()
            server.wait(5)
        assert b.wg.show().peer(a.wg.public_key).rx_bytes > pb.rx_bytes

        _, extra = Keys.new()
        a.wg.add_peer(WgPeer(extra, endpoint="198.18.0.9:51899", allowed_ips=["100.64.9.0/24"],
                             persistent_keepalive=25, preshared_key=t.preshared_key))
        pe = a.wg.show().peer(extra)
        assert (pe.endpoint, pe.allowed_ips, pe.persistent_keepalive) == ("198.18.0.9:51899", ("100.64.9.0/24",), 25)
        assert pe.preshared_key == t.preshared_key
        assert "100.64.9.0/24" in a.ns.run(["ip", "route", "show", "dev", a.wg.ifname]).stdout
        a.wg.set_peer(extra, preshared_key="")
        assert a.wg.show().peer(extra).preshared_key is None
        a.wg.set_peer(extra, remove=True)
        assert [p.public_key for p in a.wg.show().peers] == [b.wg.public_key]
    _assert_gone(names, ifnames, pids)


@pytest.mark.root
@pytest.mark.interop
@needs_wireguard_go
def test_nothing_left_after_failure_midway() -> None:
    seen: dict[str, list[str] | list[int]] = {}
    with pytest.raises(AssertionError, match="deliberate"), reference_topology(b_knows_a=True) as t:
        seen["ns"] = [t.a.ns.name, t.b.ns.name]
        seen["if"] = [t.a.wg.ifname, t.b.wg.ifname]
        seen["pid"] = [p for p in (t.a.wg.pid, t.b.wg.pid) if p is not None]
        assert ping_ok(t.b.ns, t.a.tunnel4, count=1)
        raise AssertionError("deliberate failure with both daemons up")
    _assert_gone(seen["ns"], seen["if"], seen["pid"])  # type: ignore[arg-type]


@pytest.mark.root
@pytest.mark.interop
@needs_wireguard_go
def test_failed_configuration_cleans_up() -> None:
    with namespaces("wgf") as (ns,):
        name = unique_ifname()
        with pytest.raises(WireguardGoError, match="mtu"):
            WireguardGo(ns, name, private_key=Keys.new().private, mtu=10)  # below the minimum MTU: `ip` refuses
        assert not sock_path(name).exists()
        assert ns.pids() == []
        assert ns.run(["ip", "link", "show", "dev", name], check=False).returncode != 0


@pytest.mark.root
@pytest.mark.interop
@needs_wireguard_go
def test_interface_name_clash_is_refused() -> None:
    with namespaces("wgx", "wgy") as (nx, ny):
        name = unique_ifname()
        with WireguardGo(nx, name, private_key=Keys.new().private, listen_port=51830) as first:
            with pytest.raises(WireguardGoError, match="in use"):
                WireguardGo(ny, name, private_key=Keys.new().private)
            assert first.running() and first.show().listen_port == 51830  # its socket survived
            with WireguardGo(ny, private_key=Keys.new().private) as other:  # automatic names never clash
                assert other.ifname != name and other.show().listen_port > 0
        assert not sock_path(name).exists()


@pytest.mark.root
@pytest.mark.interop
@needs_wireguard_go
def test_killed_daemon_leaves_nothing() -> None:
    with namespaces("wgk") as (ns,):
        wg = WireguardGo(ns, private_key=Keys.new().private, address=["100.64.0.1/24"])
        assert wg.pid is not None
        os.kill(wg.pid, signal.SIGKILL)  # no chance to remove its own socket
        wg.close()
        wg.close()
        assert not wg.sock.exists() and not wg.running()
        assert "Device started" in wg.log()
        assert ns.run(["ip", "link", "show", "dev", wg.ifname], check=False).returncode != 0

