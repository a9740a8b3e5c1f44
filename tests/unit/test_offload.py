"""tunnel.offload: virtio_net_hdr, GSO segmentation and GRO coalescing, checked against scapy.

scapy is an independent implementation of IPv4/IPv6/TCP/UDP: every packet we produce is parsed by it,
its checksums are deleted and recomputed by scapy, and the re-serialised bytes must equal ours.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnel.offload import (
    MAX_SUPER_PACKET,
    UDP_MAX_SEGMENTS,
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    OffloadError,
    VirtioNetHdr,
    checksum,
    coalesce,
    gro_frames,
    l2_header_len,
    segment,
    split_reads,
    with_hdr,
    without_hdr,
)
from tunnel.offload.checksum import _sum16
from vpn.testlab.differential import check_bulk_matches_loop, random_batches
from vpn.testlab.packets import reference_sum

scapy_all = pytest.importorskip("scapy.all", reason="scapy is needed as the independent reference")
IP, IPv6, TCP, UDP, Raw = scapy_all.IP, scapy_all.IPv6, scapy_all.TCP, scapy_all.UDP, scapy_all.Raw

SRC4, DST4 = "100.64.0.2", "100.64.0.1"
SRC6, DST6 = "fd00::2", "fd00::1"


# --- helpers ------------------------------------------------------------------------------------


def pseudo(version: int, pkt: bytes, proto: int, length: int) -> bytes:
    if version == 4:
        return pkt[12:20] + bytes([0, proto]) + length.to_bytes(2, "big")
    return pkt[8:40] + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])


def l4_valid(pkt: bytes) -> bool:
    """The L4 checksum of a plain IP packet verifies (sum including the checksum field is 0xffff)."""
    version = pkt[0] >> 4
    l4 = (pkt[0] & 15) * 4 if version == 4 else 40
    proto = pkt[9] if version == 4 else pkt[6]
    return reference_sum(pseudo(version, pkt, proto, len(pkt) - l4) + pkt[l4:]) == 0xFFFF


def tcp_super(version: int, payload: bytes, *, seq: int = 1000, flags: str = "PA",
              options: list[tuple[str, object]] | None = None, ip_id: int = 7, ack: int = 55,
              window: int = 8192, sport: int = 40000) -> bytes:
    tcp = TCP(sport=sport, dport=5201, seq=seq, ack=ack, flags=flags, window=window, options=options or [])
    if version == 4:
        pkt = IP(src=SRC4, dst=DST4, id=ip_id, flags="DF", ttl=64) / tcp / Raw(payload)
    else:
        pkt = IPv6(src=SRC6, dst=DST6, hlim=64, fl=0x12345) / tcp / Raw(payload)
    return bytes(pkt)


def udp_super(version: int, payload: bytes, *, ip_id: int = 9) -> bytes:
    udp = UDP(sport=40000, dport=5202)
    if version == 4:
        pkt = IP(src=SRC4, dst=DST4, id=ip_id, flags="DF") / udp / Raw(payload)
    else:
        pkt = IPv6(src=SRC6, dst=DST6) / udp / Raw(payload)
    return bytes(pkt)


def as_kernel_read(pkt: bytes, gso_type: int, gso_size: int, *, hdr_size: int = 10,
                   bogus_hdr_len: bool = True) -> bytes:
    """Dress ``pkt`` as a vnet-hdr tun read: NEEDS_CSUM with only the pseudo-header sum in the field."""
    version = pkt[0] >> 4
    l4 = (pkt[0] & 15) * 4 if version == 4 else 40
    proto = pkt[9] if version == 4 else pkt[6]
    off = 16 if proto == 6 else 6
    seed = reference_sum(pseudo(version, pkt, proto, len(pkt) - l4))
    b = bytearray(pkt)
    b[l4 + off:l4 + off + 2] = seed.to_bytes(2, "big")
    # tun reports skb_headlen() as hdr_len, which can cover payload: segment() must not trust it.
    hdr_len = min(len(pkt), 0xFFFF) if bogus_hdr_len else l4 + (20 if proto == 6 else 8)
    nb = None if hdr_size == 10 else 0
    h = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hdr_len, gso_size, l4, off, nb)
    return h.pack() + bytes(b)


def scapy_recomputed(pkt: bytes) -> bytes:
    """Parse with scapy, drop every checksum and length field, and let scapy rebuild them."""
    p = IP(pkt) if pkt[0] >> 4 == 4 else IPv6(pkt)
    if IP in p:
        del p[IP].chksum
        del p[IP].len
    else:
        del p[IPv6].plen
    if TCP in p:
        del p[TCP].chksum
    if UDP in p:
        del p[UDP].chksum
        del p[UDP].len
    return bytes(p)


def check_tcp_segments(orig: bytes, segs: list[bytes], gso_size: int) -> None:
    version = orig[0] >> 4
    o = IP(orig) if version == 4 else IPv6(orig)
    payload = bytes(o[TCP].payload)
    nseg = max(1, -(-len(payload) // gso_size))
    assert len(segs) == nseg
    data = b""
    for k, seg in enumerate(segs):
        assert scapy_recomputed(seg) == seg, f"segment {k} differs from scapy's rebuild"
        assert l4_valid(seg)
        p = IP(seg) if version == 4 else IPv6(seg)
        t = p[TCP]
        chunk = bytes(t.payload)
        assert len(chunk) == (gso_size if k < nseg - 1 else len(payload) - gso_size * (nseg - 1))
        assert t.seq == (o[TCP].seq + k * gso_size) & 0xFFFFFFFF
        assert (t.ack, t.window, t.options, t.sport, t.dport) == (
            o[TCP].ack, o[TCP].window, o[TCP].options, o[TCP].sport, o[TCP].dport)
        want = int(o[TCP].flags)
        if nseg > 1:
            if k < nseg - 1:
                want &= ~0x09  # FIN, PSH only on the last
            if k:
                want &= ~0x80  # CWR only on the first
        assert int(t.flags) == want
        if version == 4:
            assert p[IP].id == (o[IP].id + k) & 0xFFFF
            assert (p[IP].ttl, p[IP].tos, int(p[IP].flags)) == (o[IP].ttl, o[IP].tos, int(o[IP].flags))
            assert p[IP].len == len(seg)
        else:
            assert p[IPv6].plen == len(seg) - 40
            assert (p[IPv6].fl, p[IPv6].hlim, p[IPv6].tc) == (o[IPv6].fl, o[IPv6].hlim, o[IPv6].tc)
        data += chunk
    assert data == payload


def check_udp_segments(orig: bytes, segs: list[bytes], gso_size: int) -> None:
    version = orig[0] >> 4
    o = IP(orig) if version == 4 else IPv6(orig)
    payload = bytes(o[UDP].payload)
    nseg = max(1, -(-len(payload) // gso_size))
    assert len(segs) == nseg
    data = b""
    for k, seg in enumerate(segs):
        assert scapy_recomputed(seg) == seg
        assert l4_valid(seg)
        p = IP(seg) if version == 4 else IPv6(seg)
        assert p[UDP].len == len(seg) - (20 if version == 4 else 40)
        assert p[UDP].chksum != 0
        if version == 4:
            assert p[IP].id == (o[IP].id + k) & 0xFFFF
        data += bytes(p[UDP].payload)
    assert data == payload


# --- checksum -----------------------------------------------------------------------------------


@given(st.binary(max_size=5000))
def test_sum16_matches_rfc1071(data: bytes) -> None:
    assert _sum16(data) % 0xFFFF == reference_sum(data) % 0xFFFF


def test_sum16_large_and_odd_sizes() -> None:
    rng = random.Random(1)
    for n in (0, 1, 2, 3, 374, 375, 376, 377, 1439, 1440, 1441, 9000, 65535, 65536, 70001):
        data = rng.randbytes(n)
        assert _sum16(data) % 0xFFFF == reference_sum(data) % 0xFFFF, n
    assert _sum16(b"\xff" * 64) == 0  # the sum 0xffff is the residue 0
    assert checksum(b"\xff\xff") == 0 and checksum(b"") == 0xFFFF


def test_checksum_against_scapy() -> None:
    rng = random.Random(2)
    for n in range(0, 200, 7):
        data = rng.randbytes(n)
        assert checksum(data) == scapy_all.checksum(data)


# --- VirtioNetHdr -------------------------------------------------------------------------------


def test_hdr_pack_unpack_roundtrip_10_and_12() -> None:
    h = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 52, 1448, 20, 16)
    raw = h.pack()
    assert raw == bytes([1, 1]) + struct.pack("<HHHH", 52, 1448, 20, 16)
    assert len(raw) == 10 == h.size
    assert VirtioNetHdr.unpack(raw + b"pkt") == h
    h12 = VirtioNetHdr(0, 0, 0, 0, 0, 0, 3)
    assert len(h12.pack()) == 12 and VirtioNetHdr.unpack(h12.pack(), hdr_size=12) == h12
    assert VirtioNetHdr.unpack(bytes(10)) == VirtioNetHdr()
    ecn = VirtioNetHdr(1, VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN, 60, 1400, 40, 16)
    assert VirtioNetHdr.unpack(ecn.pack()) == ecn
    dv = VirtioNetHdr(VIRTIO_NET_HDR_F_DATA_VALID)
    assert VirtioNetHdr.unpack(dv.pack()) == dv


@pytest.mark.parametrize("raw, hdr_size", [
    (b"", 10),
    (bytes(9), 10),
    (bytes(11), 12),
    (bytes(10), 8),
    (bytes([8]) + bytes(9), 10),  # unknown flag
    (bytes([0, 2]) + bytes(8), 10),  # unknown gso type
    (bytes([0, 6]) + bytes(8), 10),
    (bytes([0, 0x80]) + bytes(8), 10),  # ECN without TCP
    (bytes([0, 0x85]) + bytes(8), 10),
    (bytes([1, 1]) + bytes(8), 10),  # gso_size 0 with GSO
])
def test_hdr_unpack_malformed(raw: bytes, hdr_size: int) -> None:
    with pytest.raises(OffloadError):
        VirtioNetHdr.unpack(raw, hdr_size=hdr_size)


@pytest.mark.parametrize("kw", [{"flags": 256}, {"gso_type": -1}, {"gso_size": 65536}, {"csum_start": 1.5},
                                {"num_buffers": 70000}])
def test_hdr_rejects_out_of_range(kw: dict[str, object]) -> None:
    with pytest.raises(OffloadError):
        VirtioNetHdr(**kw)  # type: ignore[arg-type]


def test_offload_error_is_value_error() -> None:
    assert issubclass(OffloadError, ValueError)


# --- segment: GSO_NONE ----------------------------------------------------------------------------


def test_gso_none_without_csum_is_unchanged() -> None:
    pkt = bytes(IP(src=SRC4, dst=DST4) / scapy_all.ICMP() / Raw(b"x" * 33))
    assert segment(with_hdr(pkt)) == [pkt]
    assert segment(bytes(12) + pkt, hdr_size=12) == [pkt]
    assert segment(memoryview(bytearray(with_hdr(pkt)))) == [pkt]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("n", [0, 1, 2, 99, 1400, 8000])
def test_gso_none_needs_csum_tcp_and_udp(version: int, n: int) -> None:
    payload = random.Random(n).randbytes(n)
    for pkt in (tcp_super(version, payload), udp_super(version, payload)):
        segs = segment(as_kernel_read(pkt, VIRTIO_NET_HDR_GSO_NONE, 0))
        assert len(segs) == 1
        out = segs[0]
        assert l4_valid(out)
        # Same as scapy's packet except that, like the kernel, a computed 0 is written as 0xffff.
        csum_at = (20 if version == 4 else 40) + (16 if (pkt[9] if version == 4 else pkt[6]) == 6 else 6)
        assert out[:csum_at] == pkt[:csum_at] and out[csum_at + 2:] == pkt[csum_at + 2:]
        if out != pkt:
            assert out[csum_at:csum_at + 2] == b"\xff\xff" and pkt[csum_at:csum_at + 2] == b"\0\0"


def test_gso_none_csum_out_of_range() -> None:
    pkt = udp_super(4, b"abc")
    bad = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, len(pkt) - 1, 0).pack() + pkt
    with pytest.raises(OffloadError):
        segment(bad)
    with pytest.raises(OffloadError):
        segment(bytes(10))


# --- segment: TSO / USO ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("gso_size, n", [(1448, 65535 - 20 - 52 - 20), (1380, 55200), (1000, 20000),
                                         (536, 5000), (1448, 1448), (1448, 100), (7, 50)])
def test_tso_against_scapy(version: int, gso_size: int, n: int) -> None:
    if version == 6:
        n = min(n, 65535 - 32)
    payload = os.urandom(n)
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (12345, 678))]
    pkt = tcp_super(version, payload, options=opts, flags="FPA" if n % 2 else "PA")
    gso = VIRTIO_NET_HDR_GSO_TCPV4 if version == 4 else VIRTIO_NET_HDR_GSO_TCPV6
    segs = segment(as_kernel_read(pkt, gso, gso_size))
    check_tcp_segments(pkt, segs, gso_size)


def test_tso_cwr_ecn_seq_and_id_wrap() -> None:
    payload = os.urandom(10000)
    pkt = tcp_super(4, payload, seq=0xFFFFF000, ip_id=0xFFFE, flags="CEA")
    segs = segment(as_kernel_read(pkt, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, 1460))
    check_tcp_segments(pkt, segs, 1460)
    assert int(IP(segs[0])[TCP].flags) & 0x80 and not int(IP(segs[1])[TCP].flags) & 0x80
    assert IP(segs[2]).id == 0


def test_tso_trusts_ip_length_not_hdr_len_and_12_byte_header() -> None:
    payload = os.urandom(3000)
    pkt = tcp_super(6, payload)
    segs = segment(as_kernel_read(pkt, VIRTIO_NET_HDR_GSO_TCPV6, 1000, hdr_size=12), hdr_size=12)
    check_tcp_segments(pkt, segs, 1000)
    segs2 = segment(as_kernel_read(pkt, VIRTIO_NET_HDR_GSO_TCPV6, 1000, bogus_hdr_len=False))
    assert segs2 == segs


def test_tso_ipv4_with_ip_options() -> None:
    payload = os.urandom(4000)
    pkt = bytes(IP(src=SRC4, dst=DST4, flags="DF", options=[scapy_all.IPOption_RR(length=11)])
                / TCP(sport=1, dport=2, flags="A", seq=5) / Raw(payload))
    assert pkt[0] & 15 > 5
    segs = segment(as_kernel_read(pkt, VIRTIO_NET_HDR_GSO_TCPV4, 1500))
    check_tcp_segments(pkt, segs, 1500)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("gso_size, n", [(1000, 20000), (1472, 64000), (1200, 1199), (1, 9), (999, 1998)])
def test_uso_against_scapy(version: int, gso_size: int, n: int) -> None:
    payload = os.urandom(n)
    pkt = udp_super(version, payload)
    segs = segment(as_kernel_read(pkt, VIRTIO_NET_HDR_GSO_UDP_L4, gso_size))
    check_udp_segments(pkt, segs, gso_size)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(version=st.sampled_from([4, 6]), proto=st.sampled_from(["tcp", "udp"]),
       gso_size=st.integers(1, 9000), n=st.integers(0, 20000), seed=st.integers(0, 2**32 - 1),
       nopts=st.integers(0, 10))
def test_segment_random(version: int, proto: str, gso_size: int, n: int, seed: int, nopts: int) -> None:
    rng = random.Random(seed)
    payload = rng.randbytes(min(n, 24 * gso_size))  # scapy is slow: at most 24 segments
    if proto == "tcp":
        opts = [("NOP", None)] * (nopts * 4)  # up to 40 bytes of options
        pkt = tcp_super(version, payload, seq=rng.getrandbits(32), ip_id=rng.getrandbits(16), options=opts,
                        flags=rng.choice(["A", "PA", "FA", "FPA", "CA", "CEA", "EA"]))
        gso = VIRTIO_NET_HDR_GSO_TCPV4 if version == 4 else VIRTIO_NET_HDR_GSO_TCPV6
        check_tcp_segments(pkt, segment(as_kernel_read(pkt, gso, gso_size)), gso_size)
    else:
        pkt = udp_super(version, payload, ip_id=rng.getrandbits(16))
        check_udp_segments(pkt, segment(as_kernel_read(pkt, VIRTIO_NET_HDR_GSO_UDP_L4, gso_size)), gso_size)


def test_segment_rejects_inconsistent_inputs() -> None:
    tcp4 = tcp_super(4, b"x" * 3000)
    tcp6 = tcp_super(6, b"x" * 3000)
    udp4 = udp_super(4, b"x" * 3000)
    read = as_kernel_read
    bad = [
        read(tcp4, VIRTIO_NET_HDR_GSO_TCPV6, 1000),  # v4 packet, v6 type
        read(tcp6, VIRTIO_NET_HDR_GSO_TCPV4, 1000),
        read(udp4, VIRTIO_NET_HDR_GSO_TCPV4, 1000),  # UDP packet, TCP type
        read(tcp4, VIRTIO_NET_HDR_GSO_UDP_L4, 1000),
        read(udp4, VIRTIO_NET_HDR_GSO_UDP, 1000),  # UFO
        read(tcp4, VIRTIO_NET_HDR_GSO_TCPV4, 1000)[:10 + 30],  # truncated below IP total length
        read(tcp4, VIRTIO_NET_HDR_GSO_TCPV4, 1000)[:10 + 1500],
        read(tcp6, VIRTIO_NET_HDR_GSO_TCPV6, 1000)[:10 + 50],
        VirtioNetHdr(1, 1, 0, 1000, 20, 16).pack() + b"\x60" + tcp4[1:],  # version mismatch
        VirtioNetHdr(1, 1, 0, 1000, 24, 16).pack() + tcp4,  # csum_start not the L4 header
        VirtioNetHdr(1, 1, 0, 1000, 20, 6).pack() + tcp4,  # csum_offset not TCP's
        VirtioNetHdr(1, 1, 0, 1000, 20, 16).pack() + b"\x70" + tcp4[1:],  # IP version 7
        VirtioNetHdr(1, 1, 0, 1000, 20, 16).pack() + tcp4[:6] + b"\x20" + tcp4[7:],  # MF fragment
        VirtioNetHdr(1, 1, 0, 1000, 20, 16).pack() + tcp4[:32] + b"\x40" + tcp4[33:],  # TCP doff 16
        VirtioNetHdr(1, 1, 0, 1000, 40, 16).pack() + tcp6[:4] + b"\0\0" + tcp6[6:],  # IPv6 jumbo
    ]
    for b in bad:
        with pytest.raises(OffloadError):
            segment(b)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([10, 12]))
def test_segment_random_bytes_only_offload_error(data: bytes, hdr_size: int) -> None:
    try:
        segment(data, hdr_size=hdr_size)
    except OffloadError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 40), st.integers(0, 255))
def test_segment_frames_random_and_mutated_only_offload_error(data: bytes, at: int, byte: int) -> None:
    """Random buffers, and a valid tap TSO read with one byte changed, as a tap read: segment(l2=True)
    returns frames or raises OffloadError, nothing else."""
    good = bytearray(as_kernel_read(tcp_super(4, bytes(3000)), VIRTIO_NET_HDR_GSO_TCPV4, 1000,
                                    bogus_hdr_len=False))
    good[16:16] = b"\0" * 12 + b"\x08\x00"  # an Ethernet header after the 10-byte virtio header...
    good[6:8] = (20 + 14).to_bytes(2, "little")  # ...counted in csum_start
    good[at] = byte
    for buf in (data, bytes(good)):
        try:
            segment(buf, l2=True)
        except OffloadError:
            pass
    _, short, bad = split_reads([data, bytes(good)], l2=True)
    assert short + bad <= 2


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10 + 3100), st.integers(0, 255), st.integers(0, 10 + 3100), st.sampled_from([0, 1, 2]))
def test_segment_mutated_reads_only_offload_error(cut: int, byte: int, at: int, which: int) -> None:
    pkt = [tcp_super(4, b"y" * 3000), tcp_super(6, b"y" * 3000), udp_super(4, b"y" * 3000)][which]
    gso = [VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4][which]
    b = bytearray(as_kernel_read(pkt, gso, 1000))
    if at < len(b):
        b[at] = byte
    try:
        segs = segment(bytes(b[:cut]))
    except OffloadError:
        return
    assert all(isinstance(s, bytes) for s in segs)


# --- coalesce -------------------------------------------------------------------------------------


def vnet(buf: bytes) -> VirtioNetHdr:
    return VirtioNetHdr.unpack(buf)


def tcp_stream(version: int, sizes: list[int], *, seq: int = 1000, flags: str = "A", ip_id: int = 7,
               **kw: object) -> list[bytes]:
    """In-order segments of one flow, IPv4 IDs counting up as Linux's do."""
    out = []
    for i, n in enumerate(sizes):
        out.append(tcp_super(version, os.urandom(n), seq=seq, flags=flags, ip_id=ip_id + i,
                             **kw))  # type: ignore[arg-type]
        seq = (seq + n) & 0xFFFFFFFF
    return out


