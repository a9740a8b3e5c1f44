"""GRO's general stage: merge in-order segments of each flow into GSO super-packets for a tun write.

:func:`coalesce` takes decrypted packets in arrival order and keeps one open super-packet (``_Item``) per
TCP flow (and per UDP flow with USO): a segment joins its flow's item when its headers match the first
segment's and its sequence number follows, else it closes the item, so the order within each flow is
kept.  A fast path compares the next full-size segment of the flow just extended as one masked
big-endian integer (:func:`_tcp_mask`).  The merged packet goes out with ``NEEDS_CSUM`` and the
pseudo-header partial sum (``CHECKSUM_PARTIAL``), as the kernel expects, so its stack sees one big skb
instead of ~45 small ones and we make one ``write`` instead of ~45; everything else goes out unchanged
behind an all-zero (``GSO_NONE``, flags 0) header (with a vnet-hdr tun *every* write needs one, and flags
0 means the kernel verifies the checksums itself).

:func:`_super_packet` is the one super-packet builder, shared with the run fast path in :mod:`.gro`
(the data path's entry point).  On a tap, ``l2=`` is the Ethernet header put back in front of each
output, counted in ``hdr_len`` and ``csum_start``.
"""

from __future__ import annotations

import struct

from .checksum import _l4_csum_ok, checksum
from .headers import (
    _PROTO_TCP,
    _PROTO_UDP,
    _TCP_ACK,
    _TCP_CSUM_OFFSET,
    _TCP_ECE,
    _TCP_PSH,
    _UDP_CSUM_OFFSET,
    MAX_SUPER_PACKET,
    UDP_MAX_SEGMENTS,
)
from .virtio import (
    _NEEDS_CSUM_TCP4,
    _NEEDS_CSUM_TCP6,
    _NEEDS_CSUM_UDP_L4,
    _VNET_NONE,
    _VNET_TAIL,
    VIRTIO_NET_HDR_LEN,
    VIRTIO_NET_HDR_MRG_RXBUF_LEN,
    OffloadError,
)


class _Item:
    """One output super-packet being built from in-order segments of one flow."""

    __slots__ = (
        "base",
        "first",
        "gso",
        "hl",
        "l4",
        "mask",
        "next_seq",
        "open",
        "parts",
        "proto",
        "psh",
        "shift",
        "sig",
        "size",
        "tmpl",
        "version",
    )

    def __init__(self, first: bytes, version: int, proto: int, l4: int, hl: int, sig: object,
                 gso: int, next_seq: int, psh: bool) -> None:
        self.first = first
        self.version = version
        self.proto = proto
        self.l4 = l4
        self.hl = hl
        self.sig = sig
        self.gso = gso  # payload length of the first segment = gso_size
        self.parts: list[bytes] = []  # payloads of the segments after the first
        self.size = len(first)  # IP length of the super-packet so far
        self.next_seq = next_seq
        self.open = not psh  # PSH ends a super-packet (Linux tcp_gro_receive flushes on it)
        self.psh = psh
        # Fast path (TCP): the next full-size segment's header, read as one big-endian integer and masked
        # with `mask` (which drops the IPv4 ID and checksum, PSH and the TCP checksum), must equal `tmpl`:
        # the first header with the expected sequence number.  Built on first use (`template`), since
        # most items in a batch of unrelated packets never get a second segment.
        self.mask = self.base = self.shift = 0
        self.tmpl = -1

    def template(self) -> int:
        """Build the fast-path mask and template (TCP items only); return the template."""
        self.mask, _, self.shift, seq_bits = _tcp_mask(self.version, self.hl)
        self.base = int.from_bytes(self.first[:self.hl], "big") & self.mask & ~seq_bits
        self.tmpl = self.base | (self.next_seq << self.shift)
        return self.tmpl

    def build(self, vnet_none: bytes, hdr_size: int, l2: bytes = b"") -> bytes:
        """The buffer to write: ``vnet_none`` (the all-zero header, then ``l2``) and the lone packet, or
        the super-packet behind its GSO header and ``l2`` (a tap frame's Ethernet header)."""
        first = self.first
        if not self.parts:
            return vnet_none + first
        parts: list[bytes | bytearray] = [b"", b"", first[self.hl:], *self.parts]
        return _super_packet(first, parts, self.version, self.hl, self.size, self.gso, self.psh, l2,
                             proto=self.proto, hdr_size=hdr_size)


#: (version, header length) -> :func:`_tcp_mask`'s answer, built once per header shape.
_tcp_masks: dict[tuple[int, int], tuple[int, int, int, int]] = {}


