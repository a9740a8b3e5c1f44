"""Kernel paths without daemons: the raw veth (the ceiling) and a kernel vxlan device over it."""

from __future__ import annotations

import platform

from .base import BenchPath, Endpoints, underlay_only, wait_reachable
from .lab import Lab

VXLAN_VNI = 42
VXLAN_PORT = 4789  # IANA port (RFC 7348 section 5)
VXLAN_MTU = 1450  # 1500 - 50 bytes of outer IPv4 + UDP + VXLAN + inner Ethernet


class VethPath(BenchPath):
    """iperf3 straight over the veth between the two namespaces."""

    key = "veth"
    title = "raw veth"
    is_vpn = False

    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        pair, offloads = lab.pair(slot, veth_gso=veth_gso)
        return underlay_only(pair, offloads)

    def version(self) -> str:
        return f"Linux {platform.release()}"


class VxlanPath(BenchPath):
    """A kernel vxlan device (VNI 42, port 4789, unicast remote) on each side of the veth; no encryption."""

    key = "vxlan"
    title = "kernel vxlan"
    is_vpn = False

    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        pair, offloads = lab.pair(slot, veth_gso=veth_gso)
        ends = ((pair.client, pair.client_ip, pair.server_ip, 1), (pair.server, pair.server_ip, pair.client_ip, 2))
        for ns, local, remote, host in ends:
            ns.run(["ip", "link", "add", "vx0", "type", "vxlan", "id", str(VXLAN_VNI), "dstport", str(VXLAN_PORT),
                    "local", local, "remote", remote, "dev", "ul0"])
            ns.run(["ip", "link", "set", "vx0", "mtu", str(VXLAN_MTU), "up"])
            ns.run(["ip", "addr", "add", f"198.19.{slot}.{host}/24", "dev", "vx0"])
            ns.run(["ip", "-6", "addr", "add", f"fd00:{slot:x}::{host}/64", "dev", "vx0", "nodad"])
        server_addr = f"198.19.{slot}.2"
        wait_reachable(pair.client, server_addr, timeout=10.0, what="vxlan")
        return Endpoints(pair.client, pair.server, server_addr, VXLAN_MTU, offloads,
                         f"vxlan id {VXLAN_VNI} dstport {VXLAN_PORT}, mtu {VXLAN_MTU}")

    def version(self) -> str:
        return f"Linux {platform.release()}"
