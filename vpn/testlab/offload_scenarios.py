"""Kernel scenarios for tests/netns/test_offload_tun.py: tunnel.offload against a real vnet-hdr tun.

Each scenario runs in a child process inside a fresh namespace (:func:`vpn.testlab.child.call`).  It opens
/dev/net/tun itself with ``fcntl.ioctl`` (TUNSETIFF with IFF_VNET_HDR, TUNSETOFFLOAD), plays a fake peer
100.64.0.2 behind the tun, talks to real kernel sockets bound to the tun's address 100.64.0.1 and returns
its findings as JSON-able values.  Segments read back are checked with
:func:`~vpn.testlab.packets.reference_checksum`, a textbook sum independent of tunnel.offload.  All traffic
stays inside the namespace; every wait is bounded.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import subprocess
import time
from typing import Any

from .packets import TCP, UDP, ipv4, l4_pseudo_header, reference_checksum, tcp, udp

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6 = 0x01, 0x02, 0x04, 0x20, 0x40

LOCAL, PEER = "100.64.0.1", "100.64.0.2"
DEV = "pvoff0"


# -- helpers used inside the namespace (the builders also by the test) ------------------------------------


def tcp_packet(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"", opts: bytes = b"",
         ip_id: int = 1) -> bytes:
    seg = tcp(sport, dport, payload, seq=seq, ack=ack, flags=flags, options=opts)
    return ipv4(PEER, LOCAL, TCP, seg, ident=ip_id, l4_csum="full")


def udp_packet(sport: int, dport: int, payload: bytes, ip_id: int) -> bytes:
    return ipv4(PEER, LOCAL, UDP, udp(sport, dport, payload), ident=ip_id, l4_csum="full")


def open_vnet_tun(offload: int) -> tuple[int, int]:
    """Open the vnet-hdr tun, set as many offloads as the kernel takes, address and bring it up."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", DEV.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, offload)
    except OSError:
        offload &= ~(TUN_F_USO4 | TUN_F_USO6)
        fcntl.ioctl(fd, TUNSETOFFLOAD, offload)
    subprocess.run(["ip", "addr", "add", f"{LOCAL}/24", "dev", DEV], check=True)
    subprocess.run(["ip", "link", "set", DEV, "up"], check=True)
    return fd, offload


def open_uso_tun_and_socket(port: int) -> tuple[int, socket.socket] | None:
    """The vnet-hdr tun with every offload including USO, and a UDP socket on ``LOCAL:port``; None when the
    kernel refuses USO."""
    fd, offload = open_vnet_tun(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6)
    if not offload & TUN_F_USO4:
        return None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((LOCAL, port))
    return fd, s


def read_packets(fd: int, deadline: float) -> list[tuple[int, bytes]]:
    """One tun read (bounded wait), cut with segment(): [(gso_type, packet), ...]; [] on timeout."""
    from tunnel.offload import VirtioNetHdr, segment

    r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    if not r:
        return []
    buf = os.read(fd, 70000)
    gso = VirtioNetHdr.unpack(buf).gso_type
    return [(gso, p) for p in segment(buf)]


def is_tcp_to_peer(p: bytes, port: int) -> bool:
    return p[0] == 0x45 and p[9] == 6 and p[16:20] == socket.inet_aton(PEER) and \
        int.from_bytes(p[22:24], "big") == port


def handshake(fd: int, srv: socket.socket, sport: int, dport: int) -> tuple[socket.socket, int]:
    """Fake-peer active open towards the kernel listener; returns (accepted socket, server next seq)."""
    from tunnel.offload import with_hdr

    mss = struct.pack("!BBH", 2, 4, 1400)
    os.write(fd, with_hdr(tcp_packet(sport, dport, 1000, 0, 0x02, opts=mss)))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for _, p in read_packets(fd, deadline):
            if is_tcp_to_peer(p, sport) and p[33] & 0x12 == 0x12:
                iss = int.from_bytes(p[24:28], "big")
                os.write(fd, with_hdr(tcp_packet(sport, dport, 1001, iss + 1, 0x10)))
                srv.settimeout(5)
                conn, _ = srv.accept()
                return conn, iss + 1
    raise AssertionError("no SYN-ACK from the kernel")


# -- scenarios (run inside the namespace) -----------------------------------------------------------------


