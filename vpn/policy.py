"""Per-client policy on a server: access rules, a rate limit, expiry and disable.  Pure (sans-IO).

Theory of operation
-------------------
A server's ``[Peer]`` may carry, in ``#pyvpn`` lines (wg-quick and ``wg`` ignore them):

- ``Allow = RULE, ...`` and ``Deny = RULE, ...``: which destinations the client may reach through the
  server.  A ``RULE`` is ``PREFIX [PROTO [PORT | LO-HI]]``, e.g. ``198.51.100.0/24``,
  ``10.0.0.5 tcp 22``, ``fd00::/8 udp 5000-5100``, ``192.0.2.1/32 icmp``.  ``PROTO`` is ``tcp``,
  ``udp``, ``sctp``, ``icmp`` (ICMP for an IPv4 prefix, ICMPv6 for an IPv6 one), ``icmpv6`` or a
  protocol number; a port needs tcp, udp or sctp.  A packet is **denied** when its destination
  matches a ``Deny`` rule, or when the client has ``Allow`` rules and it matches none of them;
  otherwise it is allowed (no rules: everything, as without a policy).  Rules apply to every packet
  the client sends into the tunnel, whether the server writes it to its tun or forwards it to another
  peer, the server's own addresses included.  A port rule never matches a non-first fragment (it
  carries no ports).
- ``RateLimit = 50mbit``: a token bucket per direction (from the client, to the client) on the inner
  IP packets; packets beyond it are dropped (policed, not queued).  The bucket holds
  :data:`BURST_TIME` seconds of the rate (at least :data:`MIN_BURST` bytes).
- ``Expires = 2027-01-05T00:00:00Z``: from then on, the client is refused.
- ``Disabled = true``: the client is refused.

A refused client's handshakes are refused and its session is dropped at once (see
:meth:`crypto.tunnel.Tunnel.set_refused`).

This module parses and formats the values and holds the pure classifier of the data path,
:class:`AccessRules` (bytes in, verdicts out); the rate limit is :class:`crypto.ratelimiter.TokenBucket` with one
token a byte (:func:`bucket_for_rate`; packets and ``now`` in, how many fit out).
:class:`vpn.device.Device` applies them.
"""

from __future__ import annotations

import calendar
import ipaddress
import re
import time
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from crypto.constants import BULK_MIN
from crypto.ratelimiter import TokenBucket

Net = ipaddress.IPv4Network | ipaddress.IPv6Network

# -- implementation constants ------------------------------------------------------------------
#: Seconds of the rate the token bucket holds (its depth).  A policer drops whole bursts, and TCP then
#: stalls on retransmission timeouts, so the bucket is deep; the price is a first burst of 0.2 s of the
#: rate at line speed (measured: benchmarks/results-by-commit.md).
BURST_TIME = 0.2
#: The smallest bucket, in bytes (about 45 full-size packets).
MIN_BURST = 64 * 1024
#: Verdicts cached per :class:`AccessRules` before the cache is cleared (bounds memory).
CACHE_SIZE = 4096

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "icmpv6": 58}
_PORT_PROTOCOLS = frozenset((6, 17, 132))
_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}
# IPv6 extension headers walked to find the transport header (RFC 8200 §4): hop-by-hop, routing,
# destination options use (len + 1) * 8 bytes; AH (RFC 4302) uses (len + 2) * 4; fragment is 8.
_V6_EXT = frozenset((0, 43, 60))
_V6_FRAGMENT, _V6_AH = 44, 51


