"""``tunnel.encap.vxlan`` against the Linux kernel's own ``vxlan`` device, in private namespaces.

Topology (all inside namespaces this test creates)::

    ns a: vx4  (id 0x123456, IPv4, kernel defaults: udpcsum, df unset)  ┐
          vx4r (id 0x000042, IPv4, noudpcsum df set = RFC 7348 defaults)├─ va 198.18.0.1 fd00:18::1
          vx6  (id 0xabcdef, IPv6, kernel defaults: checksum computed)  ┘      │ veth
    ns b:                                                                  vb 198.18.0.2 fd00:18::2

1. Kernel → us: a raw frame is written into each vx device with an AF_PACKET socket; the packet the kernel
   puts on the wire is captured on vb.  ``decap_ip`` must return the frame, and ``encap_ip`` given the same
   fields plus the kernel's IP ID and UDP source port must rebuild the packet byte for byte (checksums
   included: transmit checksum offload is switched off on va so the kernel writes real checksums).
2. Us → kernel: packets built by ``encap_ip`` are sent from vb and must come out of the vx devices
   (receive checksum offload is off on va, so the kernel really verifies our checksums).  Broken ones must
   be dropped, which the kernel's counters show: a reserved VXLAN bit (Linux diverges from RFC 7348 §5 here),
   a missing I flag, a bad UDP checksum, a zero UDP checksum over IPv6.

``python tests/netns/test_vxlan_kernel.py --write-vectors`` regenerates ``tests/vectors/vxlan_*.hex`` from a
fresh kernel capture (IP IDs and source ports will differ from the committed files; both are fine).
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tunnel.encap.vxlan import VxlanError, decap_ip, encap_ip
from vpn.testlab.netns import Netns, namespaces, veth, wait_for

pytestmark = [pytest.mark.root, pytest.mark.interop]

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003

A4, B4 = socket.inet_pton(socket.AF_INET, "198.18.0.1"), socket.inet_pton(socket.AF_INET, "198.18.0.2")
A6, B6 = socket.inet_pton(socket.AF_INET6, "fd00:18::1"), socket.inet_pton(socket.AF_INET6, "fd00:18::2")

# name -> (vxlan device, VNI, ip link options, frame)
DEVICES = {
    "ipv4": (
        "vx4",
        0x123456,
        "local 198.18.0.1 remote 198.18.0.2",
        # 802.1Q-tagged (VID 100, PCP 5) frame, even length: the tag must cross unchanged.
        bytes.fromhex("020000000002 020000000001 8100a064 88b5") + b"pyvpn golden VXLAN/IPv4, tagged!",
    ),
    "ipv4_rfc": (
        "vx4r",
        0x000042,
        "local 198.18.0.1 remote 198.18.0.2 noudpcsum df set",
        bytes.fromhex("020000000004 020000000003 88b5") + b"pyvpn golden VXLAN/IPv4, RFC defaults",  # odd
    ),
    "ipv6": (
        "vx6",
        0xABCDEF,
        "local fd00:18::1 remote fd00:18::2",
        bytes.fromhex("020000000006 020000000005 88b5") + b"pyvpn golden VXLAN/IPv6, checksummed",  # odd
    ),
}

_ETHTOOL_OFF = """
import sys
from pyroute2.ethtool import Ethtool
e = Ethtool()
f = e.get_features(sys.argv[1])
for name in sys.argv[2:]:
    f.features[name].enable = False
