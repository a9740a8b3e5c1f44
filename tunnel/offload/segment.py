"""The one segmenter: a vnet-hdr tun or tap read turned into standalone, valid IP packets or frames.

With read offloads on, the kernel hands us TCP "super-packets" of up to 64 KiB (one IP+TCP header, many
MSS worth of payload), USO super-packets, and packets whose L4 checksum is left for us to finish
(``VIRTIO_NET_HDR_F_NEEDS_CSUM``: the checksum field holds only the pseudo-header sum).  A WireGuard peer
must receive standalone, valid IP packets, so :func:`segment` cuts each read exactly as the kernel's
software GSO (``tcp_gso_segment``/``__udp_gso_segment``) would:

1. unpack and validate the header (``virtio._unpack_hdr``);
2. ``GSO_NONE``: finish the checksum if asked (``skb_checksum_help`` semantics) and return the packet;
3. ``TCPV4``/``TCPV6``/``UDP_L4``: parse the IP and L4 headers ourselves (``hdr_len`` from the kernel is
   only a hint: it can be the whole linear part of the skb), cut the payload into ``gso_size`` pieces and
   give each piece its own copy of the headers with length, IPv4 ID and header checksum, TCP sequence
   number and flags, and a full L4 checksum (constant parts summed once, one payload sum per segment,
   one ``struct.pack`` of the headers per segment).

On a tap (``l2=True``) the Ethernet header (14 bytes, 18 or 22 with one or two 802.1Q/802.1ad tags) is
copied in front of every segment.  :func:`split_reads` applies this to a batch of reads, with a one-pass
unwrap for the common batch of plain packets.
"""

from __future__ import annotations

import struct
from operator import itemgetter

from .checksum import _payload_sums, _pseudo_sum, _sum16
from .headers import (
    _PROTO_TCP,
    _PROTO_UDP,
    _TCP_CSUM_OFFSET,
    _TCP_CWR,
    _TCP_FIN,
    _TCP_PSH,
    _UDP_CSUM_OFFSET,
    _parse_ip,
    l2_header_len,
)
from .virtio import (
    _VNET_NONE10,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VIRTIO_NET_HDR_LEN,
    Buffer,
    OffloadError,
    _unpack_hdr,
)


def segment(buf: Buffer, *, hdr_size: int = VIRTIO_NET_HDR_LEN, l2: bool = False) -> list[bytes]:
    """Turn what a vnet-hdr tun (or tap) read returned into complete, valid IP packets (or Ethernet frames).

    :param buf: the virtio_net_hdr followed by one packet or GSO super-packet.
    :param hdr_size: the tun's vnet header size, 10 (default) or 12.
    :param l2: the device is a tap: behind the header is an Ethernet frame (14 bytes of header, 4 more per
        802.1Q/802.1ad tag, at most two), whose header is copied in front of every segment; ``csum_start``
        then counts from the start of the frame, as the kernel writes it.
    :returns: one packet for ``GSO_NONE``; ``ceil(payload / gso_size)`` packets for TCP and USO.
    :raises OffloadError: malformed header or packet, unsupported GSO type (UFO), inconsistent fields.
    """
    if type(buf) is memoryview and (buf.ndim != 1 or buf.itemsize != 1):
        try:
            buf = buf.cast("B")
        except TypeError as e:
            raise OffloadError(f"unusable buffer: {e}") from None
    flags, gso_type, _, gso_size, csum_start, csum_offset = _unpack_hdr(buf, hdr_size)
    if not gso_type and not flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:  # the per-packet common case
        if len(buf) == hdr_size:
            raise OffloadError("empty packet")
        return [bytes(buf[hdr_size:])]
    mv = memoryview(buf)
    pkt = mv[hdr_size:]
    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso == VIRTIO_NET_HDR_GSO_NONE:  # with NEEDS_CSUM
        if not len(pkt):
            raise OffloadError("empty packet")
        return [_finish_csum(pkt, csum_start, csum_offset)]
    if gso == VIRTIO_NET_HDR_GSO_UDP:
        raise OffloadError("UFO (VIRTIO_NET_HDR_GSO_UDP) is not supported")
    l2len = l2_header_len(pkt) if l2 else 0
    version, l4, proto, ip_len = _parse_ip(pkt[l2len:])
    if l2 and (pkt[l2len - 2] == 0x08) != (version == 4):
        raise OffloadError(f"EtherType {bytes(pkt[l2len - 2:l2len]).hex()} carries an IPv{version} packet")
    if gso == VIRTIO_NET_HDR_GSO_UDP_L4:
        want_proto, csum_off = _PROTO_UDP, _UDP_CSUM_OFFSET
    else:
        if (gso == VIRTIO_NET_HDR_GSO_TCPV4) != (version == 4):
            raise OffloadError(f"gso_type {gso_type:#x} on an IPv{version} packet")
        want_proto, csum_off = _PROTO_TCP, _TCP_CSUM_OFFSET
    if proto != want_proto:
        raise OffloadError(f"gso_type {gso_type:#x} on IP protocol {proto}")
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and (csum_start != l2len + l4 or csum_offset != csum_off):
        raise OffloadError(f"csum_start/offset {csum_start}/{csum_offset}, expected {l2len + l4}/{csum_off}")
    raw = buf if type(buf) is bytes else mv.tobytes()
    off = hdr_size + l2len
    mac = raw[hdr_size:off]
    if want_proto == _PROTO_UDP:
        if ip_len < l4 + 8:
            raise OffloadError("truncated UDP header")
        return _segment_udp(raw, off, ip_len, version, l4, gso_size, mac)
    if ip_len < l4 + 20:
        raise OffloadError("truncated TCP header")
    thl = (pkt[l2len + l4 + 12] >> 4) * 4
    if thl < 20 or l4 + thl > ip_len:
        raise OffloadError(f"bad TCP data offset {thl}")
    return _segment_tcp(raw, off, ip_len, version, l4, thl, gso_size, mac)