# -- rules -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Rule:
    """One access rule: a destination prefix, optionally a protocol and a port range.

    :ivar network: the destination prefix (host bits cleared).
    :ivar proto: IP protocol number (``Next Header`` for IPv6), or None for any.
    :ivar ports: ``(lo, hi)`` destination ports (inclusive), or None for any; only with
        tcp, udp or sctp.
    """

    network: Net
    proto: int | None = None
    ports: tuple[int, int] | None = None

    def __str__(self) -> str:
        out = str(self.network)
        if self.proto is not None:
            v4 = self.network.version == 4
            if (self.proto == 1 and v4) or (self.proto == 58 and not v4):
                name = "icmp"
            elif self.proto == 58:
                name = "icmpv6"
            else:
                name = _PROTO_NAMES.get(self.proto, str(self.proto))
            out += f" {name}"
        if self.ports is not None:
            lo, hi = self.ports
            out += f" {lo}" if lo == hi else f" {lo}-{hi}"
        return out

    def matches(self, version: int, dst: int, proto: int, port: int | None) -> bool:
        """Whether a packet with these header fields matches (the reference semantics)."""
        net = self.network
        if version != net.version or dst >> (net.max_prefixlen - net.prefixlen) != \
                int(net.network_address) >> (net.max_prefixlen - net.prefixlen):
            return False
        if self.proto is not None and proto != self.proto:
            return False
        return self.ports is None or (port is not None and self.ports[0] <= port <= self.ports[1])


def _port(v: str) -> int:
    if not v.isdigit() or not 0 <= int(v) <= 65535:
        raise ValueError(f"{v!r} is not a port (0..65535)")
    return int(v)


def parse_rule(text: str) -> Rule:
    """``PREFIX [PROTO [PORT | LO-HI]]`` → :class:`Rule`.

    :raises ValueError: with a short reason.
    """
    parts = text.split()
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"{text!r} is not 'PREFIX [PROTO [PORT|LO-HI]]'")
    try:
        net: Net = ipaddress.ip_network(parts[0], strict=False)
    except ValueError:
        raise ValueError(f"{parts[0]!r} is not an IP address or prefix") from None
    proto: int | None = None
    ports: tuple[int, int] | None = None
    if len(parts) >= 2:
        name = parts[1].lower()
        if name == "icmp":
            proto = 1 if net.version == 4 else 58
        elif name in PROTOCOLS:
            proto = PROTOCOLS[name]
        elif name.isdigit() and int(name) <= 255:
            proto = int(name)
        elif name != "any":
            raise ValueError(f"{parts[1]!r} is not a protocol (tcp, udp, sctp, icmp, icmpv6, any or 0..255)")
    if len(parts) == 3:
        if proto not in _PORT_PROTOCOLS:
            raise ValueError(f"{text!r}: a port needs tcp, udp or sctp")
        lo_s, _, hi_s = parts[2].partition("-")
        lo = _port(lo_s)
        hi = _port(hi_s) if hi_s else lo
        if hi < lo:
            raise ValueError(f"{parts[2]!r} is an empty port range")
        ports = (lo, hi)
    return Rule(net, proto, ports)


def parse_rules(text: str) -> list[Rule]:
    """A comma-separated list of rules (what one ``Allow``/``Deny`` line holds)."""
    return [parse_rule(x.strip()) for x in text.split(",") if x.strip()]


# -- the classifier ----------------------------------------------------------------------------
def packet_fields(packet: bytes) -> tuple[int, int, int, int | None] | None:
    """``(version, destination as int, protocol, destination port or None)`` of an IP packet.

    The port is read for tcp, udp and sctp in the first (or only) fragment when the header is
    there.  IPv6 extension headers (hop-by-hop, routing, destination options, fragment, AH) are
    walked.  None for a packet too short to have a destination (or of another version).
    """
    n = len(packet)
    if n < 20:
        return None
    v = packet[0] >> 4
    if v == 4:
        proto = packet[9]
        dst = int.from_bytes(packet[16:20], "big")
        off = (packet[0] & 0x0F) * 4
        first = (packet[6] & 0x1F) == 0 and packet[7] == 0
    elif v == 6:
        if n < 40:
            return None
        dst = int.from_bytes(packet[24:40], "big")
        proto = packet[6]
        off = 40
        first = True
        for _ in range(8):
            if proto in _V6_EXT and off + 2 <= n:
                proto, off = packet[off], off + (packet[off + 1] + 1) * 8
            elif proto == _V6_FRAGMENT and off + 8 <= n:
                first = first and (packet[off + 2] << 8 | packet[off + 3]) >> 3 == 0
                proto, off = packet[off], off + 8
            elif proto == _V6_AH and off + 2 <= n:
                proto, off = packet[off], off + (packet[off + 1] + 2) * 4
            else:
                break
    else:
        return None
    port = None
    if proto in _PORT_PROTOCOLS and first and off + 4 <= n:
        port = packet[off + 2] << 8 | packet[off + 3]
    return v, dst, proto, port


