"""Starting the L2 segments of a config for real (root): taps, bridges and plain sockets, then the runtime."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import TYPE_CHECKING

from .plan import L2ConfigError, plan_segments
from .ports import PlainSocket, TapDevice
from .runtime import L2Runtime

if TYPE_CHECKING:
    from tunnel.udpaddr import Family

    from ..config import Config
    from ..device import Device

__all__ = ["open_segments"]


def open_segments(cfg: Config, device: Device, *, role: str, netns: str | None = None) -> L2Runtime:
    """Open the taps (and bridges) and plain sockets for ``cfg.segments``; start and return the runtime.

    Taps are created here and moved into ``netns`` with the tun; a ``Bridge`` that does not exist is created
    (and deleted again by :meth:`L2Runtime.close`), an existing one is joined.  On any failure everything
    opened so far is closed again.

    :param cfg: the parsed config.
    :param device: the started device.
    :param role: ``"server"`` or ``"client"``.
    :param netns: the namespace that holds the tun, or None.
    :raises L2ConfigError: the segments do not fit together.
    :raises OSError: a tap, bridge or socket could not be set up (:class:`~tunnel.tun.TunError`,
        :class:`~tunnel.netconf.NetconfError`, :class:`~tunnel.udp.UdpError`).
    """
    from tunnel import netconf
    from tunnel.tun import open_tun, set_txqueuelen
    from tunnel.udp import UdpSocket

    plans = plan_segments(cfg, role=role, tunnel_mtu=device.core.mtu)
    taps: dict[str, TapDevice] = {}
    sockets: dict[tuple[str, int], PlainSocket] = {}
    created: list[str] = []

    def delete_bridges() -> None:
        for br in created:
            with contextlib.suppress(OSError):
                netconf.delete_link(br, netns=netns)

    try:
        for tp in plans:
            if netconf.link_exists(tp.name, netns=netns):
                raise L2ConfigError(f"tap {tp.name}: an interface with that name exists already")
            taps[tp.name] = open_tun(tp.name, tap=True, mtu=tp.mtu, vnet_hdr=True)
            set_txqueuelen(tp.name)  # as for the tun: a burst read late must not overflow 500 frames
            if netns:
                netconf.move_to_netns(tp.name, netns)
            if tp.bridge:
                if not netconf.link_exists(tp.bridge, netns=netns):
                    netconf.create_bridge(tp.bridge, netns=netns)
                    created.append(tp.bridge)
                netconf.enslave(tp.name, tp.bridge, netns=netns)
                netconf.set_up(tp.bridge, netns=netns)
            netconf.set_up(tp.name, netns=netns)
        for tp in plans:
            for sp in tp.segments:
                if sp.plain and sp.local is not None and (sp.local, sp.port) not in sockets:
                    family: Family = "v6" if ipaddress.ip_address(sp.local).version == 6 else "v4"
                    sockets[(sp.local, sp.port)] = UdpSocket.bind(sp.local, sp.port, family=family)
        runtime = L2Runtime(device, plans, taps=taps, plain_sockets=sockets,
                            interface_addresses=[str(a) for a in cfg.interface.addresses],
                            peer_vteps={p.public_key: p.vtep for p in cfg.peers if p.vtep},
                            on_close=delete_bridges)
    except BaseException:
        for t in taps.values():
            with contextlib.suppress(OSError):
                t.close()
        for s in sockets.values():
            with contextlib.suppress(OSError):
                s.close()
        delete_bridges()
        raise
    runtime.start()
    return runtime
