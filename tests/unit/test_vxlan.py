"""Unit tests for ``tunnel.encap.vxlan`` (RFC 7348): golden packets from the Linux kernel, a naive RFC 1071
checksum as the reference, error tables and a fuzz loop.

The golden files in tests/vectors/ were captured from the kernel's own vxlan device (see
tests/netns/test_vxlan_kernel.py, which also repeats the comparison live), so these tests do not check the
code against itself.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.encap.vxlan import (
    VXLAN_FLAG_I,
    VXLAN_HEADER_SIZE,
    VXLAN_HEADROOM_IPV4,
    VXLAN_HEADROOM_IPV6,
    VXLAN_PORT,
    VXLAN_VNI_MAX,
    VxlanError,
    decap_ip,
    decap_ip_batch,
    encap_ip,
    encap_ip_batch,
    flow_src_port,
    mtu_for_tap,
    pack_header,
    unpack_header,
)
from vpn.testlab.differential import check_bulk_matches_loop
from vpn.testlab.packets import TCP, UDP, eth, ipv4, ipv6, reference_checksum, tcp, udp

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
SRC4, DST4 = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
SRC6, DST6 = bytes.fromhex("fd000018" + "00" * 11 + "01"), bytes.fromhex("fd000018" + "00" * 11 + "02")
FRAME = bytes.fromhex("02aabbccddee 021122334455 0800") + bytes(range(50))


def load_hex(name: str) -> bytes:
    lines = (VECTORS / name).read_text().splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


def udp_checksum_ok(packet: bytes) -> bool:
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        udp = packet[ihl:]
        pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    else:
        udp = packet[40:]
        pseudo = packet[8:40] + struct.pack("!IxxxB", len(udp), 17)
    return reference_checksum(pseudo + udp) == 0


# -- constants and the 8-byte header ---------------------------------------------------------------------------
def test_constants_match_rfc_7348_and_linux() -> None:
    assert (VXLAN_HEADER_SIZE, VXLAN_FLAG_I, VXLAN_PORT) == (8, 0x08, 4789)
    assert (VXLAN_HEADROOM_IPV4, VXLAN_HEADROOM_IPV6) == (50, 70)


@pytest.mark.parametrize(
    "tunnel_mtu, ipv6, tags, expected",
    [(1420, False, 0, 1370), (1420, True, 0, 1350), (1420, False, 1, 1366), (1500, False, 0, 1450),
     (1280, True, 2, 1202), (118, False, 0, 68)],
)
def test_mtu_for_tap(tunnel_mtu: int, ipv6: bool, tags: int, expected: int) -> None:
    assert mtu_for_tap(tunnel_mtu, ipv6, vlan_tags=tags) == expected


@pytest.mark.parametrize("tunnel_mtu, ipv6, tags",
                         [(117, False, 0), (137, True, 0), (100, False, 0), (1420, False, -1)])
def test_mtu_for_tap_rejects_nonsense(tunnel_mtu: int, ipv6: bool, tags: int) -> None:
    with pytest.raises(ValueError):
        mtu_for_tap(tunnel_mtu, ipv6, vlan_tags=tags)


def test_header_golden_from_kernel() -> None:
    assert pack_header(0x123456) == load_hex("vxlan_header.hex") == bytes.fromhex("0800000012345600")


@pytest.mark.parametrize(
    "vni, wire",
    [(0, "0800000000000000"), (1, "0800000000000100"), (0xABCDEF, "08000000abcdef00"),
     (VXLAN_VNI_MAX, "08000000ffffff00")],
)
def test_pack_header_table(vni: int, wire: str) -> None:
    assert pack_header(vni).hex() == wire
    assert unpack_header(bytes.fromhex(wire) + b"payload", strict=True) == (vni, b"payload")


@pytest.mark.parametrize("vni", [-1, VXLAN_VNI_MAX + 1, 1 << 32])
def test_pack_header_rejects_out_of_range_vni(vni: int) -> None:
    with pytest.raises(ValueError):
        pack_header(vni)
    with pytest.raises(ValueError):
        encap_ip(FRAME, vni=vni, src_ip=SRC4, dst_ip=DST4)


@pytest.mark.parametrize(
    "wire, lenient, strict",
    [
        # (header hex, VNI with RFC 7348 "ignore on receipt", VNI with strict=True (Linux); None = VxlanError)
        ("08000000 00007b00", 123, 123),
        ("88000000 00007b00", 123, None),  # a reserved flag bit (GBP's G bit position)
        ("0c000000 00007b00", 123, None),  # GPE's P bit position
        ("08ffffff 00007b00", 123, None),  # the 24 reserved bits after the flags
        ("08000000 00007bff", 123, None),  # the last reserved byte
        ("00000000 00007b00", None, None),  # I flag clear
        ("f7ffffff ffffffff", None, None),  # everything but I
        ("080000", None, None),  # short
        ("", None, None),
    ],
)
def test_unpack_header_table(wire: str, lenient: int | None, strict: int | None) -> None:
    data = bytes.fromhex(wire) + (b"rest" if len(wire.replace(" ", "")) == 16 else b"")
    for expected, is_strict in ((lenient, False), (strict, True)):
        if expected is None:
            with pytest.raises(VxlanError):
                unpack_header(data, strict=is_strict)
        else:
            assert unpack_header(memoryview(data), strict=is_strict) == (expected, b"rest")


@given(st.integers(0, VXLAN_VNI_MAX), st.binary(max_size=64))
def test_header_roundtrip(vni: int, payload: bytes) -> None:
    assert unpack_header(pack_header(vni) + payload, strict=True) == (vni, payload)


# -- golden whole packets captured from the kernel ---------------------------------------------------------------
# name -> (VNI, IP header length, df, UDP checksum): the fields the kernel device was configured with; the IP ID
# and UDP source port are read from the packet, as the kernel picked them.
GOLDEN = {
    "vxlan_ipv4.hex": (0x123456, 20, False, True),  # kernel defaults: udpcsum, df unset
    "vxlan_ipv4_rfc.hex": (0x000042, 20, True, None),  # noudpcsum df set = our defaults
    "vxlan_ipv6.hex": (0xABCDEF, 40, None, None),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_packet_decap(name: str) -> None:
    packet = load_hex(name)
    vni, iphl, _df, _csum = GOLDEN[name]
    got = decap_ip(packet, strict=True, verify_checksum=True)
    assert got.vni == vni
    assert got.frame == packet[iphl + 16 :]
    assert got.src_ip == (SRC4 if iphl == 20 else SRC6)
    assert decap_ip(packet + bytes(13)) == got  # WireGuard padding after the IP length is ignored


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_packet_encap_byte_for_byte(name: str) -> None:
    packet = load_hex(name)
    vni, iphl, df, csum = GOLDEN[name]
    frame = packet[iphl + 16 :]
    sport = int.from_bytes(packet[iphl : iphl + 2], "big")
    if iphl == 20:
        built = encap_ip(frame, vni=vni, src_ip=packet[12:16], dst_ip=packet[16:20], src_port=sport,
                         ip_id=int.from_bytes(packet[4:6], "big"), df=bool(df), udp_checksum=csum)
    else:
        built = encap_ip(frame, vni=vni, src_ip=packet[8:24], dst_ip=packet[24:40], src_port=sport)
    assert built.hex(" ") == packet.hex(" ")


def test_golden_ipv4_frame_keeps_its_vlan_tag() -> None:
    frame = decap_ip(load_hex("vxlan_ipv4.hex")).frame
    assert frame[12:16] == bytes.fromhex("8100a064")


# -- encap_ip fields, checked with the naive reference ------------------------------------------------------------
def test_encap_ipv4_defaults() -> None:
    p = encap_ip(FRAME, vni=5000, src_ip=SRC4, dst_ip=DST4, src_port=50001, ip_id=0x1234)
    assert p[0] == 0x45 and p[1] == 0  # version 4, IHL 5, TOS 0
    assert int.from_bytes(p[2:4], "big") == len(p) == 20 + 8 + 8 + len(FRAME)
    assert p[4:6] == b"\x12\x34"
    assert p[6:8] == b"\x40\x00"  # DF, offset 0
    assert (p[8], p[9]) == (64, 17)
    assert reference_checksum(p[:20]) == 0
    assert (p[12:16], p[16:20]) == (SRC4, DST4)
    assert struct.unpack("!HHHH", p[20:28]) == (50001, 4789, 8 + 8 + len(FRAME), 0)  # zero csum: RFC 7348 §5
    assert p[28:36] == pack_header(5000) and p[36:] == FRAME


def test_encap_ipv4_options() -> None:
    p = encap_ip(FRAME, vni=1, src_ip=SRC4, dst_ip=DST4, src_port=1, dst_port=8472, ttl=1, tos=0xB8,
                 ip_id=7, df=False, udp_checksum=True)
    assert (p[1], p[6:8], p[8]) == (0xB8, b"\0\0", 1)
    assert p[22:24] == (8472).to_bytes(2, "big")
    assert reference_checksum(p[:20]) == 0 and udp_checksum_ok(p)
    assert decap_ip(p, dst_port=8472, verify_checksum=True).frame == FRAME
    with pytest.raises(VxlanError):
        decap_ip(p)  # not the VXLAN port


def test_encap_ipv6_defaults() -> None:
    p = encap_ip(FRAME, vni=5000, src_ip=SRC6, dst_ip=DST6, src_port=50001, tos=0x2E, flow_label=0xABCDE)
    assert int.from_bytes(p[0:4], "big") == (6 << 28) | (0x2E << 20) | 0xABCDE
    assert int.from_bytes(p[4:6], "big") == len(p) - 40
    assert (p[6], p[7]) == (17, 64)
    assert (p[8:24], p[24:40]) == (SRC6, DST6)
    assert p[46:48] != b"\0\0" and udp_checksum_ok(p)  # always computed over IPv6
    zero = encap_ip(FRAME, vni=5000, src_ip=SRC6, dst_ip=DST6, src_port=50001, udp_checksum=False)
    assert zero[46:48] == b"\0\0"
    assert decap_ip(zero).frame == FRAME
    with pytest.raises(VxlanError):
        decap_ip(zero, verify_checksum=True)  # as Linux without udp6zerocsumrx


def test_udp_checksum_zero_result_is_sent_as_ffff() -> None:
    # Find a frame whose checksum computes to 0: RFC 768 says it must then be transmitted as 0xFFFF.
    base = bytes.fromhex("020000000001 020000000002 88b5") + b"\0\0"
    p = encap_ip(base, vni=1, src_ip=SRC4, dst_ip=DST4, src_port=50000, udp_checksum=True)
    csum = int.from_bytes(p[26:28], "big")
    fixed = base[:-2] + csum.to_bytes(2, "big")  # S + ~S = 0xFFFF: the checksum now computes to 0
    p = encap_ip(fixed, vni=1, src_ip=SRC4, dst_ip=DST4, src_port=50000, udp_checksum=True)
    assert p[26:28] == b"\xff\xff"
    assert udp_checksum_ok(p)
    decap_ip(p, verify_checksum=True)


@settings(max_examples=200)
@given(
    frame=st.binary(min_size=14, max_size=1500),
    vni=st.integers(0, VXLAN_VNI_MAX),
    v6=st.booleans(),
    csum=st.sampled_from([None, True]),
    sport=st.one_of(st.none(), st.integers(0, 0xFFFF)),
)
def test_roundtrip_and_checksums(frame: bytes, vni: int, v6: bool, csum: bool | None, sport: int | None) -> None:
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    p = encap_ip(frame, vni=vni, src_ip=src, dst_ip=dst, src_port=sport, udp_checksum=csum)
    got = decap_ip(p, strict=True, verify_checksum=True)
    assert (got.vni, got.frame, got.src_ip) == (vni, frame, src)
    if v6 or csum:
        assert udp_checksum_ok(p)
    if not v6:
        assert reference_checksum(p[:20]) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"src_ip": SRC4, "dst_ip": DST6},
        {"src_ip": b"\1\2\3", "dst_ip": DST4},
        {"src_ip": SRC6 + b"\0", "dst_ip": DST6},
        {"src_port": -1},
        {"src_port": 65536},
        {"dst_port": 70000},
        {"ttl": 256},
        {"tos": -1},
        {"ip_id": 65536},
        {"src_ip": SRC6, "dst_ip": DST6, "flow_label": 1 << 20},
    ],
)
def test_encap_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"vni": 1, "src_ip": SRC4, "dst_ip": DST4} | kwargs
    with pytest.raises(ValueError):
        encap_ip(FRAME, **args)  # type: ignore[arg-type]


def test_encap_rejects_frames_too_big_for_one_datagram() -> None:
    with pytest.raises(ValueError):
        encap_ip(bytes(65535 - 36 + 1), vni=1, src_ip=SRC4, dst_ip=DST4)
    encap_ip(bytes(65535 - 36), vni=1, src_ip=SRC4, dst_ip=DST4)
    with pytest.raises(ValueError):
        encap_ip(bytes(65535 - 16 + 1), vni=1, src_ip=SRC6, dst_ip=DST6)


# -- source port hash -----------------------------------------------------------------------------------------
def ipv4_udp_frame(sport: int, dport: int, payload: bytes, *, tag: bytes = b"") -> bytes:
    return eth(ipv4("100.64.0.1", "100.64.0.2", UDP, udp(sport, dport, payload), df=False), tags=tag)


def test_flow_src_port_is_stable_per_flow_and_in_range() -> None:
    a1 = flow_src_port(ipv4_udp_frame(1000, 53, b"one"))
    assert a1 == flow_src_port(ipv4_udp_frame(1000, 53, b"another payload"))
    assert a1 == flow_src_port(ipv4_udp_frame(1000, 53, b"x", tag=bytes.fromhex("81000064")))
    first_fragment = bytearray(ipv4_udp_frame(1000, 53, b"one"))
    first_fragment[20] = 0x20  # MF
    other = bytearray(ipv4_udp_frame(2000, 53, b"one"))
    other[20] = 0x20
    assert flow_src_port(first_fragment) == flow_src_port(other) != a1  # no ports in fragments
    ports = {flow_src_port(ipv4_udp_frame(sport, 53, b"")) for sport in range(1000, 1200)}
    assert len(ports) > 150  # flows spread
    assert all(49152 <= p <= 65535 for p in ports)
    assert a1 == flow_src_port(ipv4_udp_frame(1000, 53, b"x", tag=bytes.fromhex("88a8000a 81000064")))
    p = encap_ip(ipv4_udp_frame(1000, 53, b"one"), vni=1, src_ip=SRC4, dst_ip=DST4)
    assert int.from_bytes(p[20:22], "big") == a1


def ipv6_udp_frame(sport: int, payload: bytes) -> bytes:
    return eth(ipv6(SRC6, DST6, UDP, udp(sport, 4242, payload)))


def test_flow_src_port_ipv6_and_non_ip() -> None:
    assert flow_src_port(ipv6_udp_frame(7, b"a")) == flow_src_port(ipv6_udp_frame(7, b"bcd"))
    assert len({flow_src_port(ipv6_udp_frame(sport, b"")) for sport in range(200)}) > 150
    arp = bytes.fromhex("ffffffffffff 020000000001 0806") + bytes(28)
    assert flow_src_port(arp) == flow_src_port(arp[:14] + bytes(range(28)))  # MACs + EtherType only
    assert flow_src_port(arp) != flow_src_port(bytes.fromhex("ffffffffffff 020000000002 0806") + bytes(28))


@given(st.binary(max_size=120))
def test_flow_src_port_never_fails(frame: bytes) -> None:
    assert 49152 <= flow_src_port(frame) <= 65535
    assert 49152 <= flow_src_port(memoryview(bytearray(frame))) <= 65535


# -- decap_ip rejects everything else --------------------------------------------------------------------------
def _v4() -> bytearray:
    return bytearray(encap_ip(FRAME, vni=9, src_ip=SRC4, dst_ip=DST4, udp_checksum=True))


def _v6() -> bytearray:
    return bytearray(encap_ip(FRAME, vni=9, src_ip=SRC6, dst_ip=DST6))


def _with(buf: bytearray, offset: int, value: bytes) -> bytes:
    buf[offset : offset + len(value)] = value
    return bytes(buf)


def _v4_fixed(buf: bytearray) -> bytes:
    ihl = (buf[0] & 15) * 4
    buf[10:12] = b"\0\0"
    buf[10:12] = reference_checksum(bytes(buf[:ihl])).to_bytes(2, "big")
    return bytes(buf)


BAD_PACKETS = {
    "empty": b"",
    "version 5": _with(_v4(), 0, b"\x55"),
    "version 0": bytes(64),
    "truncated v4 header": bytes(_v4()[:19]),
    "truncated v6 header": bytes(_v6()[:39]),
    "ihl 4": _with(_v4(), 0, b"\x44"),
    "v4 total longer than data": _with(_v4(), 2, b"\xff\xff"),
    "v4 total shorter than ihl": _with(_v4(), 2, b"\x00\x10"),
    "v4 more fragments": _with(_v4(), 6, b"\x20\x00"),
    "v4 fragment offset": _with(_v4(), 6, b"\x00\x01"),
    "v4 tcp": _with(_v4(), 9, b"\x06"),
    "v4 truncated udp": _v4_fixed(bytearray(_with(_v4(), 2, b"\x00\x1b")[:27])),
    "v4 wrong port": _with(_v4(), 22, b"\x21\x18"),
    "v4 udp length too long": _with(_v4(), 24, b"\x01\x00"),
    "v4 udp length too short for a frame": _with(_v4(), 24, (8 + 8 + 13).to_bytes(2, "big")),
    "v4 no I flag": _with(_v4(), 28, b"\x00"),
    "v6 payload length 0": _with(_v6(), 4, b"\0\0"),
    "v6 payload longer than data": _with(_v6(), 4, b"\xff\xff"),
    "v6 hop-by-hop header": _with(_v6(), 6, b"\x00"),
    "v6 wrong port": _with(_v6(), 42, b"\x21\x18"),
    "v6 no I flag": _with(_v6(), 48, b"\x80"),
}


@pytest.mark.parametrize("name", sorted(BAD_PACKETS))
def test_decap_rejects(name: str) -> None:
    with pytest.raises(VxlanError):
        decap_ip(BAD_PACKETS[name])


def test_decap_skips_ipv4_options() -> None:
    p = _v4()
    with_opts = bytearray(p[:20] + b"\x01\x01\x01\x00" + p[20:])  # NOP NOP NOP EOL
    with_opts[0] = 0x46
    with_opts[2:4] = (len(with_opts)).to_bytes(2, "big")
    got = decap_ip(_v4_fixed(with_opts), verify_checksum=True)
    assert (got.vni, got.frame) == (9, FRAME)


def test_decap_verify_checksum_catches_corruption() -> None:
    for make, csum_at in ((_v4, 26), (_v6, 46)):
        for offset in (10, 30, 60, len(make()) - 1):
            p = make()
            if offset == 10 and p[0] >> 4 == 6:
                offset = 20  # an address byte: covered by the pseudo-header
            p[offset] ^= 0x40
            decap_ip(bytes(p))  # accepted without verification: WireGuard's AEAD already authenticated it
            with pytest.raises(VxlanError):
                decap_ip(bytes(p), verify_checksum=True)
        assert make()[csum_at : csum_at + 2] != b"\0\0"
    # A zero IPv4 UDP checksum means "none" and passes verification (RFC 7348 §5).
    p = encap_ip(FRAME, vni=9, src_ip=SRC4, dst_ip=DST4)
    assert decap_ip(p, verify_checksum=True).frame == FRAME


def test_decap_accepts_any_bytes_like() -> None:
    p = _v6()
    for obj in (bytes(p), p, memoryview(p)):
        assert decap_ip(obj).frame == FRAME


def test_fuzz_decap_raises_only_vxlan_error() -> None:
    rng = random.Random(7348)
    seeds = [bytes(_v4()), bytes(_v6()), load_hex("vxlan_ipv4.hex"), load_hex("vxlan_ipv6.hex")]
    for i in range(20000):
        if i % 4 == 0:
            data = rng.randbytes(rng.randrange(0, 120))
            if data:
                data = bytes([rng.choice((0x45, 0x46, 0x60, data[0]))]) + data[1:]
        else:
            buf = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            data = bytes(buf[: rng.randrange(len(buf) + 1)]) if rng.random() < 0.3 else bytes(buf)
        for kw in ({}, {"strict": True, "verify_checksum": True}):
            try:
                got = decap_ip(data, **kw)  # type: ignore[arg-type]
            except VxlanError:
                continue
            assert len(got.frame) >= 14 and 0 <= got.vni <= VXLAN_VNI_MAX
        try:
            unpack_header(data[:12])
        except VxlanError:
            pass


# -- batches: the bulk branches against the single-packet functions ------------------------------------------
def _flow_frame(rng: random.Random, flow: int, version: int, size: int) -> bytes:
    """An untagged TCP frame of flow ``flow`` (its ports), IPv4 or IPv6, ``size`` bytes of payload."""
    seq = rng.getrandbits(32)
    body = tcp(40000 + flow, 5201, rng.randbytes(size), seq=seq, window=512)
    if version == 4:
        ip = ipv4("100.64.0.1", "100.64.0.2", TCP, body, ident=rng.getrandbits(16))
    else:
        ip = ipv6("fd00::1", "fd00::2", TCP, body)
    return eth(ip, src=bytes([2, 0, 0, 0, 0, 1]))


@pytest.mark.parametrize("seed", range(30))
def test_batches_equal_the_single_packet_functions(seed: int) -> None:
    """encap_ip_batch gives exactly encap_ip of each frame (one flow or several, IPv4 or IPv6 VTEPs, odd
    frames among them); decap_ip_batch gives decap_ip's frames, or declines (None) a batch it cannot take
    whole, never anything else."""
    rng = random.Random(seed)
    nflows = rng.choice([1, 1, 2, 4])
    version = rng.choice([4, 6])
    frames = [_flow_frame(rng, rng.randrange(nflows), version, rng.choice([1300, 1300, 1300, 7]))
              for _ in range(rng.randrange(1, 30))]
    if rng.random() < 0.2:
        frames.insert(rng.randrange(len(frames)), rng.randbytes(rng.randrange(14, 80)))  # not IP
    v6_vteps = rng.random() < 0.3
    src, dst = (bytes(15) + b"\x0a", bytes(15) + b"\x0b") if v6_vteps else (bytes([198, 19, 0, 1]),
                                                                             bytes([198, 19, 0, 2]))
    def encap(batch: list[bytes], bulk: bool) -> list[bytes]:
        if bulk:
            return encap_ip_batch(batch, vni=100, src_ip=src, dst_ip=dst)
        return [encap_ip(f, vni=100, src_ip=src, dst_ip=dst) for f in batch]

    def decap(batch: list[bytes], bulk: bool) -> list[tuple[int, bytes]]:
        got = decap_ip_batch(batch) if bulk else None
        if got is not None:
            return [(got[0], f) for f in got[1]]
        return [(d.vni, d.frame) for d in map(decap_ip, batch)]  # what the L2 runtime does when it declines

    assert check_bulk_matches_loop(encap, [frames]) == 1
    want = encap(frames, False)
    packets = list(want)
    if rng.random() < 0.3:  # a packet the batch cannot take: another port, a fragment, a bad VXLAN header
        k = rng.randrange(len(packets))
        p = bytearray(packets[k])
        p[rng.choice([7, 23, 28]) if not v6_vteps else 43] ^= 0x01
        packets[k] = bytes(p)
    try:
        assert check_bulk_matches_loop(decap, [packets]) == 1
    except VxlanError:  # the altered packet is not VXLAN at all: the batch must have declined it
        assert decap_ip_batch(packets) is None
    if decap_ip_batch(packets) is None:
        assert v6_vteps or packets != want or len(packets) == 0
