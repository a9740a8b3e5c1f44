"""wg-quick config parsing: every wg-quick key, pyvpn's #pyvpn keys and segments, errors that name file/line/key,
secrets kept out of messages and reprs, format/parse round trips, and the example files in configs/."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.keys import decode_key, encode_key, public_from_private
from vpn.config import (
    Config,
    ConfigError,
    InterfaceConfig,
    PeerConfig,
    SegmentConfig,
    check_permissions,
    format_config,
    load_config,
    parse_config,
)
from vpn.policy import Rule

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.conf"))

# Test keys (wg genkey); none is used anywhere real.
PRIV = "aKHukUFDDA5V4XGpTP1VNL5SEmNbhb6WkTl9ZIoGtmI="
PUB_A = "4ta2Ike/0vubLN/l4PqUUEGYOzJDObTOBRVsGgVc3Gk="
PUB_B = "uD4y+HlzJv8tzJF48mjCxV0BBVt6VaYWqM4BHmH6V1E="
PSK = "2T2zzP/c5nMVZ+oYJXXvcZ8vCOHMuqFpD7dAhjOkuhg="


def cfg(body: str, path: str = "wg0.conf") -> Config:
    return parse_config(body, path)


def iface(extra: str = "") -> str:
    return f"[Interface]\nPrivateKey = {PRIV}\n{extra}"


# -- wg-quick keys ------------------------------------------------------------------------------
def test_full_wg_quick_file() -> None:
    c = cfg(f"""\
# a wg-quick file as people write them
[Interface]
PrivateKey = {PRIV}
ListenPort = 51820
FwMark = 0xca6c
Address = 198.19.0.1/24, fd00:19::1/64
Address = 100.64.0.1/10
MTU = 1420
DNS = 198.19.0.53, fd00:19::53, corp.example
Table = 1234
PreUp = echo pre-up
PostUp = iptables -A FORWARD -i %i -j ACCEPT; echo a=b
PostUp = echo second
PreDown = echo pre-down
PostDown = echo post-down   # a comment, cut as wg-quick does
SaveConfig = true

[Peer]
PublicKey = {PUB_A}
PresharedKey = {PSK}
AllowedIPs = 198.19.0.2/32, fd00:19::2/128
AllowedIPs = 198.19.128.77/17
Endpoint = 198.18.0.2:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {PUB_B}
AllowedIPs = 198.19.1.0/24
Endpoint = [fd00::2]:51821
""")
    i = c.interface
    assert i.private_key == decode_key(PRIV) and i.listen_port == 51820 and i.fwmark == 0xCA6C
    assert [str(a) for a in i.addresses] == ["198.19.0.1/24", "fd00:19::1/64", "100.64.0.1/10"]
    assert i.mtu == 1420 and i.dns == ("198.19.0.53", "fd00:19::53", "corp.example") and i.table == "1234"
    assert i.pre_up == ("echo pre-up",) and i.post_down == ("echo post-down",) and i.pre_down == ("echo pre-down",)
    assert i.post_up == ("iptables -A FORWARD -i %i -j ACCEPT; echo a=b", "echo second")
    assert i.save_config is True and i.forward is False and i.offload == "auto" and i.name is None
    a, b = c.peers
    assert a.public_key == decode_key(PUB_A) and a.preshared_key == decode_key(PSK)
    assert [str(n) for n in a.allowed_ips] == ["198.19.0.2/32", "fd00:19::2/128", "198.19.128.0/17"]  # masked
    assert a.endpoint == ("198.18.0.2", 51820) and a.persistent_keepalive == 25 and a.line == 18
    assert b.endpoint == ("fd00::2", 51821) and b.preshared_key is None and b.persistent_keepalive == 0
    assert b.line == 26 and c.segments == () and c.path == "wg0.conf" and c.interface_name == "wg0"


def test_keys_case_insensitive_and_layout() -> None:
    text = (f"\ufeff  [INTERFACE]  \r\n\tprivatekey={PRIV}\r\nLISTENPORT =  7\r\n\r\n"
            f"[peer]\r\npublickey\t=\t{PUB_A}\r\nallowedips=198.19.0.2/32,,fd00::2/128 ,\r\n"
            "endpoint = peer.example.net:51820\r\npersistentkeepalive = off\r\n")
    c = cfg(text)
    assert c.interface.listen_port == 7
    p = c.peers[0]
    assert [str(n) for n in p.allowed_ips] == ["198.19.0.2/32", "fd00::2/128"]
    assert p.endpoint == ("peer.example.net", 51820) and p.persistent_keepalive == 0


def test_empty_lists_and_off_values() -> None:
    c = cfg(iface("Address =\nDNS =\nFwMark = off\nTable = Off\nPostUp =\n") + f"[Peer]\nPublicKey = {PUB_A}\n"
            "AllowedIPs =\n")
    assert c.interface.addresses == () and c.interface.dns == () and c.interface.post_up == ()
    assert c.interface.fwmark == 0 and c.interface.table == "off" and c.peers[0].allowed_ips == ()
    assert cfg(iface("Table = 0x10\nListenPort = 0\n")).interface.table == "16"
    assert cfg(iface("Address = 198.19.0.1")).interface.addresses == (ipaddress.ip_interface("198.19.0.1/32"),)


# -- pyvpn keys ---------------------------------------------------------------------------------
def test_pyvpn_keys() -> None:
    c = cfg(iface("""\