def _tcp_mask(version: int, hl: int) -> tuple[int, int, int, int]:
    """``(mask, short_mask, seq_shift, seq_bits)`` for the merging fast paths (:func:`coalesce` and
    :func:`gro`) on an ``hl``-byte IP+TCP header read as one big-endian integer: the header bits that must
    equal the first segment's (all but the IPv4 ID and checksum, PSH and the TCP checksum), the same without
    the IP length (for a shorter last segment), and where the sequence number sits."""
    key = (version, hl)
    r = _tcp_masks.get(key)
    if r is None:
        l4 = 20 if version == 4 else 40
        m = bytearray(b"\xff" * hl)
        if version == 4:
            m[4:6] = m[10:12] = b"\0\0"  # IPv4 ID and header checksum may differ
        m[l4 + 13] &= ~_TCP_PSH & 0xFF
        m[l4 + 16:l4 + 18] = b"\0\0"  # TCP checksum
        shift = 8 * (hl - l4 - 8)
        mask = int.from_bytes(m, "big")
        length = 0xFFFF << 8 * (hl - (4 if version == 4 else 6))  # IPv4 total / IPv6 payload length
        r = _tcp_masks[key] = (mask, mask & ~length, shift, 0xFFFFFFFF << shift)
    return r


# IPv4 without options + fixed TCP header: ver/ihl+tos, total length, (id), frag+ttl+proto, (checksum),
# addresses+ports, seq, ack+data offset, flags, window, (checksum)
_TCP4_KEY = struct.Struct("!2sH2x4s2x12sI5sB2s2x")
# IPv6 + fixed TCP header: ver/tc/flow label, payload length, next header+hop limit, addresses+ports, ...
_TCP6_KEY = struct.Struct("!4sH2s36sI5sB2s2x")
# IPv6 extension headers (IANA "IPv6 Extension Header Types") and No Next Header
_IPV6_EXT = frozenset((0, 43, 44, 50, 51, 59, 60, 135, 139, 140, 253, 254))
_TCP_FLAGS_MASK = 0xFF & ~(_TCP_PSH | _TCP_ECE)  # what remains must be exactly ACK


def _close(item: _Item | None) -> None:
    if item is not None:
        item.open = False


