"""tunnel.offload against a real vnet-hdr tun in a fresh namespace (root only).

Each scenario runs in a child process *inside* the namespace (one function of
:mod:`vpn.testlab.offload_scenarios`, run by :mod:`vpn.testlab.child`, returns its findings as JSON).  It
opens /dev/net/tun itself with ``fcntl.ioctl`` (TUNSETIFF with IFF_VNET_HDR, TUNSETOFFLOAD), plays a fake
peer 100.64.0.2 behind the tun, and talks to real kernel sockets bound to the tun's address 100.64.0.1:

* write side: segments built here are merged by ``coalesce()`` into one TSO (or USO) super-packet, written
  once, and the kernel's TCP (UDP) socket must receive every byte (datagram);
* read side: a kernel TCP socket sends to the fake peer; the tun hands us TSO super-packets, ``segment()``
  cuts them, every segment's checksums are checked with a textbook sum here, and the data reassembles.

All traffic stays inside the namespace; every wait is bounded.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from vpn.testlab import child
from vpn.testlab.offload_scenarios import LOCAL, PEER, tcp_packet, udp_packet
from vpn.testlab.packets import l4_pseudo_header, reference_checksum

SCENARIOS = "vpn.testlab.offload_scenarios"


def _in_ns(ns: Any, func: str, timeout: float = 40.0) -> Any:
    return child.call(ns, SCENARIOS, func, timeout=timeout)


# -- tests --------------------------------------------------------------------------------------------


@pytest.mark.root
def test_coalesced_tcp_super_packet_reaches_kernel_socket(netns_factory: Any) -> None:
    r = _in_ns(netns_factory("off"), "write_tcp_super_packet")
    assert r["writes"] == 1 and r["gso_type"] == 1 and r["gso_size"] == 1000, r
    assert r["written"] == r["sizes"], r
    assert r["received_ok"], r
    assert r["acked"] == 30000, r


@pytest.mark.root
def test_coalesced_uso_packet_reaches_kernel_socket(netns_factory: Any) -> None:
    r = _in_ns(netns_factory("off"), "write_uso_super_packet")
    if "skip" in r:
        pytest.skip(r["skip"])
    assert r["writes"] == 1 and r["gso_type"] == 5, r
    assert r["received_ok"], r


@pytest.mark.root
def test_segmented_kernel_tso_reads_are_valid(netns_factory: Any) -> None:
    r = _in_ns(netns_factory("off"), "read_tso_from_kernel")
    assert r["received_ok"], r
    assert r["bad_checksums"] == 0, r
    assert r["gso_reads"] > 0, r  # the kernel did hand us super-packets
    assert r["max_payload"] <= 1400, r


@pytest.mark.root
def test_segmented_kernel_uso_reads_are_valid(netns_factory: Any) -> None:
    r = _in_ns(netns_factory("off"), "read_uso_from_kernel")
    if "skip" in r:
        pytest.skip(r["skip"])
    assert r["received_ok"] and r["bad"] == 0, r
    assert r["datagrams"] == [1000] * 9 + [123], r
    assert r["gso_types"] == [5], r  # one USO read, cut by segment()


def test_helpers_build_valid_packets() -> None:
    """The hand-built packets used in the namespace have valid checksums."""
    p = tcp_packet(1, 2, 3, 4, 0x18, b"hello", opts=struct.pack("!BBH", 2, 4, 1400))
    assert reference_checksum(p[:20]) == 0
    assert reference_checksum(l4_pseudo_header(PEER, LOCAL, 6, len(p) - 20) + p[20:]) == 0
    u = udp_packet(1, 2, b"abc", 5)
    assert reference_checksum(l4_pseudo_header(PEER, LOCAL, 17, len(u) - 20) + u[20:]) == 0