def payloads(pkts: list[bytes]) -> bytes:
    return b"".join(bytes((IP(p) if p[0] >> 4 == 4 else IPv6(p))[TCP].payload) for p in pkts)


def check_super(buf: bytes, parts: list[bytes]) -> None:
    """A coalesced write is a valid GSO read: segment() must give back exactly ``parts``."""
    h = vnet(buf)
    pkt = buf[10:]
    version = pkt[0] >> 4
    assert h.flags == VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert h.gso_type == (VIRTIO_NET_HDR_GSO_TCPV4 if version == 4 else VIRTIO_NET_HDR_GSO_TCPV6)
    assert h.csum_start == (20 if version == 4 else 40) and h.csum_offset == 16
    assert h.gso_size == len(payloads(parts[:1]))
    # The checksum field holds the pseudo-header sum: finishing it (what the kernel does) gives a valid
    # checksum over the whole super-packet.
    finished = segment(VirtioNetHdr(1, 0, 0, 0, h.csum_start, h.csum_offset).pack() + pkt)[0]
    assert l4_valid(finished)
    assert scapy_recomputed(finished)[:h.csum_start] == pkt[:h.csum_start]  # IP header incl. checksum
    assert segment(buf) == parts


@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_roundtrip_from_segment(version: int) -> None:
    payload = os.urandom(60000)
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    pkt = tcp_super(version, payload, options=opts, flags="PA")
    gso = VIRTIO_NET_HDR_GSO_TCPV4 if version == 4 else VIRTIO_NET_HDR_GSO_TCPV6
    segs = segment(as_kernel_read(pkt, gso, 1388))
    out = coalesce(segs)
    assert len(out) == 1
    check_super(out[0], segs)
    assert len(out[0]) == 10 + len(pkt)