def coalesce(packets: list[bytes], *, hdr_size: int = VIRTIO_NET_HDR_LEN, udp: bool = False,
             verify_csum: bool = False, max_size: int = MAX_SUPER_PACKET, l2: bytes = b"") -> list[bytes]:
    """Merge in-order TCP segments of one flow into GSO super-packets, ready for a vnet-hdr tun write.

    A TCP segment joins the current super-packet of its flow (same addresses and ports) when: IPv4 has no
    options, DF set and is not a fragment, or IPv6 has no extension headers; the TOS/traffic class, TTL/hop
    limit (and IPv6 flow label), ACK number, window, data offset, TCP options and ECE flag equal the first
    segment's; flags are ACK or ACK|PSH (no SYN, FIN, RST, URG, CWR); it carries payload; its sequence
    number follows the previous segment; every earlier segment had exactly ``gso_size`` bytes (the first
    segment's payload) and this one has at most that many; no earlier segment had PSH; and the result stays
    within ``max_size``.  Any TCP packet of the flow that does not join closes the flow's super-packet, so
    the order within each flow is kept; packets of different flows may move relative to each other.

    With ``udp=True`` (only if the tun accepted ``TUN_F_USO4|TUN_F_USO6``), UDP datagrams of one flow with
    equal sizes (the last may be shorter), a non-zero checksum, IPv4 DF and no options, are merged into a
    ``GSO_UDP_L4`` packet of at most :data:`UDP_MAX_SEGMENTS` datagrams; the kernel delivers them as
    separate datagrams again.

    :param packets: plain IP packets (already trimmed to their IP length; longer ones are not merged).
    :param hdr_size: the tun's vnet header size, 10 (default) or 12.
    :param udp: also merge UDP datagrams into USO packets.
    :param verify_csum: check each packet's L4 checksum before merging it (wireguard-go does).  Off by
        default: kernel WireGuard marks decrypted packets CHECKSUM_UNNECESSARY and GROs them unverified,
        because the AEAD already authenticated them (wireguard-linux-compat src/receive.c,
        ``wg_packet_consume_data_done``); checking costs about as much as the decryption.
    :param max_size: largest IP packet to build (at most 65535).
    :param l2: for a tap: the Ethernet header (with any VLAN tags) that every one of ``packets`` had in
        front of it; it goes back in front of each output packet, after the virtio_net_hdr, whose
        ``hdr_len`` and ``csum_start`` then count it (:func:`gro_frames` splits frames by this header).
    :returns: one buffer per tun write, each starting with a virtio_net_hdr: merged packets carry
        ``NEEDS_CSUM`` and a TCPV4/TCPV6/UDP_L4 gso_type; all others an all-zero header and the packet
        unchanged.
    """
    vnet_none = _VNET_NONE.get(hdr_size)
    if vnet_none is None:
        raise OffloadError(f"hdr_size must be 10 or 12, not {hdr_size!r}")
    if l2:
        vnet_none += l2
    if not 0 < max_size <= MAX_SUPER_PACKET:
        raise ValueError(f"max_size must be in 1..{MAX_SUPER_PACKET}")
    out: list[bytes | _Item] = []
    emit = out.append
    tcp_flows: dict[bytes, _Item] = {}
    udp_flows: dict[bytes, _Item] = {}
    frombytes = int.from_bytes
    last: _Item | None = None  # the TCP super-packet that took the previous TCP segment
    for p in packets:
        n = len(p)
        # ---- fast path: the next full-size in-order segment of the flow we just extended -------------
        if (last is not None and last.open and n == len(last.first) and last.size + last.gso <= max_size
                # (the template is built on first use, before `last.mask` is read)
                and (last.tmpl if last.tmpl >= 0 else last.template())
                == frombytes(p[:last.hl], "big") & last.mask
                and not (verify_csum and not _l4_csum_ok(p, last.version, last.l4, _PROTO_TCP))):
            last.parts.append(p[last.hl:])
            last.size += last.gso
            seq = last.next_seq = (last.next_seq + last.gso) & 0xFFFFFFFF
            last.tmpl = last.base | (seq << last.shift)
            if p[last.l4 + 13] & _TCP_PSH:
                last.psh = True
                last.open = False
            continue
        if n < 28:
            emit(vnet_none + p)
            continue
        b0 = p[0]
        # ---- IPv4 TCP, no IP options: the common case -------------------------------------------------
        if b0 == 0x45 and p[9] == _PROTO_TCP:
            if n < 40:
                emit(vnet_none + p)
                continue
            thl = (p[32] >> 4) * 4
            a, tot, b, key, seq, c, fl, d = _TCP4_KEY.unpack_from(p)
            hl = 20 + thl
            plen = tot - hl
            if (tot != n or thl < 20 or plen <= 0 or p[6] != 0x40 or p[7] or fl & _TCP_FLAGS_MASK != _TCP_ACK
                    or (verify_csum and not _l4_csum_ok(p, 4, 20, _PROTO_TCP))):
                _close(tcp_flows.pop(key, None))
                emit(vnet_none + p)
                continue
            sig = (a, b, c, fl & _TCP_ECE, d, p[38:hl])
            version, l4 = 4, 20
        # ---- IPv6 TCP, no extension headers ------------------------------------------------------------
        elif b0 >> 4 == 6 and p[6] == _PROTO_TCP:
            if n < 60:
                emit(vnet_none + p)
                continue
            thl = (p[52] >> 4) * 4
            a, plen6, b, key, seq, c, fl, d = _TCP6_KEY.unpack_from(p)
            hl = 40 + thl
            plen = plen6 + 40 - hl
            if (plen6 + 40 != n or thl < 20 or plen <= 0 or fl & _TCP_FLAGS_MASK != _TCP_ACK
                    or (verify_csum and not _l4_csum_ok(p, 6, 40, _PROTO_TCP))):
                _close(tcp_flows.pop(key, None))
                emit(vnet_none + p)
                continue
            sig = (a, b, c, fl & _TCP_ECE, d, p[58:hl])
            version, l4 = 6, 40
        elif udp and (b0 == 0x45 and p[9] == _PROTO_UDP or b0 >> 4 == 6 and p[6] == _PROTO_UDP):
            _udp_one(p, out, udp_flows, vnet_none, verify_csum, max_size)
            continue
        else:
            if (b0 >> 4 == 4 and p[9] in (_PROTO_TCP, _PROTO_UDP)) or (b0 >> 4 == 6 and p[6] in _IPV6_EXT):
                # TCP/UDP with IP options, or IPv6 with extension headers (maybe TCP or UDP): we cannot
                # tell the flow cheaply, so close every open super-packet to keep per-flow order.
                for it in tcp_flows.values():
                    it.open = False
                tcp_flows.clear()
                udp_flows.clear()
            emit(vnet_none + p)
            continue
        psh = bool(fl & _TCP_PSH)
        item = tcp_flows.get(key)
        if (item is not None and item.open and seq == item.next_seq and item.sig == sig
                and plen <= item.gso and item.size + plen <= max_size):
            item.parts.append(p[hl:])
            item.size += plen
            seq = item.next_seq = (seq + plen) & 0xFFFFFFFF
            if item.tmpl >= 0:
                item.tmpl = item.base | (seq << item.shift)
            if psh:
                item.psh = True
                item.open = False
            elif plen < item.gso:
                item.open = False
            last = item
            continue
        if item is not None:
            item.open = False
        item = _Item(p, version, _PROTO_TCP, l4, hl, sig, plen, (seq + plen) & 0xFFFFFFFF, psh)
        tcp_flows[key] = item
        emit(item)
        last = item
    return [x if type(x) is bytes else x.build(vnet_none, hdr_size, l2) for x in out]  # type: ignore[union-attr]