def _finish_csum(pkt: memoryview, start: int, offset: int) -> bytes:
    """``skb_checksum_help``: sum ``pkt[start:]`` (the field holds the pseudo-header seed) and store it."""
    at = start + offset
    if at + 2 > len(pkt):
        raise OffloadError(f"csum_start {start} + csum_offset {offset} beyond a {len(pkt)}-byte packet")
    r = _sum16(pkt[start:])
    c = 0xFFFF - r  # the kernel writes 0xffff (CSUM_MANGLED_0) rather than 0
    return b"".join((pkt[:at], c.to_bytes(2, "big"), pkt[at + 2:]))


_tcp_structs: dict[tuple[int, int, int, int], struct.Struct] = {}


def _tcp_struct(version: int, l4: int, thl: int, l2len: int) -> struct.Struct:
    """Header layout with the per-segment fields broken out (see the pack calls in `_segment_tcp`); the
    first field is the Ethernet header of a tap frame (``0s``, empty, for a tun)."""
    key = (version, l4, thl, l2len)
    s = _tcp_structs.get(key)
    if s is None:
        if version == 4:
            # ver/ihl+tos, total length, id, frag+ttl+proto, header checksum, addrs+options+ports,
            # seq, ack+data offset, flags, window, checksum, urgent pointer+options
            fmt = f"!{l2len}s2sHH4sH{l4 - 12 + 4}sI5sB2sH{thl - 18}s"
        else:
            # ver/tc/flow label, payload length, next header+hop limit+addrs+ports, then as above
            fmt = f"!{l2len}s4sH{l4 - 6 + 4}sI5sB2sH{thl - 18}s"
        s = _tcp_structs[key] = struct.Struct(fmt)
    return s


def _segment_tcp(raw: bytes, off: int, total: int, version: int, l4: int, thl: int,
                 gso_size: int, mac: bytes = b"") -> list[bytes]:
    """Cut the TCP super-packet ``raw[off:off + total]`` (see :func:`segment`); ``mac`` goes in front of
    each segment (a tap frame's Ethernet header)."""
    hl = l4 + thl
    head = raw[off:off + hl]
    seq0 = int.from_bytes(head[l4 + 4:l4 + 8], "big")
    flags0 = head[l4 + 13]
    st = _tcp_struct(version, l4, thl, len(mac))
    # Constant part of the TCP checksum: addresses, protocol, and the TCP header without seq, the flags
    # byte and the checksum (the flags byte is the low byte of its word, so it adds as a plain integer).
    tcp_base = (_pseudo_sum(head, version) + _PROTO_TCP
                + _sum16(head[l4:l4 + 4] + head[l4 + 8:l4 + 13] + b"\0" + head[l4 + 14:l4 + 16]
                         + head[l4 + 18:hl]) + thl)
    ack5, win2, tail = head[l4 + 8:l4 + 13], head[l4 + 14:l4 + 16], head[l4 + 18:hl]
    ip_id0 = ip_base = 0
    ip_mid1 = b""
    if version == 4:
        ip_id0 = (head[4] << 8) | head[5]
        # Constant part of the IPv4 header checksum: everything but total length, id and the checksum.
        ip_base = _sum16(head[0:2] + head[6:10] + head[12:l4])
        ip_pre, ip_mid1, ip_mid2 = head[0:2], head[6:10], head[12:l4 + 4]
    else:
        ip_pre, ip_mid2 = head[0:4], head[6:l4 + 4]

    pos = off + hl
    stop = off + total
    sums = _payload_sums(raw, pos, stop, gso_size)
    nseg = len(sums) or 1
    # FIN and PSH only on the last segment, CWR only on the first (Linux tcp_gso_segment).
    fls = [flags0 & ~(_TCP_FIN | _TCP_PSH | _TCP_CWR)] * nseg
    if nseg == 1:
        fls[0] = flags0
        sums = sums or [0]
    else:
        fls[0] = flags0 & ~(_TCP_FIN | _TCP_PSH)
        fls[-1] = flags0 & ~_TCP_CWR
    out: list[bytes] = []
    append = out.append
    pack = st.pack
    for k in range(nseg):
        end = pos + gso_size
        if end > stop:  # noqa: PLR1730 - an if is cheaper than min() here
            end = stop
        n = end - pos
        seq = (seq0 + k * gso_size) & 0xFFFFFFFF
        fl = fls[k]
        c = (tcp_base + n + (seq >> 16) + (seq & 0xFFFF) + fl + sums[k]) % 0xFFFF
        tc = 0xFFFF - c if c else 0
        if version == 4:
            ip_id = (ip_id0 + k) & 0xFFFF
            tot = hl + n
            ic = (ip_base + tot + ip_id) % 0xFFFF
            append(pack(mac, ip_pre, tot, ip_id, ip_mid1, 0xFFFF - ic if ic else 0, ip_mid2, seq, ack5, fl,
                        win2, tc, tail) + raw[pos:end])
        else:
            append(pack(mac, ip_pre, thl + n, ip_mid2, seq, ack5, fl, win2, tc, tail) + raw[pos:end])
        pos = end
    return out