def reference_allows(allow: tuple[Rule, ...], deny: tuple[Rule, ...], packet: bytes) -> bool:
    """The verdict, rule by rule with :meth:`Rule.matches`: the naive reference of :class:`AccessRules`."""
    f = packet_fields(packet)
    if f is None:
        return not allow and not deny
    if any(r.matches(*f) for r in deny):
        return False
    return not allow or any(r.matches(*f) for r in allow)


_Compiled = tuple[int, int, int, int, int, int]  # version, shift, prefix value, proto (-1 any), lo, hi


def _compile(rules: tuple[Rule, ...]) -> tuple[_Compiled, ...]:
    out = []
    for r in rules:
        net = r.network
        shift = net.max_prefixlen - net.prefixlen
        lo, hi = r.ports if r.ports is not None else (-1, 1 << 16)
        out.append((net.version, shift, int(net.network_address) >> shift,
                    -1 if r.proto is None else r.proto, lo, hi))
    return tuple(out)


def _hit(compiled: tuple[_Compiled, ...], v: int, dst: int, proto: int, port: int) -> bool:
    for rv, shift, prefix, rproto, lo, hi in compiled:
        if rv == v and dst >> shift == prefix and (rproto < 0 or rproto == proto) and lo <= port <= hi:
            return True
    return False