def test_coalesce_12_byte_header() -> None:
    segs = tcp_stream(4, [1000] * 5)
    out = coalesce(segs, hdr_size=12)
    assert len(out) == 1 and out[0][10:12] == b"\0\0"
    assert segment(out[0], hdr_size=12) == segs


def test_coalesce_passthrough_has_zero_header() -> None:
    icmp = bytes(IP(src=SRC4, dst=DST4) / scapy_all.ICMP())
    syn = tcp_super(4, b"", flags="S")
    one = tcp_super(4, b"data", flags="PA")
    out = coalesce([icmp, syn, one])
    assert out == [bytes(10) + icmp, bytes(10) + syn, bytes(10) + one]
    assert coalesce([]) == []
    assert coalesce([b"", b"\x45"]) == [bytes(10), bytes(10) + b"\x45"]


def test_coalesce_max_size_and_psh_and_short_last() -> None:
    segs = tcp_stream(4, [1400] * 60)
    out = coalesce(segs)
    assert [len(without_hdr(o)) for o in out] == [20 + 20 + 1400 * 46, 20 + 20 + 1400 * 14]
    check_super(out[0], segs[:46])
    check_super(out[1], segs[46:])
    assert len(coalesce(segs, max_size=40 + 1400 * 10)) == 6
    # PSH ends a super-packet (and is kept on it); a short segment ends it too.
    a = tcp_stream(4, [1000, 1000, 1000, 1000], flags="A")
    b = tcp_stream(4, [1000], flags="PA", seq=5000, ip_id=11)
    c = tcp_stream(4, [1000, 500, 1000], seq=6000)
    out = coalesce(a + b + c)
    assert len(out) == 3
    check_super(out[0], a + b)
    assert IP(out[0][10:])[TCP].flags == "PA"
    check_super(out[1], c[:2])
    assert out[2] == bytes(10) + c[2]
    # A bigger segment after the first one cannot join.
    d = tcp_stream(4, [500, 1000])
    assert coalesce(d) == [bytes(10) + d[0], bytes(10) + d[1]]