def _segment_udp(raw: bytes, off: int, total: int, version: int, l4: int, gso_size: int,
                 mac: bytes = b"") -> list[bytes]:
    """Cut the UDP (USO) super-packet ``raw[off:off + total]`` into datagrams (see :func:`segment`);
    ``mac`` goes in front of each (a tap frame's Ethernet header)."""
    hl = l4 + 8
    head = raw[off:off + hl]
    # Addresses, protocol and ports; the UDP length appears twice (pseudo-header and UDP header).
    udp_base = _pseudo_sum(head, version) + _PROTO_UDP + _sum16(head[l4:l4 + 4])
    ip_id0 = ip_base = 0
    ip_mid1 = b""
    if version == 4:
        ip_id0 = (head[4] << 8) | head[5]
        ip_base = _sum16(head[0:2] + head[6:10] + head[12:l4])
        st = struct.Struct(f"!{len(mac)}s2sHH4sH{l4 - 12 + 4}sHH")
        ip_pre, ip_mid1, ip_mid2 = head[0:2], head[6:10], head[12:l4 + 4]
    else:
        st = struct.Struct(f"!{len(mac)}s4sH{l4 - 6 + 4}sHH")
        ip_pre, ip_mid2 = head[0:4], head[6:l4 + 4]
    pos = off + hl
    stop = off + total
    sums = _payload_sums(raw, pos, stop, gso_size) or [0]
    out: list[bytes] = []
    append = out.append
    pack = st.pack
    for k in range(len(sums)):
        end = pos + gso_size
        if end > stop:  # noqa: PLR1730 - an if is cheaper than min() here
            end = stop
        ulen = 8 + end - pos
        uc = 0xFFFF - (udp_base + 2 * ulen + sums[k]) % 0xFFFF  # 0 would mean "no checksum": send 0xffff
        if version == 4:
            ip_id = (ip_id0 + k) & 0xFFFF
            tot = l4 + ulen
            ic = (ip_base + tot + ip_id) % 0xFFFF
            ipc = 0xFFFF - ic if ic else 0
            append(pack(mac, ip_pre, tot, ip_id, ip_mid1, ipc, ip_mid2, ulen, uc) + raw[pos:end])
        else:
            append(pack(mac, ip_pre, ulen, ip_mid2, ulen, uc) + raw[pos:end])
        pos = end
    return out


_after_hdr10 = itemgetter(slice(VIRTIO_NET_HDR_LEN, None))
_hdr10 = itemgetter(slice(0, VIRTIO_NET_HDR_LEN))


def split_reads(bufs: list[bytes], *, l2: bool = False, bulk: bool = True) -> tuple[list[bytes], int, int]:
    """What a batch of vnet-hdr (10-byte) reads holds: plain packets (or frames, ``l2``), each read's
    header dropped and super-packets cut by :func:`segment`.

    A batch of plain buffers (all-zero headers: the kernel segmented and checksummed them itself) is
    unwrapped with one C-level pass; otherwise each buffer is looked at.

    :param bufs: what :meth:`tunnel.tun.PytunDevice.read_batch` returned.
    :param l2: the device is a tap (Ethernet frames; see :func:`segment`).
    :param bulk: unwrap a batch of plain buffers in one pass; ``False`` runs the loop alone (tests compare
        both).
    :returns: ``(packets, short, bad)``: the packets in read order, how many buffers held no more than a
        header and how many had a header :func:`segment` refused (both dropped).
    """
    if bulk and list(map(_hdr10, bufs)).count(_VNET_NONE10) == len(bufs) and min(map(len, bufs), default=11) > 10:
        return list(map(_after_hdr10, bufs)), 0, 0
    out: list[bytes] = []
    short = bad = 0
    for b in bufs:
        if len(b) <= VIRTIO_NET_HDR_LEN:
            short += 1
        elif b[1] or b[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            try:
                out += segment(b, l2=l2)
            except OffloadError:
                bad += 1
        else:
            out.append(b[VIRTIO_NET_HDR_LEN:])
    return out, short, bad