#pyvpn Name = pv-test0
#pyvpn Namespace = app1
#PYVPN user = nobody
#pyvpn Forward = on   # trailing comment
#pyvpn Offload = ON
#pyvpn LogLevel = DEBUG
#pyvpn Metrics = [::1]:9586
# pyvpn Name = x  <- with a space this is an ordinary comment
#pyvpnish = also an ordinary comment
""") + f"[Peer]\n#pyvpn Name = Alice laptop\nPublicKey = {PUB_A}\n#pyvpn Vtep = 198.19.0.2\n")
    i = c.interface
    assert (i.name, i.namespace, i.user, i.forward, i.offload, i.log_level, i.metrics) == (
        "pv-test0", "app1", "nobody", True, "on", "debug", "[::1]:9586")
    assert c.interface_name == "pv-test0"
    assert c.peers[0].name == "Alice laptop" and c.peers[0].vtep == "198.19.0.2"


def test_forward_is_off_unless_asked() -> None:
    """Issue 13: peer-to-peer forwarding inside the daemon bypasses the host's firewall, so it is opt-in, for
    servers and clients alike; a file says ``Forward = on`` only when it is on, and keeps saying it."""
    plain = cfg(iface())
    assert plain.interface.forward is False
    assert "Forward" not in format_config(plain)
    on = cfg(iface("#pyvpn Forward = on\n"))
    assert on.interface.forward is True
    assert "#pyvpn Forward = on" in format_config(on) and parse_config(format_config(on)) == on
    assert cfg(iface("#pyvpn Forward = off\n")) == plain


SEGMENTS = iface() + f"""\
[Peer]
#pyvpn Name = b
PublicKey = {PUB_A}

#pyvpn [Segment]
#pyvpn VNI = 100
#pyvpn Tap = tap100
#pyvpn Bridge = br-lan
#pyvpn MTU = 1370
#pyvpn Port = 4790
#pyvpn Peers = b, {PUB_B}
#pyvpn VLAN = 20
#pyvpn MacAge = 60
#pyvpn MacLimit = 100

# an ordinary comment and a blank line do not end the segment
#pyvpn [segment]
#pyvpn vni = 16777215
#pyvpn Tap = tap100
#pyvpn VLAN = 21

#pyvpn [Segment]
#pyvpn VNI = 7
#pyvpn Tap = tap7
#pyvpn Mode = plain
#pyvpn Local = 198.18.0.1
#pyvpn Remote = 198.18.0.2, 198.18.0.3:4790
#pyvpn Remote = 198.18.0.4