def test_coalesce_interleaved_flows_keep_per_flow_order() -> None:
    f1 = tcp_stream(4, [1000] * 6)
    f2 = [tcp_super(4, os.urandom(800), seq=s, window=999, ip_id=s // 800, sport=40001,
                     flags="A") for s in range(0, 4000, 800)]
    f3 = tcp_stream(6, [1200] * 4)
    mixed = []
    for i in range(6):
        mixed.append(f1[i])
        if i < len(f2):
            mixed.append(f2[i])
        if i < len(f3):
            mixed.append(f3[i])
    out = coalesce(mixed)
    assert len(out) == 3
    check_super(out[0], f1)
    check_super(out[1], f2)
    check_super(out[2], f3)


def test_coalesce_breaks_that_preserve_order() -> None:
    s = tcp_stream(4, [1000] * 6)
    # A pure ACK of the same flow in the middle: [s0 s1] [ack] [s2..s5]
    ack = tcp_super(4, b"", flags="A", seq=3000)
    out = coalesce(s[:2] + [ack] + s[2:])
    assert len(out) == 3
    check_super(out[0], s[:2])
    assert out[1] == bytes(10) + ack
    check_super(out[2], s[2:])
    # Sequence gap (loss) starts a new super-packet.
    out = coalesce(s[:2] + s[3:])
    assert len(out) == 2
    check_super(out[0], s[:2])
    check_super(out[1], s[3:])
    # Retransmission (out of order) is not merged backwards.
    out = coalesce(s[:3] + [s[1]] + s[3:])
    assert [vnet(o).gso_type for o in out] == [1, 0, 1]
    assert segment(out[0]) + segment(out[1]) + segment(out[2]) == s[:3] + [s[1]] + s[3:]


