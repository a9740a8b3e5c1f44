"""The WireGuard cross-platform userspace API text protocol (wireguard.com/xplatform), pure.

This is what ``wg`` speaks to a userspace implementation over ``/var/run/wireguard/IFACE.sock``
(the socket itself lives in :mod:`vpn.uapi_server`).  No sockets, no clocks here.

Protocol
--------
1. A request is an operation line, ``get=1`` or ``set=1``, then ``key=value`` lines, then a
   blank line.  :func:`read_request` splits one request out of its text.
2. ``get=1`` has no body.  The reply (:func:`format_get`) lists the device keys
   (``private_key``, ``listen_port``, ``fwmark``; each only if set), then for each peer
   ``public_key``, ``preshared_key``, ``protocol_version``, ``endpoint``,
   ``last_handshake_time_sec``/``_nsec``, ``tx_bytes``, ``rx_bytes``,
   ``persistent_keepalive_interval`` and one ``allowed_ip`` per prefix, and ends with
   ``errno=0`` and a blank line.  This is wireguard-go's order; ``wg`` accepts any order.
3. ``set=1`` lines (:func:`parse_set`) are device keys until the first ``public_key``, which
   starts a peer; every later line belongs to the latest peer.  Keys are lowercase hex (not
   base64); an all-zero ``private_key`` or ``preshared_key`` clears it.  The reply is just
   ``errno=N`` and a blank line (:func:`format_errno`).
4. Errors are negative errno values, as wireguard-go's ``ipc`` package writes them
   (``IpcErrorInvalid = -EINVAL``): a line without ``=`` is ``-EPROTO``, anything else
   malformed ``-EINVAL``, a port that cannot be bound ``-EADDRINUSE``.  ``wg`` negates the
   value and prints ``strerror`` ("Invalid argument").

Where wireguard-go applies a ``set`` line by line, :func:`parse_set` validates the whole
request first and returns a :class:`SetRequest` that the daemon applies in order; ``wg``
always sends ``replace_allowed_ips`` before the ``allowed_ip`` lines, so nothing is lost.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .config import SECRET_FIELDS, redacted_repr
from .util import format_endpoint

__all__ = [
    "IPC_ERROR_INVALID", "IPC_ERROR_IO", "IPC_ERROR_PORT_IN_USE", "IPC_ERROR_PROTOCOL", "IPC_ERROR_UNKNOWN",
    "DeviceState", "PeerSet", "PeerState", "SetRequest", "UapiError", "format_errno",
    "format_get", "format_set", "parse_endpoint", "parse_get", "parse_set", "read_request",
]

# -- errno values on the ``errno=`` line (wireguard-go ipc/uapi_unix.go) ------------------------
IPC_ERROR_IO = -_errno.EIO
IPC_ERROR_PROTOCOL = -_errno.EPROTO
IPC_ERROR_INVALID = -_errno.EINVAL
IPC_ERROR_PORT_IN_USE = -_errno.EADDRINUSE
IPC_ERROR_UNKNOWN = -55  # ENOANO on Linux: "other UAPI error"

KEY_HEX_LEN = 64  # 32-byte keys as lowercase hex
PROTOCOL_VERSION = 1


class UapiError(ValueError):
    """A refused request.

    :ivar errno: the negative value for the ``errno=`` line (a positive one is negated, so
        ``UapiError(errno.EINVAL, ...)`` also works).
    """

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = -abs(errno)


def _invalid(message: str) -> UapiError:
    return UapiError(IPC_ERROR_INVALID, message)


def _shown(text: str) -> str:
    """``text`` quoted for a message if it is short; longer text may be a key and is not echoed."""
    return repr(text) if len(text) <= 32 else f"({len(text)} characters, not shown)"


# -- set ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, repr=False)
class PeerSet:
    """The lines of a ``set=1`` request from one ``public_key`` to the next.

    :ivar public_key: 32 bytes.
    :ivar remove: ``remove=true``: remove the peer (other lines for it are then ignored).
    :ivar update_only: ``update_only=true``: change the peer only if it exists already.
    :ivar preshared_key: 32 bytes (all zero = remove the preshared key), or None to keep it.
    :ivar endpoint: ``(ip, port)``; the host is always an IP literal here (IPv6 may carry a
        ``%zone``), or None to keep it.
    :ivar persistent_keepalive: seconds (0 = off), or None to keep it.
    :ivar replace_allowed_ips: drop the peer's allowed IPs before adding ``allowed_ips``.
    :ivar allowed_ips: CIDRs to add, host bits cleared, in request order.
    :ivar protocol_version: 1 if the request named it, else None.
    """

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: tuple[str, ...] = ()
    protocol_version: int | None = None

    def __repr__(self) -> str:
        return redacted_repr(self)


@dataclass(frozen=True, slots=True, repr=False)
class SetRequest:
    """A parsed ``set=1`` request; apply device keys, then ``replace_peers``, then peers in order.

    :ivar private_key: 32 bytes (all zero = remove the private key), or None to keep it.
    :ivar listen_port: 0..65535 (0 = any), or None to keep it.
    :ivar fwmark: 0..2**32-1 (0 = off), or None to keep it.
    :ivar replace_peers: remove every peer before applying ``peers``.
    :ivar peers: the peer changes in request order (one public key may appear twice).
    """

    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: tuple[PeerSet, ...] = ()

    def __repr__(self) -> str:
        return redacted_repr(self)


_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_UINT = re.compile(r"[0-9]+")  # Go's strconv.ParseUint(v, 10, n): ASCII digits, no sign


def _hex_key(key: str, value: str) -> bytes:
    if not _HEX_KEY.fullmatch(value):
        # Never echo the value: it may be a private key.
        raise _invalid(f"{key}: not a key ({KEY_HEX_LEN} hex digits expected, got {len(value)} characters)")
    return bytes.fromhex(value)


def _uint(key: str, value: str, bits: int) -> int:
    if not _UINT.fullmatch(value):
        raise _invalid(f"{key}: {value[:40]!r} is not a number")
    n = int(value)
    if n >= 1 << bits:
        raise _invalid(f"{key}: {n} is out of range (0..{(1 << bits) - 1})")
    return n


def _true(key: str, value: str) -> bool:
    if value != "true":
        raise _invalid(f"{key}: the only valid value is 'true', got {value[:40]!r}")
    return True


def parse_endpoint(value: str) -> tuple[str, int]:
    """``ip:port`` or ``[ipv6]:port`` (Go's ``netip.ParseAddrPort``) → ``(ip, port)``.

    :raises UapiError: host names, IPv6 without brackets, IPv4 in brackets, ports above 65535.
    """
    m = re.fullmatch(r"\[([^\[\]]+)\]:([0-9]{1,5})", value) or re.fullmatch(r"([^\[\]:]+):([0-9]{1,5})", value)
    if not m:
        raise _invalid(f"endpoint: {value[:64]!r} is not ip:port or [ipv6]:port")
    host, port = m.group(1), int(m.group(2))
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise _invalid(f"endpoint: {host[:64]!r} is not an IP address") from None
    if (addr.version == 6) != value.startswith("["):
        raise _invalid(f"endpoint: {value[:64]!r}: brackets go around IPv6 addresses only")
    if port > 65535:
        raise _invalid(f"endpoint: port {port} is out of range")
    return str(addr), port


def _allowed_ip(value: str) -> str:
    # Go's netip.ParsePrefix: an address, '/', a prefix length; host bits allowed (the table clears them).
    addr, slash, plen = value.partition("/")
    if not slash or not re.fullmatch(r"0|[1-9][0-9]{0,2}", plen) or "%" in addr:
        raise _invalid(f"allowed_ip: {value[:64]!r} is not address/prefix-length")
    try:
        return str(ipaddress.ip_network(f"{addr}/{int(plen)}", strict=False))
    except ValueError:
        raise _invalid(f"allowed_ip: {value[:64]!r} is not a valid prefix") from None


@dataclass(slots=True, repr=False)
class _PeerBuilder:
    public_key: bytes
    values: dict[str, Any] = field(default_factory=dict)
    allowed_ips: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # values may hold the preshared key
        shown = {k: "(hidden)" if k in SECRET_FIELDS and v is not None else v for k, v in self.values.items()}
        return f"_PeerBuilder(public_key={self.public_key!r}, values={shown!r}, allowed_ips={self.allowed_ips!r})"

    def build(self) -> PeerSet:
        return PeerSet(public_key=self.public_key, allowed_ips=tuple(self.allowed_ips), **self.values)


def parse_set(lines: Sequence[str]) -> SetRequest:
    """Parse the ``key=value`` lines of a ``set=1`` request (after the ``set=1`` line).

    :param lines: the lines without their newlines; a blank line ends the request (the rest
        is not read, as on the socket).
    :raises UapiError: the first bad line: ``-EPROTO`` for a line without ``=``, ``-EINVAL`` for
        an unknown key or a bad value.  Key values are never echoed in messages.
    """
    device: dict[str, Any] = {}
    peers: list[_PeerBuilder] = []
    peer: _PeerBuilder | None = None
    for line in lines:
        if line == "":
            break
        key, eq, value = line.partition("=")
        if not eq:
            raise UapiError(IPC_ERROR_PROTOCOL, f"failed to parse line {_shown(line)} (no '=')")
        if key == "public_key":
            peer = _PeerBuilder(_hex_key(key, value))
            peers.append(peer)
            continue
        if peer is None:
            if key == "private_key":
                device["private_key"] = _hex_key(key, value)
            elif key == "listen_port":
                device["listen_port"] = _uint(key, value, 16)
            elif key == "fwmark":
                device["fwmark"] = _uint(key, value, 32)
            elif key == "replace_peers":
                device["replace_peers"] = _true(key, value)
            else:
                raise _invalid(f"invalid UAPI device key: {key[:40]!r}")
            continue
        v = peer.values
        if key == "update_only":
            v["update_only"] = _true(key, value)
        elif key == "remove":
            v["remove"] = _true(key, value)
        elif key == "preshared_key":
            v["preshared_key"] = _hex_key(key, value)
        elif key == "endpoint":
            v["endpoint"] = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            v["persistent_keepalive"] = _uint(key, value, 16)
        elif key == "replace_allowed_ips":
            v["replace_allowed_ips"] = _true(key, value)
        elif key == "allowed_ip":
            peer.allowed_ips.append(_allowed_ip(value))
        elif key == "protocol_version":
            if value != str(PROTOCOL_VERSION):
                raise _invalid(f"invalid protocol version: {value[:40]!r}")
            v["protocol_version"] = PROTOCOL_VERSION
        else:
            raise _invalid(f"invalid UAPI peer key: {key[:40]!r}")
    return SetRequest(peers=tuple(p.build() for p in peers), **device)


def format_set(req: SetRequest) -> str:
    """The ``set=1`` request for ``req``, blank line included (what ``wg`` would send).

    The inverse of :func:`read_request` + :func:`parse_set`; handy for tests and clients.
    """
    out = ["set=1"]
    if req.private_key is not None:
        out.append(f"private_key={req.private_key.hex()}")
    if req.listen_port is not None:
        out.append(f"listen_port={req.listen_port}")
    if req.fwmark is not None:
        out.append(f"fwmark={req.fwmark}")
    if req.replace_peers:
        out.append("replace_peers=true")
    for p in req.peers:
        out.append(f"public_key={p.public_key.hex()}")
        if p.remove:
            out.append("remove=true")
        if p.update_only:
            out.append("update_only=true")
        if p.preshared_key is not None:
            out.append(f"preshared_key={p.preshared_key.hex()}")
        if p.endpoint is not None:
            out.append(f"endpoint={format_endpoint(p.endpoint, unmap_v4=True)}")
        if p.persistent_keepalive is not None:
            out.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        if p.replace_allowed_ips:
            out.append("replace_allowed_ips=true")
        out.extend(f"allowed_ip={a}" for a in p.allowed_ips)
        if p.protocol_version is not None:
            out.append(f"protocol_version={p.protocol_version}")
    return "\n".join(out) + "\n\n"


# -- get ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, repr=False)
class PeerState:
    """One peer in a ``get=1`` reply.

    :ivar public_key: 32 bytes.
    :ivar preshared_key: 32 bytes, or None (sent as all zero).
    :ivar endpoint: ``(host, port, ...)`` as a socket gives it (an IPv4-mapped IPv6 host is
        shown as IPv4), or None.
    :ivar persistent_keepalive: seconds, 0 = off.
    :ivar allowed_ips: CIDRs in the peer's order.
    :ivar last_handshake_time_sec: wall-clock time of the last handshake (0 = never).
    :ivar last_handshake_time_nsec: its nanoseconds part.
    :ivar rx_bytes: bytes received from the peer (whole datagrams, as wireguard-go counts).
    :ivar tx_bytes: bytes sent to the peer.
    :ivar protocol_version: always 1.
    """

    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: tuple[Any, ...] | None = None
    persistent_keepalive: int = 0
    allowed_ips: Sequence[str] = ()
    last_handshake_time_sec: int = 0
    last_handshake_time_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    protocol_version: int = PROTOCOL_VERSION

    def __repr__(self) -> str:
        return redacted_repr(self)


@dataclass(frozen=True, slots=True, repr=False)
class DeviceState:
    """The device in a ``get=1`` reply.

    :ivar private_key: 32 bytes, or None if the device has none (then not sent).
    :ivar listen_port: the bound UDP port (not sent if 0).
    :ivar fwmark: the socket mark (not sent if 0).
    :ivar peers: the peers, in the order to list them.
    """

    private_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: Sequence[PeerState] = ()

    def __repr__(self) -> str:
        return redacted_repr(self)


def format_get(state: DeviceState) -> str:
    """The reply to ``get=1``, in wireguard-go's order, ending with ``errno=0`` and a blank line."""
    out: list[str] = []
    if state.private_key is not None and any(state.private_key):
        out.append(f"private_key={state.private_key.hex()}")
    if state.listen_port:
        out.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        out.append(f"fwmark={state.fwmark}")
    for p in state.peers:
        out.append(f"public_key={p.public_key.hex()}")
        out.append(f"preshared_key={(p.preshared_key or bytes(32)).hex()}")
        out.append(f"protocol_version={p.protocol_version}")
        if p.endpoint is not None and len(p.endpoint) >= 2:
            out.append(f"endpoint={format_endpoint(p.endpoint, unmap_v4=True)}")
        out.append(f"last_handshake_time_sec={p.last_handshake_time_sec}")
        out.append(f"last_handshake_time_nsec={p.last_handshake_time_nsec}")
        out.append(f"tx_bytes={p.tx_bytes}")
        out.append(f"rx_bytes={p.rx_bytes}")
        out.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        out.extend(f"allowed_ip={a}" for a in p.allowed_ips)
    out.append("errno=0")
    return "\n".join(out) + "\n\n"


def parse_get(text: str) -> DeviceState:
    """Parse a ``get=1`` reply (what :func:`format_get` writes, or wireguard-go's).

    :raises UapiError: a malformed line, or the reply's own non-zero ``errno`` (with that value).
    """
    dev: dict[str, Any] = {}
    peers: list[dict[str, Any]] = []
    for line in text.split("\n"):
        if line == "":
            break
        key, eq, value = line.partition("=")
        if not eq:
            raise UapiError(IPC_ERROR_PROTOCOL, f"failed to parse line {line[:40]!r}")
        cur = peers[-1] if peers else dev
        if key == "errno":
            if not re.fullmatch(r"-?[0-9]+", value):
                raise UapiError(IPC_ERROR_PROTOCOL, f"errno: {value[:40]!r} is not a number")
            if int(value):
                raise UapiError(int(value), f"the device answered errno={value}")
        elif key == "public_key":
            peers.append({"public_key": _hex_key(key, value), "allowed_ips": []})
        elif key == "private_key" and not peers:
            k = _hex_key(key, value)
            dev[key] = k if any(k) else None
        elif key in ("listen_port", "fwmark") and not peers:
            dev[key] = _uint(key, value, 16 if key == "listen_port" else 32)
        elif not peers:
            raise _invalid(f"unexpected device key {key[:40]!r}")
        elif key == "preshared_key":
            k = _hex_key(key, value)
            cur[key] = k if any(k) else None
        elif key == "endpoint":
            cur["endpoint"] = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            cur["persistent_keepalive"] = _uint(key, value, 16)
        elif key == "allowed_ip":
            cur["allowed_ips"].append(_allowed_ip(value))
        elif key in ("last_handshake_time_sec", "last_handshake_time_nsec", "rx_bytes", "tx_bytes",
                     "protocol_version"):
            cur[key] = _uint(key, value, 64)
        else:
            raise _invalid(f"unexpected peer key {key[:40]!r}")
    return DeviceState(peers=tuple(PeerState(**{**p, "allowed_ips": tuple(p["allowed_ips"])}) for p in peers),
                       **dev)


# -- framing ------------------------------------------------------------------------------------
def read_request(text: str) -> tuple[Literal["get", "set"], list[str]]:
    """Split one whole request, ``get=1\\n\\n`` or ``set=1\\n...\\n\\n``, into its operation and lines.

    A ``set`` whose final blank line is missing is accepted (wireguard-go applies what it read
    at end of stream); a ``get`` must be exactly ``get=1`` and a blank line.

    :raises UapiError: ``-EINVAL`` for an unknown operation (wireguard-go then closes the
        connection without a reply), a ``get`` with a body, or text after the blank line.
    """
    op, nl, rest = text.partition("\n")
    if not nl or op not in ("get=1", "set=1"):
        raise _invalid(f"invalid UAPI operation: {_shown(op)}")
    if op == "get=1":
        if rest != "\n":
            raise _invalid("trailing characters in UAPI get" if rest else "incomplete UAPI get")
        return "get", []
    parts = rest.split("\n")
    end = parts.index("") if "" in parts else len(parts)
    if any(parts[end + 1:]):
        raise _invalid("text after the end of the request (one request at a time)")
    return "set", parts[:end]


def format_errno(code: int) -> str:
    """The reply status line: ``errno=0`` or ``errno=-22`` and a blank line (positive codes are negated)."""
    return f"errno={-abs(code)}\n\n"
