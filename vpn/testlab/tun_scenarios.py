"""Kernel scenarios for tests/netns/test_tun_udp.py: tunnel.tun and tunnel.udp against a real tun and
real sockets.

Each scenario runs in a child process inside a fresh namespace (:func:`vpn.testlab.child.call`), does its
device work there and returns its findings as JSON-able values; the test asserts on them.  Some patch
this process's copy of tunnel.tun (refused offloads, counted reads) or drop its privileges: only ever in
that child.  Every wait is bounded.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import subprocess
import time
from typing import Any

from .packets import TCP, UDP, ipv4, ipv6, tcp, udp

# -- packet helpers (used inside the helpers) -------------------------------------------------------------


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    if ":" in src:
        return ipv6(src, dst, UDP, udp(sport, dport, payload), l4_csum="full")
    return ipv4(src, dst, UDP, udp(sport, dport, payload), ident=0x1234, l4_csum="full")


def tcp4_packet(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
                 options: bytes = b"", window: int = 65535) -> bytes:
    seg = tcp(sport, dport, seq=seq, ack=ack, flags=flags, window=window, options=options)
    return ipv4(src, dst, TCP, seg, ident=0x1234, l4_csum="full")


def parse_udp(pkt: bytes) -> tuple[str, str, int, int, bytes] | None:
    """(src, dst, sport, dport, payload) of an IPv4/IPv6 UDP packet, else None."""
    if pkt and pkt[0] >> 4 == 4 and len(pkt) >= 28 and pkt[9] == 17:
        ihl = (pkt[0] & 15) * 4
        sport, dport, length = struct.unpack("!HHH", pkt[ihl:ihl + 6])
        return (socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20]), sport, dport,
                pkt[ihl + 8:ihl + length])
    if pkt and pkt[0] >> 4 == 6 and len(pkt) >= 48 and pkt[6] == 17:
        sport, dport, length = struct.unpack("!HHH", pkt[40:46])
        return (socket.inet_ntop(socket.AF_INET6, pkt[8:24]), socket.inet_ntop(socket.AF_INET6, pkt[24:40]),
                sport, dport, pkt[48:40 + length])
    return None


def wait_readable(fd: int, timeout: float) -> bool:
    r, _, _ = select.select([fd], [], [], timeout)
    return bool(r)


# -- scenarios (each run in a child inside a namespace by vpn.testlab.child) -------------------------------------


def tun_roundtrip(vnet_hdr: bool) -> dict[str, Any]:
    """A tun with v4+v6 addresses: kernel → tun (read_batch) and tun → kernel (write_batch)."""
    from tunnel import netconf
    from tunnel.offload import VIRTIO_NET_HDR_LEN
    from tunnel.tun import open_tun

    out: dict[str, Any] = {}
    tun = open_tun("pvt0", mtu=1420, vnet_hdr=vnet_hdr)
    hdr = VIRTIO_NET_HDR_LEN if tun.vnet_hdr else 0
    out.update(vnet_hdr=tun.vnet_hdr, offloads=sorted(tun.offloads), name=tun.name, mtu=tun.mtu)
    netconf.set_up("pvt0")
    netconf.add_address("pvt0", "198.19.0.1/24")
    netconf.add_address("pvt0", "fd00:19::1/64")
    netconf.add_route("pvt0", "198.19.1.0/24")
    out["empty_read"] = [b.hex() for b in tun.read_batch(16)]  # nothing routed yet (or only IPv6 chatter)

    for fam, local, remote in ((socket.AF_INET, "198.19.0.1", "198.19.1.7"),
                               (socket.AF_INET6, "fd00:19::1", "fd00:19::7")):
        key = "v4" if fam == socket.AF_INET else "v6"
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((local, 0))
        s.settimeout(3)
        port = s.getsockname()[1]
        s.sendto(b"to-the-tun-" + key.encode(), (remote, 9999))
        seen = None
        deadline = time.monotonic() + 3
        while seen is None and time.monotonic() < deadline:
            if not wait_readable(tun.fileno(), 0.2):
                continue
            for buf in tun.read_batch(64):
                parsed = parse_udp(buf[hdr:])
                if parsed and parsed[1] == remote:
                    seen = [parsed[0], parsed[1], parsed[2], parsed[3], parsed[4].decode()]
        out[f"{key}_out"] = seen
        reply = udp_packet(remote, local, 9999, port, b"from-the-tun-" + key.encode())
        junk = b"\x00" * (hdr + 20)  # IP version 0: the kernel says EINVAL
        out[f"{key}_written"] = tun.write_batch([(b"\0" * hdr) + reply, junk])
        data, addr = s.recvfrom(2048)
        out[f"{key}_in"] = [data.decode(), addr[0], addr[1]]
        s.close()
    out["write_errors"] = dict(tun.write_errors)
    tun.close()
    out["exists_after_close"] = netconf.link_exists("pvt0")
    return out


def tso_superpacket() -> dict[str, Any]:
    """vnet_hdr + TSO: a TCP flow into the tun is read as super-packets larger than the MTU."""
    from tunnel import netconf
    from tunnel.offload import VIRTIO_NET_HDR_LEN
    from tunnel.tun import open_tun

    mtu = 1420
    tun = open_tun("pvt0", mtu=mtu, vnet_hdr=True)
    out: dict[str, Any] = {"vnet_hdr": tun.vnet_hdr, "offloads": sorted(tun.offloads)}
    if not tun.vnet_hdr:
        tun.close()
        return out
    netconf.set_up("pvt0")
    netconf.add_address("pvt0", "198.19.0.1/24")
    local, remote, rport = "198.19.0.1", "198.19.0.2", 5001
    cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli.setblocking(False)
    cli.bind((local, 0))
    sport = cli.getsockname()[1]
    try:
        cli.connect((remote, rport))
    except BlockingIOError:
        pass

    def tcp_from_tun(timeout: float) -> list[tuple[bytes, bytes]]:
        """(vnet header, TCP/IPv4 packet) pairs of our flow read within ``timeout``."""
        got: list[tuple[bytes, bytes]] = []
        if wait_readable(tun.fileno(), timeout):
            for buf in tun.read_batch(256):
                pkt = buf[VIRTIO_NET_HDR_LEN:]
                if len(pkt) >= 40 and pkt[0] >> 4 == 4 and pkt[9] == 6:
                    got.append((buf[:VIRTIO_NET_HDR_LEN], pkt))
        return got

    def write(pkt: bytes) -> None:
        assert tun.write_batch([bytes(VIRTIO_NET_HDR_LEN) + pkt]) == 1

    syn = None
    deadline = time.monotonic() + 3
    while syn is None and time.monotonic() < deadline:
        for _, pkt in tcp_from_tun(0.2):
            if pkt[33] & 0x02:  # SYN
                syn = pkt
    assert syn is not None, "no SYN came out of the tun"
    client_isn = struct.unpack("!I", syn[24:28])[0]
    server_isn = 1_000_000
    opts = b"\x02\x04" + struct.pack("!H", mtu - 40) + b"\x01\x03\x03\x07"  # MSS, NOP, window scale 7
    write(tcp4_packet(remote, local, rport, sport, server_isn, client_isn + 1, 0x12, opts))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if cli.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and connected(cli):
            break
        time.sleep(0.01)
    payload = b"x" * 65536
    sent = 0
    biggest, gso_types, gso_sizes, acked = 0, set(), set(), client_isn + 1
    deadline = time.monotonic() + 5
    rounds = 0
    while time.monotonic() < deadline and rounds < 200 and biggest <= mtu:
        rounds += 1
        if sent < 4 * len(payload):
            try:
                sent += cli.send(payload)
            except BlockingIOError:
                pass
        for vh, pkt in tcp_from_tun(0.1):
            ihl = (pkt[0] & 15) * 4
            data_off = (pkt[ihl + 12] >> 4) * 4
            seq = struct.unpack("!I", pkt[ihl + 4:ihl + 8])[0]
            end = seq + len(pkt) - ihl - data_off
            biggest = max(biggest, len(pkt))
            gso_types.add(vh[1])
            gso_sizes.add(int.from_bytes(vh[4:6], "little"))
            acked = max(acked, end)
        # acknowledge everything so the congestion window opens (a super-packet may need a few rounds)
        write(tcp4_packet(remote, local, rport, sport, server_isn + 1, acked, 0x10, window=65535))
    out.update(biggest=biggest, gso_types=sorted(gso_types), gso_sizes=sorted(gso_sizes), rounds=rounds)
    cli.close()
    tun.close()
    return out


def connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def fallbacks() -> dict[str, Any]:
    """Refused offloads: USO refused → kept without it; vnet_hdr refused → reopened plain, nothing left behind."""
    import fcntl as real_fcntl

    from tunnel import netconf
    from tunnel import tun as tunmod

    out: dict[str, Any] = {}
    real_ioctl = real_fcntl.ioctl

    class NoUso:
        @staticmethod
        def ioctl(fd: int, req: int, arg: Any = 0, *rest: Any) -> Any:
            if req == tunmod._TUNSETOFFLOAD and isinstance(arg, int) and arg & tunmod._TUN_F_USO4:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_ioctl(fd, req, arg, *rest)

    setattr(tunmod, "fcntl", NoUso)  # noqa: B010 - patch this helper process's copy only
    try:
        dev = tunmod.open_tun("pvt1", vnet_hdr=True)
        out["no_uso"] = [dev.vnet_hdr, sorted(dev.offloads)]
        dev.close()
    finally:
        setattr(tunmod, "fcntl", real_fcntl)  # noqa: B010

    real_enable = tunmod._enable_vnet_hdr

    def refuse(fd: int) -> frozenset[str]:
        raise OSError(errno.EINVAL, "Invalid argument")

    tunmod._enable_vnet_hdr = refuse
    try:
        dev = tunmod.open_tun("pvt2", vnet_hdr=True, mtu=1380)
        out["refused"] = [dev.vnet_hdr, sorted(dev.offloads), dev.fallback_reason, dev.mtu]
        out["refused_exists"] = netconf.link_exists("pvt2")
        netconf.set_up("pvt2")
        netconf.add_address("pvt2", "198.19.0.1/24")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"plain", ("198.19.0.9", 9))
        s.close()
        plain = None
        deadline = time.monotonic() + 3
        while plain is None and time.monotonic() < deadline:
            if wait_readable(dev.fileno(), 0.2):
                for buf in dev.read_batch(16):
                    if parse_udp(buf):
                        plain = parse_udp(buf)
        out["refused_reads_plain_ip"] = plain is not None and plain[4] == b"plain"
        dev.close()
    finally:
        tunmod._enable_vnet_hdr = real_enable
    out["gone_after_close"] = not netconf.link_exists("pvt2")

    # A tap's max MTU is 65535 - 14: the MTU step fails after creation and must not leave the device behind.
    try:
        tunmod.open_tun("pvtap0", tap=True, mtu=65535)
        out["mtu_error"] = None
    except tunmod.TunError as exc:
        out["mtu_error"] = [exc.errno, str(exc)]
    out["tap_left_behind"] = netconf.link_exists("pvtap0")
    tap = tunmod.open_tun("pvtap0", tap=True, mtu=9000)
    out["tap"] = [tap.mtu, tap.vnet_hdr]
    tap.close()
    return out


def multi_queue_and_errors() -> dict[str, Any]:
    from tunnel import netconf
    from tunnel import tun as tunmod

    out: dict[str, Any] = {}
    q1 = tunmod.open_tun("pvmq0", multi_queue=True)
    q2 = tunmod.open_tun("pvmq0", multi_queue=True)
    out["distinct_fds"] = q1.fileno() != q2.fileno()
    q1.close()
    out["exists_with_one_queue"] = netconf.link_exists("pvmq0")
    q2.close()
    out["exists_after_all_closed"] = netconf.link_exists("pvmq0")

    single = tunmod.open_tun("pvbusy0")
    try:
        tunmod.open_tun("pvbusy0")
        out["busy"] = None
    except tunmod.TunError as exc:
        out["busy"] = [exc.errno, str(exc)]
    single.close()
    try:
        single.read_batch(1)
        out["closed_read"] = None
    except tunmod.TunError as exc:
        out["closed_read"] = exc.errno

    os.setgid(65534)
    os.setuid(65534)  # this helper process only: no CAP_NET_ADMIN any more
    try:
        tunmod.open_tun("pveperm0")
        out["eperm"] = None
    except tunmod.TunError as exc:
        out["eperm"] = [exc.errno, str(exc), isinstance(exc, OSError)]
    return out


def attached_after_move(other: str) -> dict[str, Any]:
    """A tun moved to namespace ``other`` is still attached (and works there); a deleted one is not."""
    from tunnel import netconf
    from tunnel.tun import open_tun

    tun = open_tun("pvtmv0", vnet_hdr=True)
    out: dict[str, Any] = {"before": tun.attached()}
    netconf.move_to_netns("pvtmv0", other)
    out["gone_here"] = not netconf.link_exists("pvtmv0")
    out["there"] = netconf.link_exists("pvtmv0", netns=other)
    out["after_move"] = tun.attached()
    subprocess.run(["ip", "-n", other, "link", "del", "pvtmv0"], check=True)
    out["after_delete"] = tun.attached()
    tun.close()
    out["after_close"] = tun.attached()
    return out


def lone_read() -> dict[str, Any]:
    """read_batch of one queued packet makes one read() and no EAGAIN; several are all drained."""
    from tunnel import netconf
    from tunnel import tun as tun_module
    from tunnel.tun import open_tun

    tun = open_tun("pvt0", mtu=1420, vnet_hdr=False)
    netconf.set_up("pvt0")
    netconf.add_address("pvt0", "198.19.0.1/24")
    netconf.add_route("pvt0", "198.19.1.0/24")
    calls: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        calls.append(fd)
        return real_read(fd, n)

    tun_module.os.read = counting_read  # type: ignore[attr-defined]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("198.19.0.1", 0))
    out: dict[str, Any] = {}
    for label, count in (("one", 1), ("five", 5)):
        tun.read_batch(64)  # nothing of ours queued before (IPv6 chatter aside, and v6 is off here)
        calls.clear()
        for i in range(count):
            s.sendto(b"lone-%d" % i, ("198.19.1.7", 9999))
        wait_readable(tun.fileno(), 3.0)
        time.sleep(0.2)
        got = [b for b in tun.read_batch(64) if b[9] == 17]
        out[label] = [len(got), len(calls)]
    tun_module.os.read = real_read  # type: ignore[attr-defined]
    s.close()
    tun.close()
    return out


def udp_receiver(port: int, count: int, gro: bool) -> dict[str, Any]:
    """Bind dual-stack, collect ``count`` datagrams (bounded), report what arrived."""
    from tunnel.udp import UdpSocket

    sock = UdpSocket.bind(None, port, family="dual", gro=gro)
    print("READY", flush=True)
    got: list[list[Any]] = []
    deadline = time.monotonic() + 10
    while sum(len(g[0]) for g in got) < count and time.monotonic() < deadline:
        if wait_readable(sock.fileno(), 0.2):
            for dgrams, addr in sock.recv_batch(256):
                got.append([[len(d) for d in dgrams], list(addr), [d[:1].hex() for d in dgrams]])
    out = {"got": got, "gro": sock.gro, "gro_buffers": sock.gro_buffers}
    sock.close()
    return out


def udp_sender(dst: str, ports: list[int], sizes: list[int]) -> dict[str, Any]:
    from tunnel.udp import UdpSocket

    sock = UdpSocket.bind(None, 0, family="v4")
    dgrams = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    for port in ports:
        sock.send_batch((dst, port), dgrams)
    out = {"gso": sock.gso, "gso_sends": sock.gso_sends, "errors": dict(sock.errors), "dropped": sock.dropped}
    sock.close()
    return out