@pytest.mark.parametrize("change", ["ack", "window", "ttl", "tos", "opts", "nodf", "syn", "fin", "rst", "urg",
                                    "cwr", "ipopts", "trailing", "ece"])
def test_coalesce_refuses_mismatch(change: str) -> None:
    base = tcp_stream(4, [1000] * 3)
    p = IP(tcp_super(4, os.urandom(1000), seq=4000))
    if change == "ack":
        p[TCP].ack += 1
    elif change == "window":
        p[TCP].window += 1
    elif change == "ttl":
        p[IP].ttl -= 1
    elif change == "tos":
        p[IP].tos = 4
    elif change == "opts":
        p[TCP].options = [("NOP", None)] * 4
    elif change == "nodf":
        p[IP].flags = 0
    elif change in ("syn", "fin", "rst", "urg", "cwr", "ece"):
        p[TCP].flags = "A" + {"syn": "S", "fin": "F", "rst": "R", "urg": "U", "cwr": "C", "ece": "E"}[change]
    elif change == "ipopts":
        p[IP].options = [scapy_all.IPOption_NOP()] * 4
    del p[IP].chksum, p[IP].len, p[TCP].chksum
    if change == "ipopts":
        del p[IP].ihl
    q = bytes(p)
    if change == "trailing":
        q += b"\0" * 3
    after = tcp_super(4, os.urandom(1000), seq=5000)
    out = coalesce(base + [q, after])
    check_super(out[0], base)
    assert out[1] == bytes(10) + q
    merged_after = out[2:]
    # Nothing after the odd packet may be merged into the earlier super-packet.
    assert len(merged_after) == 1 and merged_after[0] == bytes(10) + after


def test_coalesce_ece_flows_merge_among_themselves() -> None:
    s = tcp_stream(4, [1000] * 4, flags="EA")
    out = coalesce(s)
    assert len(out) == 1
    check_super(out[0], s)


def test_coalesce_verify_csum() -> None:
    s = [bytearray(x) for x in tcp_stream(4, [1000] * 5)]
    s[2][-1] ^= 0xFF  # payload corrupted after the checksum was computed
    pk = [bytes(x) for x in s]
    assert len(coalesce(pk)) == 1  # default: trust the AEAD, as kernel WireGuard does
    out = coalesce(pk, verify_csum=True)
    assert len(out) == 3 and out[1] == bytes(10) + pk[2]
    check_super(out[0], pk[:2])
    check_super(out[2], pk[3:])


