"""The WireGuard cross-platform userspace API text protocol (wireguard.com/xplatform), pure.

``get=1`` is answered by :func:`format_get`; the lines of a ``set=1`` request are parsed by
:func:`parse_set` into a :class:`SetRequest` that the daemon applies in order.  Keys are hex on
this interface, not base64.  Errors carry the negative errno that wireguard-go's ``errno=`` line
uses (``IpcErrorInvalid = -EINVAL``); ``wg`` reports any non-zero value as a failure.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from crypto.errors import KeyFormatError
from crypto.keys import decode_hex_key

from .config import parse_endpoint


class UapiError(Exception):
    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


def _invalid(message: str) -> UapiError:
    return UapiError(-_errno.EINVAL, message)


@dataclass(slots=True)
class PeerSet:
    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None  # all-zero = remove the preshared key
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SetRequest:
    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerSet] = field(default_factory=list)


@dataclass(slots=True)
class PeerState:
    public_key: bytes
    preshared_key: bytes | None
    endpoint: Any
    persistent_keepalive: int
    allowed_ips: list[str]
    last_handshake_time_sec: int
    last_handshake_time_nsec: int
    rx_bytes: int
    tx_bytes: int


@dataclass(slots=True)
class DeviceState:
    private_key: bytes | None
    listen_port: int
    fwmark: int
    peers: list[PeerState]


def _bool_true(key: str, value: str) -> bool:
    if value != "true":
        raise _invalid(f"{key} must be 'true', got {value!r}")
    return True


def _hex_key(key: str, value: str) -> bytes:
    try:
        return decode_hex_key(value, what=key)
    except KeyFormatError as e:
        raise _invalid(str(e)) from None


def _uint(key: str, value: str, hi: int) -> int:
    if not value.isdigit():
        raise _invalid(f"{key}: {value!r} is not a number")
    n = int(value)
    if n > hi:
        raise _invalid(f"{key}: {n} is out of range")
    return n


def parse_set(lines: list[str]) -> SetRequest:
    """Parse the ``key=value`` lines of a ``set=1`` request (without the blank line)."""
    req = SetRequest()
    peer: PeerSet | None = None
    for line in lines:
        if "=" not in line:
            raise _invalid(f"line without '=': {line[:40]!r}")
        key, value = line.split("=", 1)
        if key == "public_key":
            peer = PeerSet(_hex_key(key, value))
            req.peers.append(peer)
            continue
        if peer is None:
            if key == "private_key":
                req.private_key = _hex_key(key, value)
            elif key == "listen_port":
                req.listen_port = _uint(key, value, 65535)
            elif key == "fwmark":
                req.fwmark = _uint(key, value, 0xFFFFFFFF) if value else 0
            elif key == "replace_peers":
                req.replace_peers = _bool_true(key, value)
            else:
                raise _invalid(f"invalid UAPI device key {key!r}")
            continue
        if key == "update_only":
            peer.update_only = _bool_true(key, value)
        elif key == "remove":
            peer.remove = _bool_true(key, value)
        elif key == "preshared_key":
            peer.preshared_key = _hex_key(key, value)
        elif key == "endpoint":
            try:
                host, port = parse_endpoint(value)
                ipaddress.ip_address(host)
            except ValueError as e:
                raise _invalid(f"endpoint: {e}") from None
            peer.endpoint = (host, port)
        elif key == "persistent_keepalive_interval":
            peer.persistent_keepalive = _uint(key, value, 65535)
        elif key == "replace_allowed_ips":
            peer.replace_allowed_ips = _bool_true(key, value)
        elif key == "allowed_ip":
            try:
                peer.allowed_ips.append(str(ipaddress.ip_network(value, strict=False)))
            except ValueError:
                raise _invalid(f"allowed_ip: {value!r} is not a network") from None
        elif key == "protocol_version":
            if value != "1":
                raise _invalid(f"protocol_version {value!r} is not supported")
        else:
            raise _invalid(f"invalid UAPI peer key {key!r}")
    return req


def _endpoint_text(ep: Any) -> str | None:
    if isinstance(ep, tuple) and len(ep) >= 2:
        host = str(ep[0])
        return f"[{host}]:{ep[1]}" if ":" in host else f"{host}:{ep[1]}"
    return None


def format_get(state: DeviceState) -> str:
    """The reply to ``get=1``, in wireguard-go's order, ending with ``errno=0`` and a blank line."""
    out: list[str] = []
    if state.private_key is not None:
        out.append(f"private_key={state.private_key.hex()}")
    if state.listen_port:
        out.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        out.append(f"fwmark={state.fwmark}")
    for p in state.peers:
        out.append(f"public_key={p.public_key.hex()}")
        out.append(f"preshared_key={(p.preshared_key or bytes(32)).hex()}")
        out.append("protocol_version=1")
        ep = _endpoint_text(p.endpoint)
        if ep:
            out.append(f"endpoint={ep}")
        out.append(f"last_handshake_time_sec={p.last_handshake_time_sec}")
        out.append(f"last_handshake_time_nsec={p.last_handshake_time_nsec}")
        out.append(f"tx_bytes={p.tx_bytes}")
        out.append(f"rx_bytes={p.rx_bytes}")
        out.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        out.extend(f"allowed_ip={a}" for a in p.allowed_ips)
    out.append("errno=0")
    return "\n".join(out) + "\n\n"
