"""vpn.testlab.packets, the one set of packet builders, against scapy (an independent implementation):
every field lands where scapy reads it, and the checksums we write are the ones scapy computes."""

from __future__ import annotations

import random

import pytest

from tunnel.offload import checksum
from vpn.testlab.packets import (
    ACK,
    ICMP,
    PSH,
    TCP,
    UDP,
    eth,
    icmp_echo,
    ipv4,
    ipv4_packet,
    ipv6,
    ipv6_packet,
    l4_pseudo_header,
    seq_of,
    tcp,
    udp,
)

scapy_all = pytest.importorskip("scapy.all", reason="scapy is the independent reference")
IP, IPv6, sTCP, sUDP, Ether, Dot1Q = (scapy_all.IP, scapy_all.IPv6, scapy_all.TCP, scapy_all.UDP, scapy_all.Ether,
                                       scapy_all.Dot1Q)


def rebuilt(pkt: bytes) -> bytes:
    """scapy's bytes for ``pkt`` with every checksum deleted and recomputed."""
    p = IP(pkt) if pkt[0] >> 4 == 4 else IPv6(pkt)
    for layer, field in ((IP, "chksum"), (sTCP, "chksum"), (sUDP, "chksum")):
        if layer in p:
            delattr(p[layer], field)
    return bytes(p)


@pytest.mark.parametrize("seed", range(20))
def test_ipv4_tcp_fields_and_checksums(seed: int) -> None:
    rng = random.Random(seed)
    payload = rng.randbytes(rng.randrange(0, 1400))
    opts = b"\x01\x01\x08\x0a" + rng.randbytes(8) if seed % 2 else b""
    seg = tcp(40000 + seed, 5201, payload, seq=rng.getrandbits(32), ack=rng.getrandbits(32), flags=PSH | ACK,
              window=502, options=opts)
    pkt = ipv4("100.64.0.1", "100.64.0.2", TCP, seg, ident=seed * 1000, ttl=63, tos=4, l4_csum="full")
    p = IP(pkt)
    assert (p.src, p.dst, p.proto, p.id, p.ttl, p.tos, p.flags, p.len) == (
        "100.64.0.1", "100.64.0.2", 6, seed * 1000, 63, 4, "DF", len(pkt))
    t = p[sTCP]
    assert (t.sport, t.dport, t.flags, t.window, t.dataofs * 4, bytes(t.payload)) == (
        40000 + seed, 5201, "PA", 502, 20 + len(opts), payload)
    assert rebuilt(pkt) == pkt  # both checksums are scapy's


@pytest.mark.parametrize("seed", range(20))
def test_ipv6_udp_checksum_and_partial_seed(seed: int) -> None:
    rng = random.Random(seed)
    payload = rng.randbytes(rng.randrange(0, 600))
    pkt = ipv6("fd00::1", "fd00::2", UDP, udp(1000, 53, payload), hops=7, tclass=3, flow=0x12345, l4_csum="full")
    p = IPv6(pkt)
    assert (p.src, p.dst, p.nh, p.hlim, p.tc, p.fl, p.plen) == (
        "fd00::1", "fd00::2", 17, 7, 3, 0x12345, 8 + len(payload))
    assert (p[sUDP].sport, p[sUDP].dport, bytes(p[sUDP].payload)) == (1000, 53, payload)
    assert rebuilt(pkt) == pkt
    # "partial": the pseudo-header sum, which finishing the checksum over the segment turns into the full one
    part = ipv6("fd00::1", "fd00::2", UDP, udp(1000, 53, payload), l4_csum="partial")
    seed_sum = int.from_bytes(part[46:48], "big")
    seg = part[40:46] + b"\0\0" + part[48:]
    assert checksum(seg, seed_sum) in (int.from_bytes(pkt[46:48], "big"), 0)


def test_ipv4_options_fragments_total_and_no_checksum() -> None:
    pkt = ipv4(bytes(4), "10.0.0.1", 17, b"abcd", df=False, frag=0x2000 | 3, options=bytes(8), total=9000, csum=False)
    assert pkt[0] == 0x47 and int.from_bytes(pkt[2:4], "big") == 9000 and pkt[6:8] == b"\x20\x03"
    assert pkt[10:12] == b"\0\0" and pkt[28:] == b"abcd"
    assert checksum(ipv4("1.2.3.4", "5.6.7.8", 1, b"")[:20]) == 0  # a correct header sums to zero
    with pytest.raises(ValueError):
        ipv4("1.2.3.4", "5.6.7.8", 1, b"icmp", l4_csum="full")  # only TCP and UDP have one
    with pytest.raises(ValueError):
        ipv4("1.2.3.4", "5.6.7.8", 1, options=bytes(3))
    with pytest.raises(ValueError):
        tcp(1, 2, options=bytes(44))


def test_pseudo_header_matches_scapy_layout() -> None:
    assert l4_pseudo_header("1.2.3.4", "5.6.7.8", 6, 20) == bytes([1, 2, 3, 4, 5, 6, 7, 8, 0, 6, 0, 20])
    assert l4_pseudo_header("fd00::1", b"\xfd" + bytes(15), 17, 8)[32:] == bytes([0, 0, 0, 8, 0, 0, 0, 17])


def test_eth_with_and_without_vlan() -> None:
    inner = ipv4("100.64.0.1", "100.64.0.2", UDP, udp(1, 2, b"x"))
    f = eth(inner, dst=b"\x02" * 6, src=b"\x04" * 6, vlan=100)
    e = Ether(f)
    assert (e.dst, e.src, e[Dot1Q].vlan, e[Dot1Q].type, bytes(e[Dot1Q].payload)) == (
        "02:02:02:02:02:02", "04:04:04:04:04:04", 100, 0x0800, inner)
    assert eth(ipv6("fd00::1", "fd00::2", 59))[12:14] == b"\x86\xdd"
    assert eth(b"hi", ethertype=0x88B5, tags=bytes.fromhex("88a8000a"))[12:18] == bytes.fromhex("88a8000a88b5")


def test_sized_packets_carry_their_sequence_number() -> None:
    for size in (28, 31, 32, 100, 1420):
        p = ipv4_packet(size, 77)
        assert len(p) == size == int.from_bytes(p[2:4], "big")
        if size >= 32:
            assert seq_of(p) == 77
    for size in (40, 44, 1420):
        p = ipv6_packet(size, 5)
        assert len(p) == size == 40 + int.from_bytes(p[4:6], "big")
        if size >= 44:
            assert seq_of(p) == 5


def test_icmp_echo_checksum_is_scapys() -> None:
    for seq, reply in ((1, False), (77, True)):
        pkt = ipv4("198.19.0.1", "198.19.0.2", ICMP, icmp_echo(0x4242, seq, b"ping" * seq, reply=reply))
        p = IP(pkt)
        icmp = p[scapy_all.ICMP]
        assert (icmp.type, icmp.id, icmp.seq, bytes(icmp.payload)) == (0 if reply else 8, 0x4242, seq, b"ping" * seq)
        del icmp.chksum
        assert bytes(p) == pkt