[Peer]
PublicKey = {PUB_B}
"""


def test_segments() -> None:
    c = cfg(SEGMENTS)
    s1, s2, s3 = c.segments
    assert s1 == SegmentConfig(vni=100, tap="tap100", bridge="br-lan", mtu=1370, port=4790, peers=("b", PUB_B),
                               vlan=20, mac_age=60.0, mac_limit=100)
    assert s1.line == 7 and s2.line == 19 and s3.line == 24
    assert (s2.vni, s2.vlan, s2.mode, s2.port, s2.peers, s2.mac_age, s2.mac_limit) == (
        16777215, 21, "tunnel", 4789, (), 300.0, 4096)
    assert s3.mode == "plain" and s3.local == "198.18.0.1"
    assert s3.remote == ("198.18.0.2", "198.18.0.3:4790", "198.18.0.4")
    assert [p.public_key for p in c.segment_peers(s1)] == [decode_key(PUB_A), decode_key(PUB_B)]
    assert c.segment_peers(s2) == c.peers
    assert len(c.peers) == 2 and c.peers[1].line == 32  # the [Peer] header ended the plain segment
    assert (s1.mac_limit_per_peer, s1.broadcast_rate_per_peer, s1.broadcast_burst_per_peer, s1.broadcast_rate,
            s1.broadcast_burst) == (None, 200, None, 1000, None)  # defaults (the planner resolves None)


def test_segment_limits_for_untrusted_members() -> None:
    text = iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn MacLimitPerPeer = 32\n"
                 "#pyvpn BroadcastRatePerPeer = 50\n#pyvpn BroadcastBurstPerPeer = 75\n#pyvpn broadcastrate = 0\n")
    (s,) = cfg(text).segments
    assert (s.mac_limit_per_peer, s.broadcast_rate_per_peer, s.broadcast_burst_per_peer, s.broadcast_rate,
            s.broadcast_burst) == (32, 50, 75, 0, None)
    assert parse_config(format_config(cfg(text))) == cfg(text)


# -- errors -------------------------------------------------------------------------------------
def _err(text: str, path: str = "wg0.conf") -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(text, path)
    return str(e.value)


def test_error_example_from_the_brief() -> None:
    text = iface("ListenPort = 51820\n\n") + f"[Peer]\nPublicKey = {PUB_A}\nAllowedIPs = 10.0.0.300/32\n"
    assert _err(text) == "wg0.conf:7: AllowedIPs: '10.0.0.300/32' is not a valid IP network"


P = f"[Peer]\nPublicKey = {PUB_A}\n"
# (text, "line: Key: fragment") — every message is "wg0.conf:<line>: <Key>: ..."
ERRORS: list[tuple[str, str]] = [
    ("[Interface]\nListenPort = 1\n", "1: PrivateKey: missing from [Interface]"),
    ("", "wg0.conf: no [Interface] section"),
    ("# only a comment\n", "wg0.conf: no [Interface] section"),
    (iface() + "[Interface]\n", "3: a second [Interface] section"),
    ("ListenPort = 1\n" + iface(), "1: ListenPort: comes before any section"),
    (iface("[Foo]\n"), "3: unknown section '[Foo]'"),
    (iface("#pyvpn [Interface]\n"), "3: unknown pyvpn section"),
    (iface("ListenPort\n"), "3: expected 'Key = Value', got 'ListenPort'"),
    (iface("Bogus = 1\n"), "3: Bogus: unknown key in [Interface]"),
    (iface("PublicKey = x\n"), "3: PublicKey: unknown key in [Interface]; it belongs in [Peer]"),
    (iface("Name = x\n"), "3: Name: unknown key in [Interface]; pyvpn's own keys are written '#pyvpn Key = Value'"),
    (iface("#pyvpn ListenPort = 1\n"), "3: ListenPort: unknown key in #pyvpn [Interface]; this is a wg-quick key"),
    (iface() + "[Peer]\nAddress = 198.19.0.1/24\n", "4: Address: unknown key in [Peer]; it belongs in [Interface]"),
    (iface() + "[Peer]\nPublicKey = " + PUB_A + "\n#pyvpn VNI = 1\n", ("5: VNI: unknown key in #pyvpn [Peer]; "
     "it belongs in #pyvpn [Segment]")),
    (iface("Private_Key = x\n"), "3: Private_Key: unknown key in [Interface]"),  # wg does not take it either
    (iface("ListenPort = 65536\n"), "3: ListenPort: 65536 is out of range (0..65535)"),
    (iface("ListenPort = -1\n"), "3: ListenPort: '-1' is not a number"),
    (iface("ListenPort = 1_000\n"), "3: ListenPort: '1_000' is not a number"),
    (iface("ListenPort = \u0663\n"), "3: ListenPort: '\u0663' is not a number"),
    (iface("ListenPort = 1\nListenPort = 2\n"), "4: ListenPort: given twice in this section (first on line 3)"),
    (iface("ListenPort =\n"), "3: ListenPort: empty value"),
    (iface("FwMark = 0x100000000\n"), "3: FwMark: 4294967296 is out of range"),
    (iface("Address = 198.19.0.1/33\n"), "3: Address: '198.19.0.1/33' is not a valid address with prefix"),
    (iface("MTU = 100\n"), "3: MTU: 100 is out of range (576..65535)"),
    (iface("DNS = 198.19.0.300\n"), "3: DNS: '198.19.0.300' is not a valid DNS server address"),
    (iface("DNS = bad domain\n"), "3: DNS: 'bad domain' is neither an IP address nor a search domain"),
    (iface("Table = mine\n"), "3: Table: 'mine' is not off, auto, main or a table number"),
    (iface("SaveConfig = yes\n"), "3: SaveConfig: 'yes' is neither true nor false"),
    (iface("#pyvpn Name = this-name-is-too-long\n"), "3: Name: 'this-name-is-too-long' is not a valid interface"),
    (iface("#pyvpn Namespace = ../x\n"), "3: Namespace: '../x' is not a valid network namespace name"),
    (iface("#pyvpn User = a b\n"), "3: User: 'a b' is not a valid user name"),
    (iface("#pyvpn Forward = maybe\n"), "3: Forward: 'maybe' is not on/off"),
    (iface("#pyvpn Offload = fast\n"), "3: Offload: 'fast' is not on, off or auto"),
    (iface("#pyvpn LogLevel = loud\n"), "3: LogLevel: 'loud' is not debug, info, warning or error"),
    (iface("#pyvpn Metrics = 9586\n"), "3: Metrics: '9586' is not host:port"),
    (iface() + "[Peer]\nAllowedIPs = 198.19.0.2/32\n", "3: PublicKey: missing from [Peer]"),
    (iface() + P + P, "6: PublicKey: the same peer is already defined on line 3"),
    (iface() + f"[Peer]\nPublicKey = {encode_key(public_from_private(decode_key(PRIV)))}\n",
     "4: PublicKey: is the interface's own public key"),
    (iface() + P + "Endpoint = fd00::1:51820\n", ("5: Endpoint: 'fd00::1:51820' is not host:port or [v6]:port (put "
     "an IPv6 address in brackets)")),
    (iface() + P + "Endpoint = 198.18.0.1\n", "5: Endpoint: '198.18.0.1' is not host:port"),
    (iface() + P + "Endpoint = 198.18.0.1:0\n", "5: Endpoint: port 0 is out of range (1..65535)"),
    (iface() + P + "Endpoint = 198.18.0.1:\u0663\n", "5: Endpoint: '198.18.0.1:\u0663' is not host:port"),
    (iface() + P + "PersistentKeepalive = 65536\n", "5: PersistentKeepalive: 65536 is out of range"),
    (iface() + P + "PersistentKeepalive = sometimes\n", "5: PersistentKeepalive: 'sometimes' is not a number"),
    (iface() + P + "#pyvpn Name = a,b\n", "5: Name: 'a,b' is not a valid peer name"),
    (iface() + P + "#pyvpn Name = x\n" + f"[Peer]\nPublicKey = {PUB_B}\n#pyvpn Name = x\n",
     "8: Name: peer name 'x' is already used by the peer on line 3"),
    (iface() + P + "#pyvpn Vtep = vtep.example\n", "5: Vtep: 'vtep.example' is not an IP address"),
    (iface("#pyvpn [Segment]\n#pyvpn Tap = t0\n"), "3: VNI: missing from #pyvpn [Segment]"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n"), "3: Tap: missing from #pyvpn [Segment]"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 0\n"), "4: VNI: 0 is out of range (1..16777215)"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 16777216\n"), "4: VNI: 16777216 is out of range"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t1\n"),
     "7: VNI: 1 is already used by the segment on line 3"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn [Segment]\n#pyvpn VNI = 2\n#pyvpn Tap = t0\n"),
     "8: Tap: t0 already carries untagged frames for the segment on line 3"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn VLAN = 5\n#pyvpn [Segment]\n#pyvpn VNI = 2\n"
           "#pyvpn Tap = t0\n#pyvpn VLAN = 5\n"), "9: Tap: t0 already carries VLAN 5"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn VLAN = 4095\n"), "5: VLAN: 4095 is out of range (1..4094)"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\nTap = t0\n"), "5: Tap: unknown key in #pyvpn [Segment]; every line"),
    (iface("#pyvpn [Segment]\n#pyvpn Tap = this-is-too-long0\n"), "4: Tap: 'this-is-too-long0' is not a valid"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn Peers = nobody\n"),
     "6: Peers: 'nobody' is neither a peer name nor a peer's public key"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn Mode = fast\n"),
     "6: Mode: 'fast' is not tunnel or plain"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn Mode = plain\n#pyvpn Local = 198.18.0.1\n"),
     "6: Mode: plain (unencrypted) VXLAN needs Local and Remote addresses"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn Local = 198.18.0.1\n"),
     "6: Local: only applies to 'Mode = plain'"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn Mode = plain\n#pyvpn Local = 198.18.0.1\n"
           "#pyvpn Remote = fd00::2\n"), "8: Remote: 'fd00::2' is not of the same IP version as Local 198.18.0.1"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn Mode = plain\n#pyvpn Local = 198.18.0.1\n"
           "#pyvpn Remote = 198.18.0.2\n#pyvpn Peers = " + PUB_A + "\n") + P,
     "9: Peers: a plain segment talks to its Remote addresses, not to peers"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn Mode = plain\n#pyvpn Local = 198.18.0.1\n"
           "#pyvpn Remote = remote.example\n"), "8: Remote: 'remote.example' is not"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn MacAge = 0\n"), "6: MacAge: 0 is out of range"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn MacLimitPerPeer = 0\n"),
     "6: MacLimitPerPeer: 0 is out of range (1..1048576)"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn MacLimit = 64\n#pyvpn MacLimitPerPeer = 65\n"),
     "7: MacLimitPerPeer: 65 is larger than MacLimit (64)"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn MacLimitPerPeer = 4097\n"),
     "6: MacLimitPerPeer: 4097 is larger than MacLimit (4096)"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn BroadcastRate = -1\n"),
     "6: BroadcastRate: "),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn BroadcastRatePerPeer = lots\n"),
     "6: BroadcastRatePerPeer: "),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn BroadcastBurst = 0\n"),
     "6: BroadcastBurst: 0 is out of range (1..10000000)"),
    (iface("#pyvpn [Segment]\n#pyvpn VNI = 1\n#pyvpn Tap = t0\n#pyvpn BroadcastBurstPerPeer = 10\n"
           "#pyvpn BroadcastRatePerPeer = 0\n"),
     "6: BroadcastBurstPerPeer: has no effect with BroadcastRatePerPeer = 0"),
    (iface("[Peer]\nPublicKey = " + PUB_A + "\n#pyvpn MacLimitPerPeer = 5\n"),
     "5: MacLimitPerPeer: unknown key in #pyvpn [Peer]; it belongs in #pyvpn [Segment]"),
]


@pytest.mark.parametrize("n", range(len(ERRORS)))
def test_errors(n: int) -> None:
    text, want = ERRORS[n]
    msg = _err(text)
    assert msg.startswith(want if want.startswith("wg0.conf") else f"wg0.conf:{want}"), msg


def test_error_attributes() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(iface("MTU = 1\n"), "/etc/wireguard/wg9.conf")
    err = e.value
    assert isinstance(err, ValueError)
    assert (err.path, err.line, err.key) == ("/etc/wireguard/wg9.conf", 3, "MTU")
    assert err.reason == "1 is out of range (576..65535)"


BAD_KEYS = [
    PRIV[:-2] + "=",  # too short
    PRIV[:-1],  # no padding
    "A" * 43 + "=" + "A",  # too long
    PRIV[:10] + "*" + PRIV[11:],  # not base64
    PRIV[:42] + "B=",  # non-canonical last character (wg refuses it)
    "",
]


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_bad_keys_are_clear_and_never_echoed(bad: str) -> None:
    for text, key in ((f"[Interface]\nPrivateKey = {bad}\n", "PrivateKey"),
                      (iface() + f"[Peer]\nPublicKey = {PUB_A}\nPresharedKey = {bad}\n", "PresharedKey")):
        msg = _err(text)
        assert f": {key}: " in msg
        assert "base64" in msg or "32 bytes" in msg or "empty value" in msg or "44 characters" in msg, msg
        if bad:
            assert bad not in msg and bad[:20] not in msg


def test_private_key_never_in_messages_or_reprs() -> None:
    # A private key pasted on a line of its own, or as a key name, is not echoed.
    for text in (iface(f"{PRIV}\n"), iface(f"{PRIV[:-1]}\n"), iface(f"{PRIV[:-1]} = x\n"), iface(f"[{PRIV}]\n"),
                 iface(f"#pyvpn [{PRIV}]\n")):
        msg = _err(text)
        assert PRIV[:20] not in msg, msg
    c = cfg(iface() + f"[Peer]\nPublicKey = {PUB_A}\nPresharedKey = {PSK}\n")
    for r in (repr(c), str(c), repr(c.interface), repr(c.peers[0])):
        assert "(hidden)" in r
        for secret in (decode_key(PRIV), decode_key(PSK)):
            assert repr(secret) not in r and secret.hex() not in r
        assert PRIV not in r and PSK not in r


def test_missing_file_and_permissions(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.conf")
    assert str(e.value) == f"{tmp_path / 'nope.conf'}: no such file"
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert "is a directory" in str(e.value)
    bad = tmp_path / "bin.conf"
    bad.write_bytes(b"\xff\xfe[Interface]\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "not UTF-8" in str(e.value)
    f = tmp_path / "wg7.conf"
    f.write_text(iface())
    f.chmod(0o600)
    assert check_permissions(f) is None and load_config(f).interface_name == "wg7"
    f.chmod(0o700)
    assert check_permissions(f) is None  # execute bits alone expose nothing
    for mode in (0o640, 0o620, 0o604, 0o602, 0o644):
        f.chmod(mode)
        warning = check_permissions(f)
        assert warning is not None and str(f) in warning and f"{mode:04o}" in warning
    assert check_permissions(tmp_path / "nope.conf") is None


# -- writing ------------------------------------------------------------------------------------
def test_format_round_trip_of_every_field() -> None:
    c = cfg(f"""\