def _udp_one(p: bytes, out: list[bytes | _Item], flows: dict[bytes, _Item], vnet_none: bytes,
             verify_csum: bool, max_size: int) -> None:
    n = len(p)
    if p[0] == 0x45:
        version, l4 = 4, 20
        ok = (p[2] << 8 | p[3]) == n and p[6] == 0x40 and not p[7]
        key = p[12:24]
        sig: object = (p[1], p[8])
    else:
        version, l4 = 6, 40
        ok = n >= 48 and (p[4] << 8 | p[5]) + 40 == n
        key = p[8:44]
        sig = (p[0:4], p[7])
    hl = l4 + 8
    plen = n - hl
    ok = (ok and plen > 0 and (p[l4 + 4] << 8 | p[l4 + 5]) == n - l4 and (p[l4 + 6] | p[l4 + 7]) != 0
          and not (verify_csum and not _l4_csum_ok(p, version, l4, _PROTO_UDP)))
    if not ok:
        flows.pop(key, None)
        out.append(vnet_none + p)
        return
    item = flows.get(key)
    if (item is not None and item.open and item.sig == sig and plen <= item.gso
            and item.size + plen <= max_size):
        item.parts.append(p[hl:])
        item.size += plen
        item.next_seq += 1  # datagram count
        if plen < item.gso or item.next_seq >= UDP_MAX_SEGMENTS:
            item.open = False
        return
    item = _Item(p, version, _PROTO_UDP, l4, hl, sig, plen, 1, False)
    flows[key] = item
    out.append(item)


def _super_packet(first: bytes, parts: list[bytes | bytearray], version: int, hl: int, total: int,
                  gso: int, psh: bool, l2: bytes = b"", *, proto: int = _PROTO_TCP,
                  hdr_size: int = VIRTIO_NET_HDR_LEN) -> bytes:
    """One GSO super-packet (TCP, or USO with ``proto`` UDP) for a vnet-hdr tun, the one builder of
    :func:`gro` and :func:`coalesce`: ``first``'s headers with the total length (and the UDP length), PSH
    if ``psh`` (TCP), the IPv4 header checksum and the pseudo-header checksum seed (CHECKSUM_PARTIAL),
    behind a ``hdr_size``-byte virtio_net_hdr and ``l2`` (a tap frame's Ethernet header, counted in
    ``hdr_len`` and ``csum_start``); ``parts[0:2]`` are filled in here and ``parts[2:]`` are the payloads
    in order.  ``gso`` is the payload size of every segment but the last."""
    l4 = 20 if version == 4 else 40
    h = bytearray(first[:hl])
    if version == 4:
        h[2:4] = total.to_bytes(2, "big")
        h[10:12] = b"\0\0"
        h[10:12] = checksum(h[:20]).to_bytes(2, "big")
        pseudo = int.from_bytes(h[12:20], "big")
    else:
        h[4:6] = (total - 40).to_bytes(2, "big")
        pseudo = int.from_bytes(h[8:40], "big")
    if proto == _PROTO_TCP:
        vh = _NEEDS_CSUM_TCP4 if version == 4 else _NEEDS_CSUM_TCP6
        csum_off = _TCP_CSUM_OFFSET
        if psh:
            h[l4 + 13] |= _TCP_PSH
    else:
        vh = _NEEDS_CSUM_UDP_L4
        csum_off = _UDP_CSUM_OFFSET
        h[l4 + 4:l4 + 6] = (total - l4).to_bytes(2, "big")
    seed = (pseudo + proto + total - l4) % 0xFFFF or 0xFFFF  # CHECKSUM_PARTIAL: the pseudo-header sum
    h[l4 + csum_off:l4 + csum_off + 2] = seed.to_bytes(2, "big")
    m = len(l2)
    tail = b"\0\0" if hdr_size == VIRTIO_NET_HDR_MRG_RXBUF_LEN else b""  # num_buffers, unused by tun
    parts[0] = vh + _VNET_TAIL.pack(hl + m, gso, l4 + m, csum_off) + tail + l2
    parts[1] = h
    return b"".join(parts)
