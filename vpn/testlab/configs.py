"""Config files for the lab: the production model (:mod:`vpn.config.model`), written by the production writer.

Tests, benchmarks and the demo describe a daemon's file with :func:`interface`, :func:`peer` and
:func:`segment`, which take what a test has at hand (base64 keys, address and endpoint strings) and return the
frozen dataclasses the parser would build; :func:`config_text` renders them with
:func:`vpn.config.format_config`.  So a lab file is exactly what ``pyvpn`` itself writes, and
``parse_config(config_text(...))`` gives the same model back (tests/unit/test_testlab_configs.py).

Extra ``Key = Value`` lines (``#pyvpn Offload = off``, ``PreDown = ...``, a peer's ``#pyvpn RateLimit``, a
segment's ``MacLimit``) go through the production parser, so a mistyped key fails where the test builds its
config, naming the line and the key.

For stock ``wg setconf`` and ``wg-quick`` (wireguard-go peers) the same writer is used with only wg's or
wg-quick's keys set: it emits a ``#pyvpn`` line only for a field that is set (the lab sets none there), and
those are comments to ``wg`` and ``wg-quick`` anyway.

Whole files from what a test has at hand: :func:`conf_text` (a pyvpn daemon's file, with :class:`PeerSpec`
peers), :func:`wg_conf_text` (``wg setconf``) and :func:`wg_quick_file` (``wg-quick``, with :class:`WgPeer`
peers); :func:`endpoint` formats ``host:port`` and :func:`cidr` normalises a CIDR.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from crypto.keys import decode_key, encode_key
from vpn.config import Config, InterfaceConfig, PeerConfig, SegmentConfig, format_config, parse_config
from vpn.config import values as v
from vpn.testlab.files import write_private

LAB_PATH = "<lab>"  # Config.path of a lab-built config (not part of equality)
_STUB_KEY = encode_key(bytes(range(32)))  # only for parsing extra lines; never written anywhere


def _parsed(text: str) -> Config:
    return parse_config(f"[Interface]\nPrivateKey = {_STUB_KEY}\n{text}", "<lab extra lines>")


def _set(**fields: Any) -> dict[str, Any]:
    """The fields a caller gave (None and empty sequences mean "not given")."""
    return {k: x for k, x in fields.items() if x is not None and x != ()}


def interface(private_key: str, *, addresses: Sequence[str] = (), listen_port: int | None = None,
              mtu: int | None = None, fwmark: int | None = None, dns: Sequence[str] = (), table: str | None = None,
              name: str | None = None, extra: Sequence[str] = ()) -> InterfaceConfig:
    """An ``[Interface]`` section.

    :param private_key: base64.
    :param addresses: ``198.19.0.1/24`` style (a bad one raises ValueError).
    :param fwmark: a mark, or None/0 for none.
    :param name: ``#pyvpn Name`` (the interface name), or None for the file's stem.
    :param extra: more lines for the section, e.g. ``#pyvpn Offload = off`` (parsed by the production parser).
    """
    base = _parsed("".join(f"{line}\n" for line in extra)).interface if extra else InterfaceConfig(b"")
    return replace(base, **_set(private_key=decode_key(private_key, what="private key"),
                                addresses=tuple(v.interface_address(a) for a in addresses),
                                listen_port=listen_port, mtu=mtu, fwmark=fwmark or None, dns=tuple(dns),
                                table=table, name=name))


def peer(public_key: str, *, allowed_ips: Sequence[str] = (), endpoint: str | None = None,
         persistent_keepalive: int | None = None, preshared_key: str | None = None, name: str | None = None,
         vtep: str | None = None, extra: Sequence[str] = ()) -> PeerConfig:
    """A ``[Peer]`` section.

    :param public_key: / :param preshared_key: base64.
    :param allowed_ips: CIDRs (host bits cleared, as the parser does; a bad one raises ValueError).
    :param endpoint: ``host:port`` or ``[v6]:port``, or None.
    :param persistent_keepalive: seconds, or None/0 for off.
    :param name: / :param vtep: ``#pyvpn Name`` / ``#pyvpn Vtep``.
    :param extra: more lines, e.g. ``#pyvpn RateLimit = 20mbit`` (parsed by the production parser).
    """
    pk = decode_key(public_key, what="public key")
    base = _parsed(f"[Peer]\nPublicKey = {public_key}\n" + "".join(f"{line}\n" for line in extra)).peers[0] \
        if extra else PeerConfig(pk)
    return replace(base, **_set(public_key=pk, allowed_ips=tuple(v.network(a) for a in allowed_ips),
                                endpoint=v.parse_endpoint(endpoint) if endpoint else None,
                                persistent_keepalive=persistent_keepalive or None,
                                preshared_key=decode_key(preshared_key, what="preshared key") if preshared_key
                                else None, name=name, vtep=vtep))


def segment(vni: int, tap: str, *extra: str) -> SegmentConfig:
    """A ``#pyvpn [Segment]``; ``extra`` are its other keys without the ``#pyvpn`` prefix (``"MacLimit = 8"``).

    A segment's ``Peers`` must name peers of the file it goes into; that is checked when the file is parsed.
    """
    if not extra:
        return SegmentConfig(vni=vni, tap=tap)
    lines = "".join(f"#pyvpn {e}\n" for e in extra if not e.strip().lower().startswith("peers"))
    parsed = _parsed(f"#pyvpn [Segment]\n#pyvpn VNI = {vni}\n#pyvpn Tap = {tap}\n{lines}").segments[0]
    refs = [r.strip() for e in extra if e.strip().lower().startswith("peers")
            for r in e.split("=", 1)[1].split(",")]
    return replace(parsed, peers=tuple(refs)) if refs else parsed


def config(iface: InterfaceConfig, peers: Sequence[PeerConfig] = (),
           segments: Sequence[SegmentConfig] = ()) -> Config:
    """The whole file as the model."""
    return Config(path=LAB_PATH, interface=iface, peers=tuple(peers), segments=tuple(segments))


def config_text(iface: InterfaceConfig, peers: Sequence[PeerConfig] = (),
                segments: Sequence[SegmentConfig] = ()) -> str:
    """The file as :func:`vpn.config.format_config` writes it."""
    return format_config(config(iface, peers, segments))


# -- what tests have at hand: endpoints, CIDRs, peer specs ---------------------------------------------------
def cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR with its host bits cleared (``198.19.0.5/24`` is ``198.19.0.0/24``).

    :raises ValueError: naming the text, when it is not one.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as e:
        raise ValueError(f"bad CIDR {text!r}: {e}") from None


@dataclass(frozen=True, slots=True, repr=False)
class PeerSpec:
    """One ``[Peer]`` of a generated config (its repr leaves the preshared key out)."""

    public_key: str
    allowed_ips: Sequence[str] = ()
    endpoint: str | None = None
    persistent_keepalive: int = 0
    name: str | None = None
    preshared_key: str | None = None
    extra: Sequence[str] = ()  # more lines for the section, e.g. "#pyvpn RateLimit = 20mbit"

    def __repr__(self) -> str:
        return f"PeerSpec(public_key={self.public_key!r}, allowed_ips={self.allowed_ips!r})"

    def config(self) -> PeerConfig:
        """This section as the production model."""
        return peer(self.public_key, allowed_ips=self.allowed_ips, endpoint=self.endpoint,
                    persistent_keepalive=self.persistent_keepalive, name=self.name,
                    preshared_key=self.preshared_key, extra=self.extra)


def endpoint(host: str, port: int) -> str:
    """``198.18.0.1:51820`` or ``[fd00:18::1]:51820``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- whole files: pyvpn (wg-quick with #pyvpn lines), wg setconf, wg-quick -------------------------------------
def conf_text(*, ifname: str, private_key: str, addresses: Sequence[str] = (), listen_port: int | None = None,
              peers: Sequence[PeerSpec] = (), mtu: int | None = None, extra: Sequence[str] = (),
              segments: Sequence[SegmentConfig] = ()) -> str:
    """A wg-quick file with ``#pyvpn Name = ifname`` (``extra`` lines go into ``[Interface]``; ``segments`` from
    :func:`segment`), written by the production writer."""
    iface = interface(private_key, addresses=addresses, listen_port=listen_port, mtu=mtu, name=ifname,
                      extra=extra)
    return config_text(iface, [p.config() for p in peers], segments)


@dataclass(frozen=True, slots=True, repr=False)
class WgPeer:
    """One ``[Peer]`` section.

    :param public_key: the peer's base64 public key.
    :param endpoint: ``host:port`` / ``[v6]:port`` (see :func:`endpoint`), or None to learn it by roaming.
    :param allowed_ips: CIDRs; stored normalised (host bits cleared) as a tuple.
    :param persistent_keepalive: seconds, or None/0 for off.
    :param preshared_key: base64 preshared key, or None.
    """

    public_key: str
    endpoint: str | None = None
    allowed_ips: Sequence[str] = ()
    persistent_keepalive: int | None = None
    preshared_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.allowed_ips, str):
            raise TypeError("allowed_ips must be a sequence of CIDR strings, not one string")
        object.__setattr__(self, "allowed_ips", tuple(str(cidr(a)) for a in self.allowed_ips))

    def __repr__(self) -> str:  # never the preshared key
        return (f"WgPeer(public_key={self.public_key!r}, endpoint={self.endpoint!r}, "
                f"allowed_ips={self.allowed_ips!r}, persistent_keepalive={self.persistent_keepalive!r})")

    def config(self) -> PeerConfig:
        """This section as the production model (written by :mod:`vpn.config.writer`)."""
        return peer(self.public_key, endpoint=self.endpoint, allowed_ips=self.allowed_ips,
                    persistent_keepalive=self.persistent_keepalive, preshared_key=self.preshared_key)