@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_udp(version: int) -> None:
    dgrams = [udp_super(version, os.urandom(1200), ip_id=i) for i in range(10)] + [
        udp_super(version, b"end", ip_id=10)]
    assert coalesce(dgrams) == [bytes(10) + d for d in dgrams]  # off by default
    out = coalesce(dgrams, udp=True)
    assert len(out) == 1
    h = vnet(out[0])
    l4 = 20 if version == 4 else 40
    assert (h.flags, h.gso_type, h.gso_size, h.csum_start, h.csum_offset, h.hdr_len) == (
        1, VIRTIO_NET_HDR_GSO_UDP_L4, 1200, l4, 6, l4 + 8)
    finished = segment(VirtioNetHdr(1, 0, 0, 0, l4, 6).pack() + out[0][10:])[0]
    assert l4_valid(finished)
    segs = segment(out[0])
    if version == 4:  # segment() numbers IPv4 IDs from the first, like the kernel
        assert [IP(s).id for s in segs] == list(range(11))
    assert segs == dgrams
    many = [udp_super(4, b"z" * 100, ip_id=i) for i in range(UDP_MAX_SEGMENTS + 5)]
    out = coalesce(many, udp=True)
    assert [vnet(o).gso_type for o in out] == [VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_GSO_UDP_L4]
    assert segment(out[0]) + segment(out[1]) == many


def test_coalesce_udp_refusals() -> None:
    a = [udp_super(4, os.urandom(500), ip_id=i) for i in range(3)]
    nocsum = bytearray(udp_super(4, os.urandom(500), ip_id=3))
    nocsum[26:28] = b"\0\0"
    big = udp_super(4, os.urandom(600), ip_id=4)
    out = coalesce(a + [bytes(nocsum), big], udp=True)
    assert len(out) == 3
    assert segment(out[0]) == a
    assert out[1:] == [bytes(10) + bytes(nocsum), bytes(10) + big]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(version=st.sampled_from([4, 6]), n=st.integers(1, 64000), mss=st.integers(100, 9000),
       drop=st.integers(0, 80), seed=st.integers(0, 2**32 - 1))
def test_coalesce_segment_roundtrip_random(version: int, n: int, mss: int, drop: int, seed: int) -> None:
    """segment(super) -> drop one segment -> coalesce -> segment == the same packets, in order."""
    rng = random.Random(seed)
    pkt = tcp_super(version, rng.randbytes(n), seq=rng.getrandbits(32), flags="PA",
                    options=[("MSS", 1460)] if rng.random() < 0.5 else None)
    gso = VIRTIO_NET_HDR_GSO_TCPV4 if version == 4 else VIRTIO_NET_HDR_GSO_TCPV6
    segs = segment(as_kernel_read(pkt, gso, mss))
    if drop < len(segs) and len(segs) > 1:
        del segs[drop]
    out = coalesce(segs)
    again = [s for o in out for s in segment(o)]
    assert again == segs
    for o in out:
        h = vnet(o)
        if h.gso_type != VIRTIO_NET_HDR_GSO_NONE:
            assert len(o) - 10 <= MAX_SUPER_PACKET


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=8), st.booleans(), st.booleans())
def test_coalesce_random_bytes_never_raises(pkts: list[bytes], udp: bool, verify: bool) -> None:
    out = coalesce(pkts, udp=udp, verify_csum=verify)
    assert out == [bytes(10) + p for p in pkts] or len(out) <= len(pkts)


def test_coalesce_bad_arguments() -> None:
    with pytest.raises(ValueError):
        coalesce([], hdr_size=11)
    with pytest.raises(ValueError):
        coalesce([], max_size=70000)


# --- helpers --------------------------------------------------------------------------------------


def test_with_and_without_hdr() -> None:
    pkt = b"\x45" + bytes(19)
    assert with_hdr(pkt) == bytes(10) + pkt
    assert with_hdr(pkt, hdr_size=12) == bytes(12) + pkt
    h = VirtioNetHdr(1, 0, 0, 0, 20, 16)
    assert with_hdr(pkt, h) == h.pack() + pkt
    assert without_hdr(with_hdr(pkt)) == pkt
    assert without_hdr(with_hdr(pkt, hdr_size=12), hdr_size=12) == pkt
    with pytest.raises(OffloadError):
        with_hdr(pkt, h, hdr_size=12)
    with pytest.raises(OffloadError):
        without_hdr(b"short")