def write_tcp_super_packet() -> dict[str, Any]:
    from tunnel.offload import VirtioNetHdr, coalesce

    fd, _ = open_vnet_tun(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((LOCAL, 5001))
    srv.listen(1)
    conn, rcv_nxt = handshake(fd, srv, 40000, 5001)
    data = os.urandom(30 * 1000)
    segs = [tcp_packet(40000, 5001, 1001 + i * 1000, rcv_nxt, 0x18 if i == 29 else 0x10,
                 data[i * 1000:(i + 1) * 1000], ip_id=2 + i) for i in range(30)]
    bufs = coalesce(segs)
    hdr = VirtioNetHdr.unpack(bufs[0])
    written = [os.write(fd, b) for b in bufs]
    got = b""
    conn.settimeout(5)
    while len(got) < len(data):
        chunk = conn.recv(65536)
        if not chunk:
            break
        got += chunk
    # The kernel acknowledges everything it took from the one super-packet.
    acked = 0
    deadline = time.monotonic() + 5
    while acked != 1001 + len(data) and time.monotonic() < deadline:
        for _, p in read_packets(fd, deadline):
            if is_tcp_to_peer(p, 40000):
                acked = max(acked, int.from_bytes(p[28:32], "big"))
    return {"writes": len(bufs), "written": written, "sizes": [len(b) for b in bufs],
            "gso_type": hdr.gso_type, "gso_size": hdr.gso_size, "received_ok": got == data,
            "received": len(got), "acked": acked - 1001}


def write_uso_super_packet() -> dict[str, Any]:
    from tunnel.offload import VirtioNetHdr, coalesce

    opened = open_uso_tun_and_socket(5002)
    if opened is None:
        return {"skip": "kernel refused TUN_F_USO4"}
    fd, s = opened
    s.settimeout(5)
    dgrams = [os.urandom(1000) for _ in range(19)] + [b"last one"]
    bufs = coalesce([udp_packet(40001, 5002, d, 100 + i) for i, d in enumerate(dgrams)], udp=True)
    hdr = VirtioNetHdr.unpack(bufs[0])
    for b in bufs:
        os.write(fd, b)
    got: list[bytes] = []
    try:
        while len(got) < len(dgrams):
            got.append(s.recv(65536))
    except TimeoutError:
        pass
    return {"writes": len(bufs), "gso_type": hdr.gso_type, "received_ok": got == dgrams, "received": len(got)}


def read_tso_from_kernel() -> dict[str, Any]:
    """A kernel TCP sender towards the fake peer: read TSO super-packets, segment, check, ACK."""
    from tunnel.offload import with_hdr

    fd, _ = open_vnet_tun(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli.setblocking(False)
    try:
        cli.connect((PEER, 5003))
    except BlockingIOError:
        pass
    deadline = time.monotonic() + 5
    iss = None
    while iss is None and time.monotonic() < deadline:
        for _, p in read_packets(fd, deadline):
            if p[0] == 0x45 and p[9] == 6 and p[33] & 0x02:
                iss = int.from_bytes(p[24:28], "big")
                cport = int.from_bytes(p[20:22], "big")
    assert iss is not None, "no SYN"
    mss = struct.pack("!BBH", 2, 4, 1400)
    mine = 50000

    def reply(seq: int, ack: int, flags: int, opts: bytes = b"") -> None:
        pkt = tcp_packet(5003, cport, seq, ack, flags, opts=opts)
        # _tcp builds PEER->LOCAL; the kernel socket here is LOCAL->PEER, so the same direction is right.
        os.write(fd, with_hdr(pkt))

    reply(mine, iss + 1, 0x12, mss)
    sel_deadline = time.monotonic() + 5
    while time.monotonic() < sel_deadline:
        _, w, _ = select.select([], [cli], [], 0.1)
        if w:
            break
    assert cli.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    data = os.urandom(200_000)
    sent = 0
    expect = iss + 1
    received = bytearray()
    gso_reads = bad = segments = 0
    max_seg = 0
    deadline = time.monotonic() + 15
    while len(received) < len(data) and time.monotonic() < deadline:
        if sent < len(data):
            try:
                sent += cli.send(data[sent:sent + 65536])
            except BlockingIOError:
                pass
        pkts = read_packets(fd, min(deadline, time.monotonic() + 0.2))
        if any(g != 0 for g, _ in pkts) and len(pkts) > 1:
            gso_reads += 1
        for _, p in pkts:
            if not (p[0] == 0x45 and p[9] == 6 and int.from_bytes(p[22:24], "big") == 5003):
                continue
            segments += 1
            ihl = (p[0] & 15) * 4
            body = p[ihl:int.from_bytes(p[2:4], "big")]
            ok_ip = reference_checksum(p[:ihl]) == 0
            ok_tcp = reference_checksum(l4_pseudo_header(LOCAL, PEER, 6, len(body)) + body) == 0
            if not (ok_ip and ok_tcp):
                bad += 1
            thl = (body[12] >> 4) * 4
            payload = body[thl:]
            max_seg = max(max_seg, len(payload))
            seq = int.from_bytes(body[4:8], "big")
            if payload and seq == expect:
                received += payload
                expect = (expect + len(payload)) & 0xFFFFFFFF
        reply(mine + 1, expect, 0x10)
    cli.close()
    return {"received_ok": bytes(received) == data, "received": len(received), "gso_reads": gso_reads,
            "bad_checksums": bad, "segments": segments, "max_payload": max_seg}


def read_uso_from_kernel() -> dict[str, Any]:
    """A kernel UDP socket with UDP_SEGMENT sends to the fake peer: read, segment, check every datagram."""
    opened = open_uso_tun_and_socket(40002)
    if opened is None:
        return {"skip": "kernel refused TUN_F_USO4"}
    fd, s = opened
    s.setsockopt(socket.IPPROTO_UDP, 103, 1000)  # UDP_SEGMENT
    data = os.urandom(9 * 1000 + 123)
    s.sendto(data, (PEER, 5004))
    got: list[bytes] = []
    gso_types = set()
    bad = 0
    deadline = time.monotonic() + 5
    while sum(map(len, got)) < len(data) and time.monotonic() < deadline:
        for g, p in read_packets(fd, deadline):
            if not (p[0] == 0x45 and p[9] == 17 and int.from_bytes(p[22:24], "big") == 5004):
                continue
            gso_types.add(g)
            body = p[20:int.from_bytes(p[2:4], "big")]
            pseudo = l4_pseudo_header(LOCAL, PEER, 17, len(body))
            if reference_checksum(p[:20]) != 0 or reference_checksum(pseudo + body) != 0 \
                    or int.from_bytes(body[4:6], "big") != len(body):
                bad += 1
            got.append(body[8:])
    return {"received_ok": b"".join(got) == data, "datagrams": [len(g) for g in got], "bad": bad,
            "gso_types": sorted(gso_types)}
