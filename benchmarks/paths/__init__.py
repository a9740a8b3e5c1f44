"""The paths that ``benchmarks/netbench.py`` measures side by side, and the plumbing they share.

Each module holds one family of paths (:mod:`.kernel`: raw veth and kernel vxlan; :mod:`.wggo`:
wireguard-go; :mod:`.openvpn`: OpenVPN 2.6; :mod:`.pyvpn`: pyvpn L3 and L2), all subclasses of
:class:`.base.BenchPath`.  :mod:`.lab` owns namespaces and processes; :mod:`.measure` runs and parses
iperf3 and ping.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import BenchPath, Endpoints
from .kernel import VethPath, VxlanPath
from .openvpn import OpenVpnPath
from .pyvpn import PyvpnL2Path, PyvpnL3Path
from .wggo import WireguardGoPath

#: Every path, in table order.
PATH_KEYS: tuple[str, ...] = ("veth", "vxlan", "wireguard-go", "openvpn", "pyvpn", "pyvpn-l2")
PATH_TITLES: dict[str, str] = {cls.key: cls.title for cls in (VethPath, VxlanPath, WireguardGoPath, OpenVpnPath,
                                                                 PyvpnL3Path, PyvpnL2Path)}


def make_path(key: str, *, pyvpn_command: Sequence[str] | None = None) -> BenchPath:
    """A fresh path object for ``key`` (one of :data:`PATH_KEYS`).

    :raises ValueError: unknown key.
    """
    if key == "veth":
        return VethPath()
    if key == "vxlan":
        return VxlanPath()
    if key == "wireguard-go":
        return WireguardGoPath()
    if key == "openvpn":
        return OpenVpnPath()
    if key == "pyvpn":
        return PyvpnL3Path(pyvpn_command)
    if key == "pyvpn-l2":
        return PyvpnL2Path(pyvpn_command)
    raise ValueError(f"unknown path {key!r} (known: {', '.join(PATH_KEYS)})")


__all__ = ["PATH_KEYS", "PATH_TITLES", "BenchPath", "Endpoints", "make_path"]
