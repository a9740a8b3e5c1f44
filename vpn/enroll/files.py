"""The ``pyvpn server`` client commands on the server file: lock, read, edit (:mod:`vpn.enroll.text`), write
atomically, then update the running server (:mod:`vpn.enroll.live`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from crypto.keys import encode_key, private_from_random

from ..config import Config, PeerConfig, format_config, load_config, redacted_repr
from ..policy import ClientPolicy
from ..util import write_private
from .core import (
    DEFAULT_POOL4,
    DEFAULT_POOL6,
    DEFAULT_PORT,
    SERVER_HEADER,
    EnrollError,
    Enrollment,
    client_config_text,
    enroll,
    find_peer,
    new_server_config,
    parse_pool,
    parse_public_endpoint,
    unenroll,
)
from .live import interface_name, pull_peer, push_peer, push_policy, running_snapshot
from .text import append_peer_text, cut_peer_text, edited_text, set_policy_text


@dataclass(frozen=True, slots=True)
class ClientRow:
    """One line of ``list-clients``.

    :ivar latest_handshake: UNIX time, 0 for never, None when the server is not running or
        does not know the peer.
    :ivar policy: the client's policy in the file.
    :ivar state: ``active``, ``disabled`` or ``expired`` (from the file and the clock).
    :ivar denied: packets the running server denied by the access rules (None: not running).
    :ivar ratelimited: packets it dropped over the rate limit, both directions (None: not running).
    """

    name: str | None
    addresses: tuple[str, ...]
    public_key: str
    latest_handshake: float | None
    endpoint: str | None = None
    policy: ClientPolicy = field(default_factory=ClientPolicy)
    state: str = "active"
    denied: int | None = None
    ratelimited: int | None = None


# -- files -------------------------------------------------------------------------------------
@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the config's directory (serialises concurrent add-clients)."""
    d = Path(path).resolve().parent
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: str) -> tuple[str, Config]:
    cfg = load_config(path)
    return Path(path).read_text(encoding="utf-8"), cfg


def init_server(path: str, *, port: int = DEFAULT_PORT, pool4: str | None = DEFAULT_POOL4,
                pool6: str | None = DEFAULT_POOL6, endpoint: str | None = None, force: bool = False,
                random: bytes | None = None) -> Config:
    """Write a new server config to ``path`` (0600; the directory is made 0700 if missing).

    :param random: 32 random bytes for the private key (tests); default ``os.urandom``.
    :raises EnrollError: the file exists (without ``force``), bad pools or endpoint.
    """
    if not 1 <= port <= 65535:
        raise EnrollError(f"port {port} is out of range (1..65535)")
    net4, net6 = parse_pool(pool4, 4), parse_pool(pool6, 6)
    ep = parse_public_endpoint(endpoint, port) if endpoint else None
    p = Path(path)
    if p.exists() and not force:
        raise EnrollError(f"{path} already exists; not overwriting it (use --force to replace it and its keys)")
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    cfg = new_server_config(str(p), private_key=private_from_random(random or os.urandom(32)), port=port,
                            pool4=net4, pool6=net6, endpoint=ep)
    with locked(p):
        write_private(p, SERVER_HEADER + format_config(cfg))
    return cfg


@dataclass(frozen=True, slots=True, repr=False)
class AddResult:
    """What :func:`add_client` did.

    :ivar client_text: the client's wg-quick file.
    :ivar running: the running interface that got the peer, or None (not running).
    :ivar error: why the running server could not be updated, or None.
    """

    enrollment: Enrollment
    client_text: str
    running: str | None
    error: str | None

    def __repr__(self) -> str:  # the client's file holds its private key
        return redacted_repr(self, ("client_text",))