def test_segment_accepts_other_buffer_shapes() -> None:
    pkt = tcp_super(4, os.urandom(3000))
    read = as_kernel_read(pkt, VIRTIO_NET_HDR_GSO_TCPV4, 1000)
    want = segment(read)
    assert segment(bytearray(read)) == want == segment(memoryview(read))
    padded = read + b"\0" * (-len(read) % 2)  # a trailing byte beyond the IP length is ignored
    assert segment(memoryview(padded).cast("H")) == want
    assert segment(memoryview(padded).cast("B", (2, len(padded) // 2))) == want


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), nflows=st.integers(1, 4), npk=st.integers(1, 14))
def test_coalesce_random_mix_keeps_every_flow_intact(seed: int, nflows: int, npk: int) -> None:
    """Several flows, randomly interleaved and disturbed (loss, duplicates, reordering, pure ACKs, ACK-number
    changes, PSH, short segments, ICMP): after coalesce -> segment every flow has exactly its input packets,
    in input order.  (IPv4 IDs count up per flow in input order, as merged IDs are renumbered from the first.)
    """
    rng = random.Random(seed)
    flows: dict[int, list[bytes]] = {}
    for f in range(nflows):
        version = rng.choice([4, 6])
        mss = rng.choice([100, 200, 333])
        seq, ack, ip_id = rng.getrandbits(32), 55, rng.getrandbits(16)
        pk: list[bytes] = []
        for _ in range(npk):
            ev = rng.random()
            n = mss if ev > 0.15 else rng.randint(0, mss)
            flags = "PA" if rng.random() < 0.1 else "A"
            if rng.random() < 0.05:
                ack += 1000
            if ev < 0.05 and pk:
                pkt = pk[rng.randrange(len(pk))]  # duplicate of an earlier packet (retransmission)
                pk.append(tcp_super(version, IP(pkt)[TCP].load if version == 4 and Raw in IP(pkt) else b"x",
                                    seq=seq, ip_id=ip_id, sport=41000 + f, flags="A", ack=ack))
            else:
                pk.append(tcp_super(version, rng.randbytes(n), seq=seq, ip_id=ip_id, sport=41000 + f,
                                    flags=flags, ack=ack))
            ip_id = (ip_id + 1) & 0xFFFF
            seq = (seq + (n if rng.random() > 0.05 else n + 7)) & 0xFFFFFFFF  # sometimes a gap
        flows[41000 + f] = pk
    icmp = [bytes(IP(src=SRC4, dst=DST4) / scapy_all.ICMP(seq=i)) for i in range(3)]
    # Interleave preserving each flow's order.
    queues = [list(v) for v in flows.values()] + [list(icmp)]
    mixed: list[bytes] = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        mixed.append(q.pop(0))
    out = coalesce(mixed)
    assert len(out) <= len(mixed)
    got: dict[int, list[bytes]] = {k: [] for k in flows}
    other: list[bytes] = []
    for o in out:
        for s in segment(o):
            p = IP(s) if s[0] >> 4 == 4 else IPv6(s)
            if TCP in p:
                got[p[TCP].sport].append(s)
            else:
                other.append(s)
    assert got == flows
    assert other == icmp


# --- Ethernet frames (tap): segment(l2=True), coalesce/gro(l2=...), gro_frames, split_reads ---------------

Ether, Dot1Q, Dot1AD, ARP = scapy_all.Ether, scapy_all.Dot1Q, scapy_all.Dot1AD, scapy_all.ARP
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def eth_head(version: int, tags: int, *, src: str = MAC_A, dst: str = MAC_B) -> bytes:
    """An Ethernet header for an IP packet with 0, 1 (802.1Q) or 2 (802.1ad + 802.1Q) VLAN tags, by scapy."""
    e = Ether(src=src, dst=dst)
    if tags == 1:
        e = e / Dot1Q(vlan=100, prio=3)
    elif tags == 2:
        e = e / Dot1AD(vlan=7) / Dot1Q(vlan=100)
    probe = bytes(e / (IP() if version == 4 else IPv6()))
    return probe[:14 + 4 * tags]


def as_tap_read(head: bytes, pkt: bytes, gso_type: int, gso_size: int) -> bytes:
    """A vnet-hdr tap read: the kernel counts ``csum_start`` from the start of the frame."""
    r = as_kernel_read(pkt, gso_type, gso_size, bogus_hdr_len=False)
    h = VirtioNetHdr.unpack(r)
    h2 = VirtioNetHdr(h.flags, h.gso_type, h.hdr_len + len(head), h.gso_size, h.csum_start + len(head),
                      h.csum_offset)
    return h2.pack() + head + r[10:]


def frame_recomputed(frame: bytes) -> bytes:
    """scapy's rebuild of a frame with every IP/TCP/UDP checksum and length deleted."""
    p = Ether(frame)
    for layer, fields in ((IP, ("chksum", "len")), (IPv6, ("plen",)), (TCP, ("chksum",)),
                          (UDP, ("chksum", "len"))):
        if layer in p:
            for f in fields:
                delattr(p[layer], f)
    return bytes(p)


@pytest.mark.parametrize("tags", [0, 1, 2])
@pytest.mark.parametrize(("version", "gso_size", "n"), [(4, 1314, 30000), (6, 1294, 65000 - 60), (4, 1000, 999)])
def test_tso_frames_against_scapy(tags: int, version: int, gso_size: int, n: int) -> None:
    head = eth_head(version, tags)
    pkt = tcp_super(version, os.urandom(n), flags="FPA",
                    options=[("NOP", None), ("NOP", None), ("Timestamp", (5, 6))])
    gso = VIRTIO_NET_HDR_GSO_TCPV4 if version == 4 else VIRTIO_NET_HDR_GSO_TCPV6
    frames = segment(as_tap_read(head, pkt, gso, gso_size), l2=True)
    for f in frames:
        assert f[:len(head)] == head  # MACs and tags copied in front of every segment
        assert frame_recomputed(f) == f  # scapy agrees on every length and checksum
    # the IP packets inside are what the tun segmenter makes of the same super-packet
    check_tcp_segments(pkt, [f[len(head):] for f in frames], gso_size)
    assert [f[len(head):] for f in frames] == segment(as_kernel_read(pkt, gso, gso_size))


@pytest.mark.parametrize("tags", [0, 1])
@pytest.mark.parametrize("version", [4, 6])
def test_uso_and_csum_frames_against_scapy(tags: int, version: int) -> None:
    head = eth_head(version, tags)
    pkt = udp_super(version, os.urandom(5000))
    frames = segment(as_tap_read(head, pkt, VIRTIO_NET_HDR_GSO_UDP_L4, 1200), l2=True)
    assert all(f[:len(head)] == head and frame_recomputed(f) == f for f in frames)
    check_udp_segments(pkt, [f[len(head):] for f in frames], 1200)
    # GSO_NONE + NEEDS_CSUM: the checksum is finished at csum_start counted from the frame's start
    one = tcp_super(version, os.urandom(700))
    (f,) = segment(as_tap_read(head, one, VIRTIO_NET_HDR_GSO_NONE, 0), l2=True)
    assert f == head + one and frame_recomputed(f) == f


def test_segment_frames_rejects_what_it_cannot_cut() -> None:
    pkt = tcp_super(4, os.urandom(3000))
    ok = as_tap_read(eth_head(4, 0), pkt, VIRTIO_NET_HDR_GSO_TCPV4, 1000)
    assert len(segment(ok, l2=True)) == 3
    bad = {
        "arp": ok[:22] + b"\x08\x06" + ok[24:],
        "ipv6 type, ipv4 packet": ok[:22] + b"\x86\xdd" + ok[24:],
        "runt": ok[:20],
        "three tags": VirtioNetHdr.unpack(ok).pack()[:10] + ok[10:22] + b"\x81\x00\x00\x01" * 3 + ok[22:],
        "csum_start without the Ethernet header": as_kernel_read(pkt, VIRTIO_NET_HDR_GSO_TCPV4, 1000,
                                                                 bogus_hdr_len=False)[:10] + ok[10:],
    }
    for what, buf in bad.items():
        with pytest.raises(OffloadError):
            segment(buf, l2=True)
            pytest.fail(what)
    with pytest.raises(OffloadError):
        l2_header_len(b"\x00" * 12 + b"\x88\xb5")


@pytest.mark.parametrize("tags", [0, 1, 2])
@pytest.mark.parametrize("version", [4, 6])
def test_gro_frames_roundtrip_with_segment(tags: int, version: int) -> None:
    """Frames of one flow coalesce into one super-frame that segment(l2=True), as the kernel would,
    gives back exactly; the virtio header counts the Ethernet header in hdr_len and csum_start."""
    head = eth_head(version, tags)
    segs = tcp_stream(version, [1300] * 20 + [500], options=[("NOP", None), ("NOP", None),
                                                              ("Timestamp", (1, 2))])
    frames = [head + p for p in segs]
    for fn in (gro_frames, lambda fs: coalesce([f[len(head):] for f in fs], l2=head)):
        (buf,) = fn(frames)
        h = vnet(buf)
        l4 = 20 if version == 4 else 40
        hl = l4 + 32
        assert (h.flags, h.csum_start, h.csum_offset, h.gso_size) == (
            VIRTIO_NET_HDR_F_NEEDS_CSUM, len(head) + l4, 16, 1300)
        assert h.hdr_len == len(head) + hl
        assert buf[10:10 + len(head)] == head
        assert segment(buf, l2=True) == frames
        # finishing the partial checksum over the whole super-frame gives a valid TCP checksum
        finished = segment(VirtioNetHdr(1, 0, 0, 0, h.csum_start, h.csum_offset).pack() + buf[10:], l2=True)[0]
        assert l4_valid(finished[len(head):])


def test_gro_frames_mixed_batch_keeps_every_frame_in_flow_order() -> None:
    """ARP, two flows behind different MACs and a VLAN tag, interleaved: every output is a zero-header
    frame or a super-frame, and segmenting the outputs gives every frame of each flow in order."""
    rng = random.Random(5)
    arp = bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="100.64.0.2", pdst="100.64.0.1"))
    flows = {
        "a": [eth_head(4, 0) + p for p in tcp_stream(4, [1200] * 12)],
        "b": [eth_head(4, 1, src="02:00:00:00:00:0c") + p for p in tcp_stream(4, [900] * 9, sport=40001)],
        "c": [eth_head(6, 0, dst="02:00:00:00:00:0d") + p for p in tcp_stream(6, [1100] * 7 + [10])],
    }
    queues = {k: list(v) for k, v in flows.items()}
    batch: list[bytes] = []
    while any(queues.values()):
        k = rng.choice([k for k, v in queues.items() if v])
        batch += [queues[k].pop(0) for _ in range(min(rng.randint(1, 5), len(queues[k])))]
        if rng.random() < 0.3:
            batch.append(arp)
    out = gro_frames(batch)
    assert len(out) < len(batch)
    got = [f for buf in out for f in segment(buf, l2=True)]
    assert sorted(got) == sorted(batch)
    for frames in flows.values():
        assert [f for f in got if f in frames] == frames
    assert got.count(arp) == batch.count(arp)


