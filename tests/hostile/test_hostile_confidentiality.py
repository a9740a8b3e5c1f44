"""What an observer of the underlay sees: only well-formed WireGuard messages, never the payload.

An AF_PACKET capture on the server's underlay interface (bounded in time, frames and bytes,
with virtio-net headers so that UDP GSO/GRO super-packets are cut back into datagrams) runs
from before the handshake through a TCP transfer, UDP datagrams and pings that all carry a
random marker.  The capture must not contain the marker (nor its hex form used by ping), must
not contain a single IP packet with a tunnel address, and every UDP payload between the two
endpoints must be a WireGuard message of the right size: type 1 = 148 bytes, type 2 = 92,
type 3 = 64, type 4 = 32 + a multiple of 16 — or 32 + MTU for a packet that fills the MTU (the
padding never goes beyond the MTU, whitepaper §5.4.6; with MTU 1420 such a message is 1452 bytes).
"""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from collections import Counter
from pathlib import Path

import pytest
from hostile_harness import (
    PORT,
    SERVER_TUN,
    SERVER_TUN6,
    SERVER_UNDERLAY,
    Lab,
    assert_no_traceback,
    report,
)
from hostile_harness import capture_frames as frames

MTU = 1420
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
GSO_UDP_L4 = 5
TUNNEL_NETS = (ipaddress.ip_network("198.19.0.0/16"), ipaddress.ip_network("fd00:19::/64"))


def wg_size_ok(msg: bytes) -> bool:
    if len(msg) < 4 or msg[1:4] != b"\0\0\0":
        return False
    t, n = msg[0], len(msg)
    if t == 1:
        return n == 148
    if t == 2:
        return n == 92
    if t == 3:
        return n == 64
    if t == 4:
        return n >= 32 and ((n - 32) % 16 == 0 or n - 32 == MTU)
    return False


def classify(path: Path, endpoints: set[tuple[str, int]]) -> tuple[Counter[str], list[str]]:
    kinds: Counter[str] = Counter()
    problems: list[str] = []
    for _pkttype, vnet, eth in frames(path):
        _flags, gso_type, _hl, gso_size, _cs, _co = VNET_HDR.unpack(vnet)
        ethertype = struct.unpack_from("!H", eth, 12)[0]
        ip = eth[14:]
        if ethertype == 0x0806:
            kinds["arp"] += 1
            continue
        if ethertype == 0x0800:
            ihl = (ip[0] & 15) * 4
            proto, src, dst = ip[9], ipaddress.ip_address(ip[12:16]), ipaddress.ip_address(ip[16:20])
            l4 = ip[ihl:]
        elif ethertype == 0x86DD:
            proto, src, dst = ip[6], ipaddress.ip_address(ip[8:24]), ipaddress.ip_address(ip[24:40])
            l4 = ip[40:]
            if proto == 58 or (proto == 0 and dst.is_multicast):  # ND, MLD (behind hop-by-hop) of the underlay
                kinds["icmpv6"] += 1
                if any(a in net for a in (src, dst) for net in TUNNEL_NETS):
                    problems.append(f"tunnel address on the underlay: {src} > {dst}")
                continue
        else:
            problems.append(f"unexpected ethertype {ethertype:#x}")
            continue
        if any(a in net for a in (src, dst) for net in TUNNEL_NETS):
            problems.append(f"tunnel address on the underlay: {src} > {dst}")
            continue
        if proto != 17:
            problems.append(f"non-UDP IP packet on the underlay: proto {proto} {src} > {dst}")
            continue
        sport, dport, _ulen, _csum = struct.unpack_from("!HHHH", l4, 0)
        if (str(src), sport) not in endpoints or (str(dst), dport) not in endpoints:
            problems.append(f"UDP between unexpected endpoints {src}:{sport} > {dst}:{dport}")
            continue
        payload = l4[8:]
        if gso_size and (gso_type & 0x7F) == GSO_UDP_L4:
            msgs = [payload[i : i + gso_size] for i in range(0, len(payload), gso_size)]
            kinds["gso_super_packets"] += 1
        else:
            msgs = [payload]
        for m in msgs:
            if wg_size_ok(m):
                kinds[f"type{m[0]}"] += 1
            else:
                problems.append(f"not a well-formed WireGuard message: {len(m)} bytes, head {m[:8].hex()}")
    return kinds, problems


@pytest.mark.root
def test_underlay_capture_holds_only_wireguard_messages_and_no_plaintext(tmp_path: Path) -> None:
    marker = f"PYVPN-CONFIDENTIAL-{os.urandom(8).hex()}"
    ping_pattern = os.urandom(16).hex()
    with Lab(log_level="info") as lab:
        lab.start(handshake=False)
        cap_file = tmp_path / "underlay.cap"
        stop = tmp_path / "stop"
        cap = lab.tool(lab.srv_ns, "capture", "--ifname", "eth0", "--seconds", "30", "--max-packets", "100000",
                       "--max-bytes", str(128 << 20), "--out", str(cap_file), "--stop-file", str(stop))
        assert cap.stdout is not None and b"capturing" in cap.stdout.readline()
        lab.handshake()  # the handshake is inside the capture
        sink = lab.tool(lab.srv_ns, "tcp-sink", "--bind", SERVER_TUN, "--port", "5004", "--timeout", "20",
                        "--marker", marker)
        time.sleep(0.2)
        src = lab.run_tool(lab.cli_ns, "tcp-source", "--connect", f"{SERVER_TUN}:5004", "--bytes", str(4 << 20),
                           "--marker", marker, timeout=30)
        got = lab.tool_result(sink, 30)
        lab.run_tool(lab.cli_ns, "udp-send", "--to", f"[{SERVER_TUN6}]:5005", "--marker", marker, "--count", "50",
                     "--size", "1000", "--interval", "0.005")
        lab.run_tool(lab.cli_ns, "udp-send", "--to", f"{SERVER_TUN}:5005", "--marker", marker, "--count", "50",
                     "--size", "60", "--interval", "0.005")
        pings = lab.cli_ns.run(["ping", "-n", "-q", "-c", "20", "-i", "0.05", "-s", "1000", "-p", ping_pattern,
                                SERVER_TUN], check=False)
        assert " 0% packet loss" in pings.stdout, pings.stdout
        time.sleep(0.5)
        stop.touch()
        capture = lab.tool_result(cap, 40)

        assert got["sha256"] == src["sha256"] and got["marker_hits"] > 50_000  # the marker really went through
        data = cap_file.read_bytes()
        assert capture["frames"] > 100
        assert marker.encode() not in data
        assert marker.encode().hex().encode() not in data
        assert bytes.fromhex(ping_pattern) not in data
        endpoints = {(SERVER_UNDERLAY, PORT), (lab.client_underlay, PORT + 1)}
        kinds, problems = classify(cap_file, endpoints)
        report("confidentiality", capture=capture, kinds=dict(kinds), problems=problems[:5],
               marker_hits_at_sink=got["marker_hits"])
        assert not problems, problems[:20]
        assert kinds["type1"] >= 1 and kinds["type2"] >= 1 and kinds["type4"] > 1000
        assert_no_traceback(lab.server, lab.client)
