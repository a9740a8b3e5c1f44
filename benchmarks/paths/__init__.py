"""The paths that ``benchmarks/netbench.py`` measures side by side, and the plumbing they share.

Each module holds one family of paths (:mod:`.kernel`: raw veth and kernel vxlan; :mod:`.wggo`:
wireguard-go, bookworm's and trixie's; :mod:`.fastd`: fastd; :mod:`.tinc`: tinc 1.0; :mod:`.openvpn`:
OpenVPN 2.6, tun and tap; :mod:`.pyvpn`: pyvpn L3 and L2), all subclasses of :class:`.base.BenchPath`.  :mod:`.lab`
owns namespaces, processes and CPU pinning; :mod:`.measure` runs and parses iperf3 and ping;
:mod:`.trixie` fetches trixie's wireguard-go.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import BenchPath, Endpoints
from .fastd import FastdPath
from .kernel import VethPath, VxlanPath
from .openvpn import OpenVpnPath, OpenVpnTapPath
from .pyvpn import PyvpnL2Path, PyvpnL3Path
from .tinc import TincPath
from .wggo import WireguardGoPath, WireguardGoTrixiePath

#: Paths without a pyvpn command, by key, in table order.
_PLAIN: dict[str, type[BenchPath]] = {cls.key: cls for cls in (
    VethPath, VxlanPath, WireguardGoTrixiePath, WireguardGoPath, FastdPath, TincPath, OpenVpnPath,
    OpenVpnTapPath)}
_PYVPN: dict[str, type[PyvpnL3Path | PyvpnL2Path]] = {cls.key: cls for cls in (PyvpnL3Path, PyvpnL2Path)}
#: Every path, in table order.
PATH_KEYS: tuple[str, ...] = (*_PLAIN, *_PYVPN)
PATH_TITLES: dict[str, str] = {key: cls.title for key, cls in (*_PLAIN.items(), *_PYVPN.items())}


def make_path(key: str, *, pyvpn_command: Sequence[str] | None = None) -> BenchPath:
    """A fresh path object for ``key`` (one of :data:`PATH_KEYS`).

    :raises ValueError: unknown key.
    """
    if key in _PLAIN:
        return _PLAIN[key]()
    if key in _PYVPN:
        return _PYVPN[key](pyvpn_command)
    raise ValueError(f"unknown path {key!r} (known: {', '.join(PATH_KEYS)})")


__all__ = ["PATH_KEYS", "PATH_TITLES", "BenchPath", "Endpoints", "make_path"]
