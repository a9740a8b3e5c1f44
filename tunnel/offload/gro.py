"""The one GRO of the data path: runs of one TCP flow first, :func:`.coalesce.coalesce` for the rest.

Decrypted packets mostly come as runs of consecutive in-order segments of one TCP flow (one super-packet
at the sender is sealed, sent and received as one GSO/GRO batch).  So :func:`gro` works in stages:

1. bulk (:func:`_gro_bulk`, :data:`BULK_MIN` packets or more): a batch that is back-to-back runs of one
   flow is checked with C-level loops (``map`` over masked headers against a ``range`` of expected values)
   and cut into super-packets, or declined;
2. the run loop: each run of consecutive segments becomes one super-packet;
3. everything else goes through ``coalesce`` in order, so the order of each flow is kept.

Every stage builds super-packets with the one builder (``coalesce._super_packet``), and each gives what
the general loop gives (tests compare them).  :func:`gro_frames` is the same for a tap: frames grouped by
their Ethernet header, the header passed as ``l2``.
"""

from __future__ import annotations

from itertools import repeat
from operator import and_, itemgetter
from typing import Literal

# The bulk branches' threshold is shared with crypto/'s (one number for the whole data path): see there.
from crypto.constants import BULK_MIN

from .coalesce import _super_packet, _tcp_mask, coalesce
from .headers import _TCP_PSH, MAX_SUPER_PACKET, l2_header_len
from .virtio import _VNET_NONE10, OffloadError


