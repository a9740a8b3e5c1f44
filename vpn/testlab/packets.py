"""Inner packets for tests and benchmarks: exact sizes, a sequence number to find them again.

Pure bytes; no sockets.  The IPv4 header's checksum is left zero (the tunnel core and the fakes do not
check it; a kernel TUN would).
"""

from __future__ import annotations

import struct


def ipv4_packet(size: int, seq: int = 0, *, src: str = "100.64.0.1", dst: str = "100.64.0.2") -> bytes:
    """An IPv4/UDP-looking packet of exactly ``size`` bytes (≥ 28) whose payload starts with ``seq``
    (when ``size`` ≥ 32).

    The total-length field is right, which is all the receiver uses to strip padding.
    """
    assert 28 <= size <= 65535
    s = bytes(int(x) for x in src.split("."))
    d = bytes(int(x) for x in dst.split("."))
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, seq & 0xFFFF, 0, 64, 17, 0, s, d)
    udp = struct.pack("!HHHH", 40000, 9, size - 20, 0)
    body = struct.pack("!I", seq) + bytes((seq + i) & 0xFF for i in range(max(0, size - 32)))
    return (header + udp + body)[:size]


def ipv6_packet(size: int, seq: int = 0) -> bytes:
    """An IPv6 packet of exactly ``size`` bytes (≥ 40): payload length = size - 40; the payload
    starts with ``seq`` when ``size`` ≥ 44."""
    assert 40 <= size <= 65535 + 40
    src = bytes.fromhex("fd000000000000000000000000000001")
    dst = bytes.fromhex("fd000000000000000000000000000002")
    header = struct.pack("!IHBB16s16s", 6 << 28, size - 40, 59, 64, src, dst)  # next header: none
    body = struct.pack("!I", seq) + bytes((seq * 7 + i) & 0xFF for i in range(max(0, size - 44)))
    return (header + body)[:size]


def seq_of(packet: bytes) -> int:
    """The sequence number written by :func:`ipv4_packet` / :func:`ipv6_packet`."""
    off = 28 if packet[0] >> 4 == 4 else 40
    value: int = struct.unpack_from("!I", packet, off)[0]
    return value