def test_split_reads_bulk_and_mixed() -> None:
    head = eth_head(4, 0)
    plain = [bytes(10) + head + p for p in tcp_stream(4, [1000] * 5)]
    assert split_reads(plain, l2=True) == ([b[10:] for b in plain], 0, 0)
    sup = as_tap_read(head, tcp_super(4, os.urandom(4000)), VIRTIO_NET_HDR_GSO_TCPV4, 1000)
    frames, short, bad = split_reads(
        [plain[0], sup, b"\x01" * 8, b"\x00\x01" + sup[2:10] + b"\x00" * 30, plain[1]], l2=True)
    assert (short, bad) == (1, 1) and frames == [plain[0][10:], *segment(sup, l2=True), plain[1][10:]]
    assert split_reads([], l2=True) == ([], 0, 0)


def test_gro_frames_and_split_reads_bulk_equal_their_loops() -> None:
    """gro_frames' one-header batch and split_reads' all-plain batch (vpn.testlab.differential): random
    batches of one flow behind one header, of several flows and headers, with ARP frames, super-frames,
    short and garbage reads give what their loops give."""
    rng = random.Random(17)
    arp = bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="100.64.0.2", pdst="100.64.0.1"))
    heads = [eth_head(4, 0), eth_head(4, 1, src="02:00:00:00:00:0c"), eth_head(6, 2, dst="02:00:00:00:00:0d")]
    streams = {
        id(h): [h + p for p in tcp_stream(6 if h is heads[2] else 4, [1200] * 40, sport=40000 + k)]
        for k, h in enumerate(heads)
    }

    def frames(r: random.Random) -> list[bytes]:
        if r.random() < 0.5:  # one flow, one header: the bulk branch
            s = streams[id(r.choice(heads))]
            i = r.randrange(len(s))
            return s[i:i + r.randrange(1, 20)]
        out: list[bytes] = []
        for _ in range(r.randrange(0, 6)):
            s = streams[id(r.choice(heads))]
            i = r.randrange(len(s))
            out += s[i:i + r.randrange(1, 6)]
            if r.random() < 0.3:
                out.append(arp)
        return out

    batches = list(random_batches(frames, rng, 150))
    assert check_bulk_matches_loop(lambda b, bulk: gro_frames(b, bulk=bulk), batches) == 150
    sup = as_tap_read(heads[0], tcp_super(4, os.urandom(4000)), VIRTIO_NET_HDR_GSO_TCPV4, 1000)

    def reads(r: random.Random) -> list[bytes]:
        out = [bytes(10) + f for f in frames(r)]
        if out and r.random() < 0.3:
            odd = r.choice([sup, b"\x01" * 8, b"\x00\x01" + sup[2:10] + bytes(30), bytes(10)])
            out.insert(r.randrange(len(out)), odd)
        return out

    assert check_bulk_matches_loop(lambda b, bulk: split_reads(b, l2=True, bulk=bulk),
                                   random_batches(reads, rng, 150)) == 150