class AccessRules:
    """The classifier for one client: verdicts on IP packets by destination, protocol and port.

    Verdicts are cached per ``(destination, protocol, port)`` (per destination alone when no rule
    names a protocol or port), and consecutive packets of one flow reuse the previous verdict, so a
    batch costs about one dictionary look-up a packet.

    :param allow: the ``Allow`` rules (any: only what they match is allowed).
    :param deny: the ``Deny`` rules (checked first).
    """

    __slots__ = ("_allow", "_cache", "_deny", "_dst_only", "_has_allow", "allow", "deny")

    def __init__(self, allow: tuple[Rule, ...], deny: tuple[Rule, ...]) -> None:
        self.allow, self.deny = allow, deny
        self._allow, self._deny = _compile(allow), _compile(deny)
        self._has_allow = bool(allow)
        self._dst_only = all(r.proto is None and r.ports is None for r in (*allow, *deny))
        self._cache: dict[Any, bool] = {}

    def _decide(self, v: int, dst: int, proto: int, port: int | None) -> bool:
        p = -1 if port is None else port
        if _hit(self._deny, v, dst, proto, p):
            return False
        return not self._has_allow or _hit(self._allow, v, dst, proto, p)

    def allows(self, packet: bytes) -> bool:
        """The verdict for one packet (a packet without a readable destination is denied)."""
        return self.split([packet])[1] == 0

    def split(self, packets: list[bytes], *, bulk: bool = True) -> tuple[list[bytes], int]:
        """``(allowed packets in order, number denied)``.

        :param bulk: give a batch of one flow (:data:`~crypto.constants.BULK_MIN` packets or more) one verdict;
            ``False`` runs the per-packet loop alone (tests compare both).
        """
        if bulk and len(packets) >= BULK_MIN and self._one_flow(packets):  # a bulk batch: one verdict for all
            f = packet_fields(packets[0])
            if f is not None and self._decide(*f):
                return packets, 0
            return [], len(packets)
        cache = self._cache
        if len(cache) > CACHE_SIZE:
            cache.clear()
        out: list[bytes] = []
        append = out.append
        denied = 0
        dst_only = self._dst_only
        last_key: Any = None
        verdict = False
        for p in packets:
            if dst_only:
                b0 = p[0] >> 4 if p else 0
                key: Any = p[16:20] if b0 == 4 and len(p) >= 20 else p[24:40] if b0 == 6 and len(p) >= 40 else None
            else:
                key = packet_fields(p)
            if key != last_key or key is None:
                last_key = key
                if key is None:
                    verdict = False
                else:
                    got = cache.get(key)
                    if got is None:
                        f = packet_fields(p) if dst_only else key
                        got = cache[key] = f is not None and self._decide(*f)
                    verdict = got
            if verdict:
                append(p)
            else:
                denied += 1
        return out, denied


    def _one_flow(self, packets: list[bytes]) -> bool:
        """Whether every packet gets the first one's verdict, checked with C-level loops (no bytecode per
        packet): the same IP version and destination and, when a rule names a protocol or port, the same
        fragment fields, protocol and ports in IPv4 packets without options, or the same next header and
        ports in IPv6 packets without extension headers."""
        n = len(packets)
        if min(map(len, packets)) < 44:
            return False
        b0 = bytes(map(_first, packets))
        if b0.count(b0[0]) != n:
            return False
        v = b0[0] >> 4
        if self._dst_only:
            dsts = list(map(_v4_dst if v == 4 else _v6_dst, packets)) if v in (4, 6) else []
            return bool(dsts) and dsts.count(dsts[0]) == n
        if b0[0] == 0x45:
            heads = list(map(_v4_frag_proto, packets))  # equal headers and ports: equal fields
            if heads.count(heads[0]) != n:
                return False
            flows = list(map(_v4_dst_ports, packets))
        elif v == 6:
            nxt = bytes(map(_v6_next, packets))
            if nxt.count(nxt[0]) != n or nxt[0] in _V6_EXT or nxt[0] in (_V6_FRAGMENT, _V6_AH):
                return False
            flows = list(map(_v6_dst_ports, packets))
        else:
            return False
        return flows.count(flows[0]) == n


_first = itemgetter(0)
_v4_dst = itemgetter(slice(16, 20))
_v6_dst = itemgetter(slice(24, 40))
_v4_frag_proto = itemgetter(6, 7, 9)  # flags and fragment offset, protocol
_v4_dst_ports = itemgetter(slice(16, 24))  # destination, then the ports (a 20-byte header)
_v6_next = itemgetter(6)
_v6_dst_ports = itemgetter(slice(24, 44))  # destination, then the ports (no extension header)


# -- the rate limit ----------------------------------------------------------------------------
def bucket_for_rate(bits_per_second: int) -> TokenBucket:
    """The token bucket (one token a byte, :meth:`crypto.ratelimiter.TokenBucket.admit`) for a ``RateLimit`` in
    bits per second; its depth is :data:`BURST_TIME` of the rate, at least :data:`MIN_BURST` bytes."""
    rate = bits_per_second / 8
    return TokenBucket(rate, max(rate * BURST_TIME, MIN_BURST))


# -- values ------------------------------------------------------------------------------------
_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(bit|bps|bit/s)", re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_rate(text: str) -> int | None:
    """``50mbit``, ``1.5gbit``, ``800kbit``, ``100Mbps`` (bits per second, SI prefixes) → bits per
    second; ``off`` → None.

    :raises ValueError: no unit (``50`` is ambiguous), zero, or another form.
    """
    t = text.strip()
    if t.lower() in ("off", "none", "no"):
        return None
    m = _RATE.fullmatch(t)
    if not m:
        raise ValueError(f"{text!r} is not a rate like 50mbit, 800kbit or 1gbit (bits per second)")
    bits = round(float(m.group(1)) * _SCALE[m.group(2).lower()])
    if bits < 8000:
        raise ValueError(f"{text!r} is below the smallest rate limit, 8kbit")
    return bits