e.set_features(sys.argv[1], f)
e.close()
"""


@contextmanager
def in_netns(ns: Netns) -> Iterator[None]:
    """Run the block with this thread inside ``ns`` (sockets made there stay there), then come back."""
    libc = ctypes.CDLL(None, use_errno=True)
    orig = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into test namespace")
        yield
    finally:
        if libc.setns(orig, CLONE_NEWNET) != 0:  # pragma: no cover - would leave the test process astray
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(orig)
        os.close(target)


def packet_socket(ns: Netns, ifname: str) -> socket.socket:
    with in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((ifname, 0))
    s.setblocking(False)
    return s


def drain(s: socket.socket, limit: int = 1000) -> list[tuple[bytes, int]]:
    """Everything queued on a packet socket: (bytes, pkttype)."""
    out = []
    for _ in range(limit):
        try:
            data, addr = s.recvfrom(65535)
        except BlockingIOError:
            break
        out.append((data, addr[2]))
    return out


def mac_of(ns: Netns, ifname: str) -> bytes:
    info = json.loads(ns.run(f"ip -j link show {ifname}").stdout)[0]
    return bytes.fromhex(info["address"].replace(":", ""))


def link_stats(ns: Netns, ifname: str) -> dict[str, int]:
    info = json.loads(ns.run(f"ip -s -j link show {ifname}").stdout)[0]
    return dict(info["stats64"]["rx"])


def snmp(ns: Netns) -> dict[str, int]:
    """``Udp:InCsumErrors`` style counters from /proc/net/snmp and snmp6 inside ``ns``."""
    out: dict[str, int] = {}
    lines = ns.run("cat /proc/net/snmp").stdout.splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        proto, names = head.split(":", 1)
        for k, v in zip(names.split(), vals.split(":", 1)[1].split(), strict=False):
            out[f"{proto}:{k}"] = int(v)
    for line in ns.run("cat /proc/net/snmp6").stdout.splitlines():
        k, v = line.split()
        out[k] = int(v)
    return out


class Lab:
    """Two namespaces, a veth between them and the three kernel VTEPs in ``a``."""

    def __init__(self, a: Netns, b: Netns) -> None:
        self.a, self.b = a, b
        veth(a, "va", b, "vb")
        a.run("ip addr add 198.18.0.1/24 dev va")
        a.run("ip -6 addr add fd00:18::1/64 dev va nodad")
        b.run("ip addr add 198.18.0.2/24 dev vb")
        b.run("ip -6 addr add fd00:18::2/64 dev vb nodad")
        for dev, vni, opts, _frame in DEVICES.values():
            made = a.run(f"ip link add {dev} type vxlan id {vni} dstport 4789 {opts} dev va", check=False)
            if made.returncode != 0:
                pytest.skip(f"kernel vxlan unavailable: {made.stderr.strip()}")
            a.run(f"ip link set {dev} addrgenmode none")  # no IPv6 link-local chatter on the VTEPs
            a.run(f"ip link set {dev} up")
        # Real checksums on the wire (tx) and real verification of ours (rx): veth would otherwise pass
        # CHECKSUM_PARTIAL packets along and mark injected ones CHECKSUM_UNNECESSARY.
        off = a.run([sys.executable, "-c", _ETHTOOL_OFF, "va", "tx-checksum-ip-generic", "rx-checksum"],
                    check=False)
        if off.returncode != 0:
            pytest.skip(f"cannot switch off veth checksum offload: {off.stderr.strip()[-300:]}")
        self.va_mac, self.vb_mac = mac_of(a, "va"), mac_of(b, "vb")

    def kernel_packets(self) -> dict[str, bytes]:
        """Send each DEVICES frame into its vx device and return the outer IP packets seen on vb."""
        cap = packet_socket(self.b, "vb")
        try:
            for dev, _vni, _opts, frame in DEVICES.values():
                tx = packet_socket(self.a, dev)
                tx.send(frame)
                tx.close()
            got: dict[str, bytes] = {}

            def collect() -> bool:
                for data, pkttype in drain(cap):
                    if pkttype != socket.PACKET_HOST:  # ns b's own ICMP errors quote the frame too
                        continue
                    for name, (_dev, _vni, _opts, frame) in DEVICES.items():
                        if data.endswith(frame) and data[12:14] in (b"\x08\x00", b"\x86\xdd"):
                            got[name] = data[14:]
                return len(got) == len(DEVICES)

            assert wait_for(collect, timeout=5.0), f"captured only {sorted(got)}"
            return got
        finally:
            cap.close()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with namespaces("vxa", "vxb") as (a, b):
        yield Lab(a, b)


def rebuild(name: str, packet: bytes) -> bytes:
    """encap_ip of the packet's frame with the kernel's own choices for the fields it varies."""
    _dev, vni, opts, frame = DEVICES[name]
    if name == "ipv6":
        return encap_ip(frame, vni=vni, src_ip=packet[8:24], dst_ip=packet[24:40],
                        src_port=int.from_bytes(packet[40:42], "big"))
    return encap_ip(
        frame, vni=vni, src_ip=packet[12:16], dst_ip=packet[16:20],
        src_port=int.from_bytes(packet[20:22], "big"), ip_id=int.from_bytes(packet[4:6], "big"),
        df="df set" in opts, udp_checksum="noudpcsum" not in opts,
    )


def test_kernel_packets_match_encap_and_decap(lab: Lab) -> None:
    for name, packet in lab.kernel_packets().items():
        _dev, vni, _opts, frame = DEVICES[name]
        got = decap_ip(packet, strict=True, verify_checksum=True)
        assert (got.vni, got.frame) == (vni, frame), name
        assert got.src_ip == (A6 if name == "ipv6" else A4)
        assert rebuild(name, packet).hex() == packet.hex(), name


def _frame(tag: str) -> bytes:
    return bytes.fromhex("0200000000a1 0200000000b2 88b5") + f"pyvpn->kernel {tag}".encode()


def _to_a4(tag: str, vni: int = 0x123456, **kw: object) -> bytes:
    return encap_ip(_frame(tag), vni=vni, src_ip=B4, dst_ip=A4, **kw)  # type: ignore[arg-type]


def _to_a6(tag: str, vni: int = 0xABCDEF, **kw: object) -> bytes:
    return encap_ip(_frame(tag), vni=vni, src_ip=B6, dst_ip=A6, **kw)  # type: ignore[arg-type]


def _flip(packet: bytes, offset: int, xor: int) -> bytes:
    p = bytearray(packet)
    p[offset] ^= xor
    return bytes(p)


def test_kernel_accepts_our_packets_and_drops_broken_ones(lab: Lab) -> None:
    a = lab.a
    good = {  # device it must come out of, packet
        "v4 zero csum": ("vx4", _to_a4("v4 zero csum")),
        "v4 csum": ("vx4", _to_a4("v4 csum", udp_checksum=True)),
        "v4 rfc dev": ("vx4r", _to_a4("v4 rfc dev", vni=0x42, src_port=50000)),
        "v6": ("vx6", _to_a6("v6")),
        "v6 odd": ("vx6", _to_a6("v6 odd length")),
    }
    bad = {  # the VXLAN header starts at byte 28 (IPv4) / 48 (IPv6); the UDP checksum at 26 / 46
        "reserved flag bit": _flip(_to_a4("reserved flag bit"), 28, 0x01),
        "reserved last byte": _flip(_to_a4("reserved last byte"), 35, 0x01),
        "no I flag": _flip(_to_a4("no I flag"), 28, 0x08),
        "bad v4 csum": _flip(_to_a4("bad v4 csum", udp_checksum=True), 26, 0x55),
        "bad v6 csum": _flip(_to_a6("bad v6 csum"), 46, 0x55),
        "zero v6 csum": _to_a6("zero v6 csum", udp_checksum=False),
    }
    for packet in bad.values():  # our strict parser agrees with the kernel about what is broken
        with pytest.raises(VxlanError):
            decap_ip(packet, strict=True, verify_checksum=True)

    rx = {dev: packet_socket(a, dev) for dev, _vni, _opts, _frame in DEVICES.values()}
    tx = packet_socket(lab.b, "vb")
    try:
        before, before_vx4 = snmp(a), link_stats(a, "vx4")
        for packet in [p for _dev, p in good.values()] + list(bad.values()):
            ethertype = b"\x86\xdd" if packet[0] >> 4 == 6 else b"\x08\x00"
            tx.send(lab.va_mac + lab.vb_mac + ethertype + packet)

        seen: dict[str, list[bytes]] = {dev: [] for dev in rx}

        def all_good_arrived() -> bool:
            for dev, s in rx.items():
                seen[dev] += [data for data, _pkttype in drain(s)]
            return all(decap_ip(p).frame in seen[dev] for dev, p in good.values())

        assert wait_for(all_good_arrived, timeout=5.0), {d: len(v) for d, v in seen.items()}

        def delta(counter: str) -> int:
            return snmp(a)[counter] - before[counter]

        def drops_counted() -> bool:
            return (
                delta("Udp:InDatagrams") >= 6  # 3 good + 3 with bad VXLAN headers, all processed
                and delta("Udp:InCsumErrors") >= 1
                and delta("Udp6InCsumErrors") >= 2  # bad and zero checksums
                and link_stats(a, "vx4")["errors"] - before_vx4["errors"] >= 2  # the reserved bits
            )

        assert wait_for(drops_counted, timeout=5.0), (before, snmp(a), link_stats(a, "vx4"))
        for dev, s in rx.items():
            seen[dev] += [data for data, _pkttype in drain(s)]
        delivered = [f for frames in seen.values() for f in frames]
        for tag in bad:
            assert not any(f.endswith(tag.encode()) for f in delivered), f"kernel delivered {tag!r}"
    finally:
        tx.close()
        for s in rx.values():
            s.close()


# -- regenerating the golden files -----------------------------------------------------------------------------
_DESCRIPTIONS = {
    "ipv4": "outer IPv4 (kernel defaults: UDP checksum computed, DF clear), VNI 0x123456, 802.1Q-tagged frame",
    "ipv4_rfc": "outer IPv4 (vxlan noudpcsum df set: RFC 7348 defaults), VNI 0x000042",
    "ipv6": "outer IPv6 (kernel defaults: UDP checksum computed), VNI 0xabcdef",
}


def _hexlines(data: bytes) -> str:
    return "\n".join(data[i : i + 16].hex(" ") for i in range(0, len(data), 16)) + "\n"


def write_vectors() -> None:
    kernel = os.uname().release
    with namespaces("vxa", "vxb") as (a, b):
        packets = Lab(a, b).kernel_packets()
    for name, packet in packets.items():
        _dev, vni, opts, _frame = DEVICES[name]
        head = (
            f"# VXLAN {_DESCRIPTIONS[name]}.\n"
            f"# Captured on a veth from Linux {kernel} 'ip link add ... type vxlan id {vni} dstport 4789 {opts}'\n"
            "# with tx checksum offload off, by tests/netns/test_vxlan_kernel.py --write-vectors.\n"
            "# IP ID and UDP source port are the kernel's choice; everything else is fixed by the fields.\n"
        )
        (VECTORS / f"vxlan_{name}.hex").write_text(head + _hexlines(packet))
    header = packets["ipv4"][28:36]
    (VECTORS / "vxlan_header.hex").write_text(
        "# VXLAN header for VNI 0x123456 (RFC 7348 §5: flags 0x08, reserved, VNI big-endian, reserved),\n"
        "# bytes 28..36 of vxlan_ipv4.hex as sent by the Linux kernel.\n" + _hexlines(header)
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-vectors"]:
        sys.exit("usage: python tests/netns/test_vxlan_kernel.py --write-vectors  (as root)")
    write_vectors()