def add_client(path: str, name: str, *, endpoint: str | None = None, dns: Sequence[str] = (),
               psk: bool = True, live: bool = True, policy: ClientPolicy | None = None) -> AddResult:
    """Enroll ``name``: edit the server file, then update the running server if there is one.

    :param endpoint: ``HOST[:PORT]`` overriding ``#pyvpn PublicEndpoint``.
    :param psk: give the client a preshared key (default; post-quantum hedge).
    :param policy: the client's policy (access rules, rate limit, expiry).
    :param live: try the running server's control socket.
    :raises EnrollError: see :func:`enroll`; a missing or broken file is a :class:`ConfigError`.
    """
    with locked(path):
        text, cfg = _read(path)
        ep = parse_public_endpoint(endpoint, cfg.interface.listen_port or DEFAULT_PORT) if endpoint else None
        e = enroll(cfg, name, private_key=private_from_random(os.urandom(32)),
                   preshared_key=os.urandom(32) if psk else None, endpoint=ep, dns=dns, policy=policy)
        new_text = edited_text(text, e.server, append_peer_text(text, e.peer))
        write_private(path, new_text)
    iface = interface_name(cfg)
    running, error = None, None
    if live:
        running, error = push_peer(cfg, iface, e.peer)
    return AddResult(enrollment=e, client_text=client_config_text(e.client, server_name=iface),
                     running=running, error=error)


def remove_client(path: str, name: str, *, live: bool = True) -> tuple[PeerConfig, str | None, str | None]:
    """Remove ``name`` from the file and the running server: ``(peer, running iface, error)``."""
    with locked(path):
        text, cfg = _read(path)
        new, peer = unenroll(cfg, name)
        write_private(path, edited_text(text, new, cut_peer_text(text, peer)))
    iface = interface_name(cfg)
    running, error = None, None
    if live:
        running, error = pull_peer(cfg, iface, peer)
    return peer, running, error


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """What :func:`set_client` did.

    :ivar before: the client's ``[Peer]`` before the change.
    :ivar after: the client's ``[Peer]`` now in the file.
    :ivar running: the running interface that got the new policy, or None (not running).
    :ivar error: why the running server could not be updated, or None.
    """

    before: PeerConfig
    after: PeerConfig
    running: str | None
    error: str | None


def set_client(path: str, name: str, change: Callable[[ClientPolicy], ClientPolicy], *,
               live: bool = True) -> PolicyResult:
    """Change the policy of client ``name``: ``change(old policy)`` is the new one.  The file is
    edited (its other lines kept) and written atomically, then the running server is updated.

    :raises EnrollError: no such client; a missing or broken file is a :class:`ConfigError`.
    """
    with locked(path):
        text, cfg = _read(path)
        peer = find_peer(cfg, name)
        if peer is None:
            raise EnrollError(f"{cfg.path}: no client named {name!r}")
        new_peer = peer.with_policy(change(peer.policy))
        new_cfg = replace(cfg, peers=tuple(new_peer if p is peer else p for p in cfg.peers))
        write_private(path, edited_text(text, new_cfg, set_policy_text(text, peer, new_peer)))
    running, error = None, None
    if live:
        running, error = push_policy(cfg, interface_name(cfg), new_peer)
    return PolicyResult(before=peer, after=new_peer, running=running, error=error)


def list_clients(path: str, *, live: bool = True) -> tuple[Config, list[ClientRow], bool]:
    """The file's peers with their policy and state, and handshakes and policy counters from the
    running server: ``(config, rows, running)``."""
    cfg = load_config(path)
    snap = running_snapshot(cfg) if live else None
    by_key: dict[bytes, dict[str, Any]] = {}
    if snap is not None:
        by_key = {p["public_key"]: p for p in snap.get("peers", [])}
    rows = []
    wall = time.time()
    for p in cfg.peers:
        live_peer = by_key.get(p.public_key)
        rows.append(ClientRow(name=p.name, addresses=tuple(str(n) for n in p.allowed_ips),
                              public_key=encode_key(p.public_key),
                              latest_handshake=float(live_peer.get("latest_handshake") or 0) if live_peer else None,
                              endpoint=live_peer.get("endpoint") if live_peer else None,
                              policy=p.policy, state=p.policy.state(wall),
                              denied=int(live_peer.get("denied", 0)) if live_peer else None,
                              ratelimited=int(live_peer.get("ratelimited", 0)) if live_peer else None))
    return cfg, rows, snap is not None