[Interface]
PrivateKey = {PRIV}
ListenPort = 0
FwMark = 0
Address = fd00:19::1/64
MTU = 9000
DNS = corp.example
Table = auto
PreUp = a
PostUp = b; c
PreDown = d
PostDown = e
SaveConfig = false
#pyvpn Name = x0
#pyvpn Namespace = ns-1
#pyvpn User = 1000
#pyvpn Forward = off
#pyvpn Offload = off
#pyvpn LogLevel = warning
#pyvpn Metrics = 127.0.0.1:9586
#pyvpn Pool4 = 100.64.0.0/24
#pyvpn Pool6 = fd00:64::/64
#pyvpn PublicEndpoint = [fd00::1]:51820
""" + SEGMENTS.split("\n", 2)[2])
    text = format_config(c)
    back = parse_config(text, "other.conf")
    assert back == c  # path and line numbers are not part of equality
    assert format_config(back) == text
    assert "(hidden)" not in text and PRIV in text and "#pyvpn [Segment]" in text


def test_format_minimal_is_wg_quick_text() -> None:
    c = cfg(iface() + f"[Peer]\nPublicKey = {PUB_A}\nAllowedIPs = 198.19.0.2/32\n")
    assert format_config(c) == (f"[Interface]\nPrivateKey = {PRIV}\n\n[Peer]\nPublicKey = {PUB_A}\n"
                                "AllowedIPs = 198.19.0.2/32\n")


names = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
keys = st.binary(min_size=32, max_size=32)
v4nets = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
    lambda t: ipaddress.IPv4Network(t, strict=False))
v6nets = st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
    lambda t: ipaddress.IPv6Network(t, strict=False))
hosts = st.one_of(st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
                  st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
                  st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5})?", fullmatch=True))

rules = st.tuples(st.one_of(v4nets, v6nets), st.sampled_from([None, 6, 17, 132, 1, 58, 47]),
                  st.integers(0, 65535), st.integers(0, 100)).map(
    lambda t: Rule(t[0], t[1], (t[2], min(65535, t[2] + t[3])) if t[1] in (6, 17, 132) else None))


@st.composite
def configs(draw: st.DrawFn) -> Config:
    i = InterfaceConfig(
        private_key=draw(keys), listen_port=draw(st.none() | st.integers(0, 65535)),
        fwmark=draw(st.none() | st.integers(0, 2**32 - 1)),
        addresses=tuple(draw(st.lists(st.one_of(v4nets, v6nets).map(
            lambda n: ipaddress.ip_interface(f"{n.network_address}/{n.prefixlen}")), max_size=3))),
        mtu=draw(st.none() | st.integers(576, 65535)), name=draw(st.none() | names),
        forward=draw(st.booleans()), offload=draw(st.sampled_from(["on", "off", "auto"])))
    own = public_from_private(i.private_key)
    pubs = draw(st.lists(keys.filter(lambda k: k != own), unique=True, max_size=4))
    peer_names = draw(st.lists(names, unique=True, min_size=len(pubs), max_size=len(pubs)))
    peers = tuple(PeerConfig(
        public_key=k, preshared_key=draw(st.none() | keys),
        allowed_ips=tuple(draw(st.lists(st.one_of(v4nets, v6nets), max_size=4))),
        endpoint=draw(st.none() | st.tuples(hosts, st.integers(1, 65535))),
        persistent_keepalive=draw(st.integers(0, 65535)), name=draw(st.none()) if n == "x" else n,
        allow=tuple(draw(st.lists(rules, max_size=3))), deny=tuple(draw(st.lists(rules, max_size=2))),
        rate_limit=draw(st.none() | st.integers(8000, 10**11)), expires=draw(st.none() | st.integers(0, 2**33)),
        disabled=draw(st.booleans()))
        for k, n in zip(pubs, peer_names, strict=True))
    refs = [p.name or encode_key(p.public_key) for p in peers]  # a segment names a peer or gives its key
    rate = draw(st.sampled_from((0, 1000, 7)))
    segs = tuple(SegmentConfig(vni=vni, tap=f"tap{vni % 10000}", vlan=draw(st.none() | st.integers(1, 4094)),
                               peers=tuple(draw(st.lists(st.sampled_from(refs), max_size=2))) if refs else (),
                               mac_limit_per_peer=draw(st.none() | st.integers(1, 4096)), broadcast_rate=rate,
                               broadcast_burst=draw(st.none() | st.integers(1, 99)) if rate else None,
                               broadcast_rate_per_peer=draw(st.sampled_from((200, 1))))
                 for vni in draw(st.lists(st.integers(1, 2**24 - 1), unique_by=lambda v: v % 10000, max_size=2)))
    return Config(path="<random>", interface=i, peers=peers, segments=segs)


@settings(max_examples=60, deadline=None)
@given(configs())
def test_format_parse_round_trip_random(c: Config) -> None:
    assert parse_config(format_config(c)) == c


# -- the example files --------------------------------------------------------------------------
def test_configs_dir_has_the_examples() -> None:
    assert {p.name for p in CONFIGS} >= {"p2p-a.conf", "p2p-b.conf", "hub.conf", "hub-client.conf", "l2-site.conf",
                                        "vxlan-plain.conf", "container.conf"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_loads_and_round_trips(path: Path) -> None:
    c = load_config(path)
    assert parse_config(format_config(c), str(path)) == c
    for line in path.read_text().splitlines():  # the examples hold only test addresses
        for word in line.replace(",", " ").replace("=", " ").split():
            host = word.rsplit(":", 1)[0].strip("[]") if word.count(":") == 1 or word.startswith("[") else word
            try:
                addr = ipaddress.ip_address(host.split("/")[0])
            except ValueError:
                continue
            assert addr.is_loopback or any(addr in ipaddress.ip_network(n) for n in (
                "198.18.0.0/15", "100.64.0.0/10", "fd00::/8")), (path.name, word)


def test_examples_fit_together() -> None:
    by = {p.name: load_config(p) for p in CONFIGS}

    def pub(c: Config) -> bytes:
        return public_from_private(c.interface.private_key)

    a, b = by["p2p-a.conf"], by["p2p-b.conf"]
    assert a.peers[0].public_key == pub(b) and b.peers[0].public_key == pub(a)
    assert a.peers[0].preshared_key == b.peers[0].preshared_key is not None
    hub, client = by["hub.conf"], by["hub-client.conf"]
    assert client.peers[0].public_key == pub(hub)
    mine = [p for p in hub.peers if p.public_key == pub(client)]
    assert len(mine) == 1 and mine[0].preshared_key == client.peers[0].preshared_key
    assert {str(n) for n in mine[0].allowed_ips} == {str(x.network) for x in client.interface.addresses}
    assert by["container.conf"].interface.namespace and by["vxlan-plain.conf"].segments[0].mode == "plain"
    assert by["l2-site.conf"].segments and all(s.mode == "tunnel" for s in by["l2-site.conf"].segments)
    # in-daemon forwarding bypasses the host firewall: only the hub example asks for it
    assert hub.interface.forward and not any(c.interface.forward for n, c in by.items() if n != "hub.conf")


@pytest.mark.root
@pytest.mark.interop
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_wg_quick_strip_accepts_example(path: Path, tmp_path: Path) -> None:
    """wg-quick reads the file (the #pyvpn lines, segments included, are comments to it) and hands the wg part on."""
    if shutil.which("wg-quick") is None:
        pytest.skip("wg-quick is not installed")
    f = tmp_path / "wg0.conf"  # wg-quick wants a valid interface name before .conf
    f.write_text(path.read_text())
    f.chmod(0o600)
    proc = subprocess.run(["wg-quick", "strip", str(f)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    stripped = proc.stdout
    c = load_config(path)
    wg_keys = {line.split("=")[0].strip().lower() for line in stripped.splitlines() if "=" in line.split("#")[0]}
    assert not wg_keys & {"address", "dns", "mtu", "table", "saveconfig"}  # wg-quick keeps its own keys
    assert encode_key(c.interface.private_key) in stripped
    for p in c.peers:
        assert encode_key(p.public_key) in stripped
    # What wg-quick passes to `wg setconf` is a valid config for us too (without the wg-quick keys).
    back = parse_config(stripped, "wg0.conf")
    assert back.peers == tuple(replace(p) for p in c.peers)
    assert back.interface.private_key == c.interface.private_key
    assert back.interface.listen_port == c.interface.listen_port