def wg_conf_text(*, private_key: str, listen_port: int | None = None, fwmark: int | None = None,
                 peers: Sequence[WgPeer] = ()) -> str:
    """Return a ``wg setconf`` file: only keys ``wg`` itself understands (no Address, MTU, DNS)."""
    return config_text(interface(private_key, listen_port=listen_port, fwmark=fwmark), [p.config() for p in peers])


def wg_quick_file(path: str | os.PathLike[str] | None = None, *, private_key: str,
                  address: Sequence[str] = (), listen_port: int | None = None, mtu: int | None = None,
                  dns: Sequence[str] = (), fwmark: int | None = None, table: str | None = None,
                  peers: Sequence[WgPeer] = ()) -> str:
    """Return a wg-quick style config text, and write it to ``path`` (mode 0600) when one is given.

    :param path: where to write it, or None to only return the text.
    :param address: interface addresses with prefix, e.g. ``["198.19.0.2/24", "fd00:19::2/64"]``.
    :param table: wg-quick's ``Table`` (``off``, ``auto`` or a number), or None to leave it out.
    """
    iface = interface(private_key, addresses=address, listen_port=listen_port, mtu=mtu, dns=dns, fwmark=fwmark,
                      table=table)
    text = config_text(iface, [p.config() for p in peers])
    if path is not None:
        write_private(Path(path), text)
    return text