def format_rate(bits: int) -> str:
    """What :func:`parse_rate` reads back: ``50mbit``, ``1500kbit``, ``12345bit``."""
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits % scale == 0:
            return f"{bits // scale}{unit}"
    return f"{bits}bit"


_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?(Z|[+-]\d{2}:?\d{2})?")
_DURATION = re.compile(r"([0-9]+)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str) -> int:
    """An absolute time, ``2027-01-05T00:00:00Z`` (ISO 8601; a date alone is midnight UTC; no zone
    means UTC; ``+02:00`` offsets are applied) → UNIX seconds.

    :raises ValueError: another form or an impossible date.
    """
    m = _ISO.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a time like 2027-01-05T00:00:00Z")
    y, mo, d, hh, mm, ss, zone = m.groups()
    try:
        import datetime as _dt

        moment = _dt.datetime(int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0))
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    secs = calendar.timegm(moment.timetuple())
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        secs -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return secs


def format_time(secs: int) -> str:
    """``2027-01-05T00:00:00Z`` (UTC): what :func:`parse_time` reads back."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(secs))


def parse_expiry(text: str, *, now: float) -> int | None:
    """``--expires``: a duration from ``now`` (``30d``, ``12h``, ``90m``, ``45s``, ``2w``), an
    absolute time (:func:`parse_time`), or ``never`` → None.

    :param now: the wall clock (UNIX seconds).
    """
    t = text.strip()
    if t.lower() in ("never", "none", "off"):
        return None
    m = _DURATION.fullmatch(t)
    if m:
        return int(now) + int(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()]
    try:
        return parse_time(t)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30d, 12h, 90m, 45s, 2w), a time like "
                         "2027-01-05T00:00:00Z, nor 'never'") from None


# -- a client's whole policy -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """What the config says about one client (the default allows everything, for ever).

    :ivar allow: ``#pyvpn Allow`` rules (all lines together).
    :ivar deny: ``#pyvpn Deny`` rules.
    :ivar rate_limit: ``#pyvpn RateLimit`` in bits per second, or None.
    :ivar expires: ``#pyvpn Expires`` as UNIX seconds, or None.
    :ivar disabled: ``#pyvpn Disabled``.
    """

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    rate_limit: int | None = None
    expires: int | None = None
    disabled: bool = False

    def state(self, wall: float) -> str:
        """``disabled``, ``expired`` or ``active`` at the wall-clock time ``wall``."""
        if self.disabled:
            return "disabled"
        if self.expires is not None and wall >= self.expires:
            return "expired"
        return "active"

    def to_wire(self) -> dict[str, Any]:
        """For the control socket and ``pyvpn show --json`` (rules as text)."""
        return {"allow": [str(r) for r in self.allow], "deny": [str(r) for r in self.deny],
                "rate_limit": self.rate_limit, "expires": self.expires, "disabled": self.disabled}

    @classmethod
    def from_wire(cls, d: Any) -> ClientPolicy:
        """The inverse of :meth:`to_wire`.

        :raises ValueError: a malformed map or rule.
        """
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise TypeError("policy must be a map")
        rate, expires = d.get("rate_limit"), d.get("expires")
        for name, v in (("rate_limit", rate), ("expires", expires)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"policy {name} must be a non-negative integer or null")
        return cls(allow=tuple(parse_rule(str(x)) for x in d.get("allow") or ()),
                   deny=tuple(parse_rule(str(x)) for x in d.get("deny") or ()),
                   rate_limit=rate, expires=expires, disabled=bool(d.get("disabled", False)))


__all__ = ["AccessRules", "ClientPolicy", "Rule", "bucket_for_rate", "format_rate", "format_time", "packet_fields",
           "parse_expiry", "parse_rate", "parse_rule", "parse_rules", "parse_time", "reference_allows"]
