"""Internet checksums (RFC 1071) at C speed: the one's-complement sums of the segmenter and GRO.

Theory: the one's-complement sum of 16-bit big-endian words equals the value of the bytes read as one
big-endian integer, modulo ``0xffff`` (because ``2**16 == 1 (mod 0xffff)``).  ``int.from_bytes`` and a few
big-int folds (``x & (2**h - 1)`` plus ``x >> h`` with ``h`` a multiple of 16, and of CPython's 30-bit
digit, so ``2**h - 1`` is a multiple of ``0xffff``) run at C speed; the final ``% 0xffff`` on a short
integer is cheap.  This beats ``sum()`` over ``array('H')`` or a ``memoryview`` cast several times over
(figures in benchmarks/results-by-commit.md, "TUN offloads").  :func:`_payload_sums` reads each segment's
payload as two halves (same residue, shorter folds) for the segmenter, which needs one sum per segment.

Sums are kept as residues modulo ``0xffff`` (0 stands for the one's-complement "0xffff") and added
freely; :func:`checksum` folds one into the 16-bit field value.
"""

from __future__ import annotations

from .virtio import Buffer

_fold_plans: dict[int, tuple[tuple[int, int], ...]] = {}
_FOLD_STOP = 1600  # bits; below this a single `% 0xffff` beats another fold step (measured)


def _fold_plan(nbytes: int) -> tuple[tuple[int, int], ...]:
    """Fold steps ``(h, 2**h - 1)`` that shrink an ``nbytes``-byte integer to about 1600 bits.

    ``h`` is a multiple of 240 bits (16-bit words and 30-bit CPython digits), so every step keeps the value
    modulo ``0xffff`` and the shifts and masks are digit-aligned.
    """
    plan = _fold_plans.get(nbytes)
    if plan is None:
        steps = []
        bits = nbytes * 8
        while bits > _FOLD_STOP:
            h = ((bits >> 1) + 239) // 240 * 240
            steps.append((h, (1 << h) - 1))
            bits = h + 1
        plan = tuple(steps)
        if len(_fold_plans) < 4096:
            _fold_plans[nbytes] = plan
    return plan


def _sum16(data: Buffer) -> int:
    """One's-complement sum of ``data`` as 16-bit big-endian words, as a residue modulo ``0xffff``.

    An odd trailing byte is padded with a zero byte (RFC 1071).  The result is in ``[0, 0xfffe]``; 0 stands
    for the one's-complement "0xffff" (and for all-zero data).
    """
    n = len(data)
    x = int.from_bytes(data, "big")
    if n > _FOLD_STOP // 8:
        for h, m in _fold_plan(n):
            x = (x & m) + (x >> h)
    x %= 0xFFFF
    if n & 1:
        x = (x << 8) % 0xFFFF
    return x


def checksum(data: Buffer, initial: int = 0) -> int:
    """RFC 1071 Internet checksum of ``data`` (plus ``initial``, e.g. a pseudo-header sum).

    :returns: the 16-bit value to store in the checksum field (0 when the sum is 0xffff, as the kernel's
        ``csum_fold`` does; UDP callers map 0 to 0xffff themselves).  All-zero input (sum 0) gives 0xffff.
    """
    r = (_sum16(data) + initial) % 0xFFFF
    if r:
        return 0xFFFF - r
    mv = memoryview(data).cast("B")
    return 0xFFFF if initial == 0 and mv.tobytes().count(0) == len(mv) else 0


def _pseudo_sum(pkt: Buffer, version: int) -> int:
    """Sum of the source and destination addresses (the address part of the pseudo-header)."""
    if version == 4:
        return int.from_bytes(pkt[12:20], "big") % 0xFFFF
    return int.from_bytes(pkt[8:40], "big") % 0xFFFF


def _payload_sums(raw: bytes, pos: int, stop: int, gso_size: int) -> list[int]:
    """Residues modulo 0xffff of the 16-bit-word sums of ``raw[pos:stop]`` cut every ``gso_size`` bytes.

    ``raw`` is a ``bytes`` object, so each slice goes to ``int.from_bytes`` without a second copy.  For an
    even ``gso_size`` each piece is read as two even-length halves whose values are added (the same
    residue, and a shorter first fold, which measured faster than one ``from_bytes`` of the whole piece).
    A short odd-length last piece is padded with a zero byte as RFC 1071 says.
    """
    frombytes = int.from_bytes
    sums: list[int] = []
    append = sums.append
    full_stop = pos + (stop - pos) // gso_size * gso_size
    if gso_size & 1 or gso_size < 2 * _FOLD_STOP // 8:
        plan = _fold_plan(gso_size)
        for p in range(pos, full_stop, gso_size):
            x = frombytes(raw[p:p + gso_size], "big")
            for h, m in plan:
                x = (x & m) + (x >> h)
            append(x % 0xFFFF if not gso_size & 1 else (x << 8) % 0xFFFF)
    else:
        a = gso_size // 4 * 2
        plan = _fold_plan(gso_size - a)
        if len(plan) == 2:  # ~800..3000-byte segments: the common case, unrolled
            (h1, m1), (h2, m2) = plan
            for p in range(pos, full_stop, gso_size):
                x = frombytes(raw[p:p + a], "big") + frombytes(raw[p + a:p + gso_size], "big")
                x = (x & m1) + (x >> h1)
                append(((x & m2) + (x >> h2)) % 0xFFFF)
        else:
            for p in range(pos, full_stop, gso_size):
                x = frombytes(raw[p:p + a], "big") + frombytes(raw[p + a:p + gso_size], "big")
                for h, m in plan:
                    x = (x & m) + (x >> h)
                append(x % 0xFFFF)
    if full_stop < stop:
        append(_sum16(raw[full_stop:stop]))
    return sums


def _l4_csum_ok(p: bytes, version: int, l4: int, proto: int) -> bool:
    r = (_pseudo_sum(p, version) + proto + (len(p) - l4) + _sum16(memoryview(p)[l4:])) % 0xFFFF
    return r == 0