def gro(packets: list[bytes], *, udp: bool = False, l2: bytes = b"", bulk: bool = True) -> list[bytes]:
    """:func:`coalesce` for the data path, with a cheaper path for the common case.

    Decrypted packets mostly come as runs of consecutive in-order segments of one TCP flow (one
    super-packet at the sender is sealed, sent and received as one GSO/GRO batch).  Such a run (the first
    segment with payload, ACK only, no PSH, IPv4 with DF and no options, or IPv6 without extension headers;
    the next ones with the same headers but for IPv4 ID, checksums and PSH, the next sequence number and
    the same size, except that a last one may be shorter or carry PSH) becomes one super-packet here,
    built as ``coalesce`` builds it.  Everything else goes through ``coalesce`` in order, so the order of
    each flow is kept.  The result is what ``coalesce`` returns for the same packets, except that segments
    of one flow split by another flow's packets may end up in more super-packets.

    :param packets: plain IP packets trimmed to their length.
    :param udp: let ``coalesce`` merge UDP datagrams too (the tun accepted USO).
    :param l2: for a tap, the Ethernet header that every packet had in front of it (as in :func:`coalesce`).
    :param bulk: try the bulk branch (:data:`BULK_MIN` packets or more); ``False`` runs the loop alone.
    :returns: buffers for a vnet-hdr (10-byte) tun or tap.
    """
    if bulk and len(packets) >= BULK_MIN:
        done = _gro_bulk(packets, l2)
        if done is not None:
            return done
    out: list[bytes] = []
    rest: list[bytes] = []
    frombytes = int.from_bytes
    n = len(packets)
    i = 0
    while i < n:
        p = packets[i]
        i += 1
        size = len(p)
        b0 = p[0] if size >= 60 else 0
        if b0 == 0x45:
            if p[9] != 6 or p[6] != 0x40 or p[7] or p[33] != 0x10 or (p[2] << 8 | p[3]) != size:
                rest.append(p)
                continue
            version, l4 = 4, 20
        elif b0 >> 4 == 6:
            if p[6] != 6 or p[53] != 0x10 or (p[4] << 8 | p[5]) + 40 != size:
                rest.append(p)
                continue
            version, l4 = 6, 40
        else:
            rest.append(p)
            continue
        hl = l4 + ((p[l4 + 12] >> 4) << 2)
        plen = size - hl
        if plen <= 0 or hl < l4 + 20 or i >= n or len(packets[i]) > size:
            rest.append(p)
            continue
        mask, short_mask, shift, _ = _tcp_mask(version, hl)
        seq = (frombytes(p[l4 + 4:l4 + 8], "big") + plen) & 0xFFFFFFFF
        base = frombytes(p[:hl], "big") & mask & ~(0xFFFFFFFF << shift)
        limit = min(n, i + (MAX_SUPER_PACKET - size) // plen)
        j = i
        total = size
        psh = False
        expect = base | (seq << shift)  # the next full-size segment's masked header
        step = plen << shift
        while j < limit:
            q = packets[j]
            m = len(q)
            if m == size:
                if frombytes(q[:hl], "big") & mask != expect:
                    break
                j += 1
                total += plen
                seq += plen
                if seq > 0xFFFFFFFF:  # the sequence number wraps: no carry into the ACK field
                    seq &= 0xFFFFFFFF
                    expect = base | (seq << shift)
                else:
                    expect += step
                if q[l4 + 13] & _TCP_PSH:
                    psh = True
                    break
                continue
            # a shorter last segment: same headers but for the length, which must be right
            if (m <= hl or frombytes(q[:hl], "big") & short_mask != (base | (seq << shift)) & short_mask
                    or (version == 4 and (q[2] << 8 | q[3]) != m)
                    or (version == 6 and (q[4] << 8 | q[5]) + 40 != m)):
                break
            j += 1
            total += m - hl
            psh = bool(q[l4 + 13] & _TCP_PSH)
            break
        if j == i:  # nothing to merge with
            rest.append(p)
            continue
        if rest:
            out.extend(coalesce(rest, udp=udp, l2=l2))
            rest = []
        parts: list[bytes | bytearray] = [b"", b"", p[hl:]]
        parts += [q[hl:] for q in packets[i:j]]
        out.append(_super_packet(p, parts, version, hl, total, plen, psh, l2))
        i = j
    if rest:
        out.extend(coalesce(rest, udp=udp, l2=l2))
    return out


_BIG: Literal["big"] = "big"


def _gro_bulk(packets: list[bytes], l2: bytes = b"") -> list[bytes] | None:
    """:func:`gro` for a batch of back-to-back runs of one flow: the same super-packets, or ``None``
    (then the general loop decides).

    A batch often holds several bursts of the sender (each closed by a shorter segment or PSH); it is
    cut after each such segment, where the loop would end a run, and each piece goes through
    :func:`_gro_run`.
    """
    n = len(packets)
    size = len(packets[0])
    if size < 60:
        return None
    p0 = packets[0]
    l4 = 20 if p0[0] >> 4 == 4 else 40
    lens = list(map(len, packets))
    flags = bytes(map(itemgetter(l4 + 13), packets)) if min(lens) > l4 + 13 else b""
    if lens.count(size) == n and flags.count(0x10) == n:
        return _gro_run(packets, lens, flags, l2)
    if len(flags) != n:
        return None
    out: list[bytes] = []
    start = 0
    for i in [i for i, (m, f) in enumerate(zip(lens, flags, strict=True)) if m != size or f & _TCP_PSH]:
        if i - start < 1:  # a run of one: the loop would pass it on as it is
            return None
        r = _gro_run(packets[start:i + 1], lens[start:i + 1], flags[start:i + 1], l2)
        if r is None:
            return None
        out += r
        start = i + 1
    if start < n:
        if n - start < 2:
            return None
        r = _gro_run(packets[start:], lens[start:], flags[start:], l2)
        if r is None:
            return None
        out += r
    return out


def _gro_run(packets: list[bytes], lens: list[int], flags: bytes, l2: bytes = b"") -> list[bytes] | None:
    """:func:`gro` for packets that are exactly one run: the same super-packets, or ``None``.
    ``lens`` and ``flags`` are their lengths and TCP flag bytes (computed once by :func:`_gro_bulk`).

    The first segment must pass the loop's test; every other one must be full-size with the same headers
    under the loop's mask and the next sequence number, except that the last may be shorter and the last
    may carry PSH.  The headers become integers with one ``map`` each (slice, ``int.from_bytes``, mask)
    and are compared with a ``range`` of the expected values, so no bytecode runs per segment (figures in
    benchmarks/results-by-commit.md); runs longer than a super-packet are cut where the loop cuts them.
    """
    p = packets[0]
    size = len(p)
    if size < 60:
        return None
    b0 = p[0]
    if b0 == 0x45:
        if p[9] != 6 or p[6] != 0x40 or p[7] or p[33] != 0x10 or (p[2] << 8 | p[3]) != size:
            return None
        version, l4 = 4, 20
    elif b0 >> 4 == 6:
        if p[6] != 6 or p[53] != 0x10 or (p[4] << 8 | p[5]) + 40 != size:
            return None
        version, l4 = 6, 40
    else:
        return None
    hl = l4 + ((p[l4 + 12] >> 4) << 2)
    plen = size - hl
    if plen <= 0 or hl < l4 + 20:
        return None
    n = len(packets)
    full = lens.count(size)
    last = lens[-1]
    if full != n and (full != n - 1 or not hl < last < size):
        return None
    frombytes = int.from_bytes
    seq0 = frombytes(p[l4 + 4:l4 + 8], "big")
    if seq0 + n * plen > 0xFFFFFFFF:
        return None  # the sequence number wraps inside the batch: the loop handles it
    mask, short_mask, shift, _ = _tcp_mask(version, hl)
    step = plen << shift
    first = (frombytes(p[:hl], "big") & mask & ~(0xFFFFFFFF << shift)) | (seq0 << shift)
    heads = list(map(frombytes, map(itemgetter(slice(0, hl)), packets), repeat(_BIG)))
    if list(map(and_, heads[:full], repeat(mask))) != list(range(first, first + full * step, step)):
        return None
    if full != n:  # a shorter last segment: the same headers but for the length, which must be right
        q = packets[-1]
        if (heads[-1] & short_mask != (first + full * step) & short_mask
                or (version == 4 and (q[2] << 8 | q[3]) != last)
                or (version == 6 and (q[4] << 8 | q[5]) + 40 != last)):
            return None
    psh_last = flags[-1] & _TCP_PSH != 0
    if flags.count(0x10) != n - psh_last:
        return None  # PSH before the last segment: the loop ends the run there
    cut = itemgetter(slice(hl, None))
    per = 1 + (MAX_SUPER_PACKET - size) // plen  # segments per super-packet, as the loop counts them
    out: list[bytes] = []
    for i in range(0, n, per):
        j = min(n, i + per)
        if j - i == 1:  # a lone segment left over: the loop would pass it on as it is
            return None
        parts: list[bytes | bytearray] = [b"", b""]
        parts += map(cut, packets[i:j])
        total = (j - i - 1) * plen + lens[j - 1]
        out.append(_super_packet(packets[i], parts, version, hl, total, plen, j == n and psh_last, l2))
    return out


def gro_frames(frames: list[bytes], *, udp: bool = False, bulk: bool = True) -> list[bytes]:
    """:func:`gro` for Ethernet frames, ready for a vnet-hdr (10-byte) tap write.

    Consecutive IPv4/IPv6 frames with the same Ethernet header (MACs, VLAN tags, EtherType; see
    :func:`l2_header_len`) form one group; its IP packets go through :func:`gro` with that header as
    ``l2``, so a super-frame is one Ethernet header, one IP+TCP header and many segments' payloads.  Every
    other frame (ARP, other EtherTypes, runts) goes out unchanged behind an all-zero header, in its place.

    :param frames: whole Ethernet frames (an IP packet's padding to 60 bytes is cut off by :func:`gro`'s
        length checks: such a frame is written unchanged).
    :param udp: let :func:`coalesce` merge UDP datagrams too (the tap accepted USO).
    :param bulk: take a batch of one Ethernet header in one piece, and let :func:`gro` try its bulk branch;
        ``False`` runs the loops alone (tests compare both).
    """
    n = len(frames)
    if bulk and n > 1:  # the common batch: one flow's frames, one header (compared with C-level loops)
        try:
            m = l2_header_len(frames[0])
        except OffloadError:
            m = 0
        if m:
            cut = itemgetter(slice(0, m))
            heads = list(map(cut, frames))
            if heads.count(heads[0]) == n:
                return gro(list(map(itemgetter(slice(m, None)), frames)), udp=udp, l2=heads[0], bulk=bulk)
    out: list[bytes] = []
    i = 0
    while i < n:
        f = frames[i]
        try:
            m = l2_header_len(f)
        except OffloadError:
            out.append(_VNET_NONE10 + f)
            i += 1
            continue
        l2 = f[:m]
        j = i + 1
        while j < n and frames[j][:m] == l2:
            j += 1
        out += gro([g[m:] for g in frames[i:j]], udp=udp, l2=l2, bulk=bulk)
        i = j
    return out
