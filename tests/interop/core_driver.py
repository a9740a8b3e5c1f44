"""Drive the sans-IO core from a plain UDP socket, against a real WireGuard peer.

Run inside a network namespace by tests/interop/test_core_wireguard_go.py:

    python core_driver.py --role initiator|responder --private B64 --peer B64 \
        --peer-endpoint HOST:PORT --listen PORT --local-ip 198.19.0.2 --peer-ip 198.19.0.1

It prints one JSON line with what happened.  As initiator it sends an ICMP echo request to
``--peer-ip`` through the tunnel and waits for the reply.  As responder it waits for the
peer's handshake and answers every ICMP echo request it receives through the tunnel.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

from crypto.keys import decode_key
from crypto.tunnel import Core, HandshakeCompleted
from vpn.testlab.packets import ICMP, icmp_echo, ipv4


def parse_icmp(pkt: bytes) -> tuple[str, str, int, int, int, bytes] | None:
    if len(pkt) < 28 or pkt[0] >> 4 != 4 or pkt[9] != 1:
        return None
    ihl = (pkt[0] & 15) * 4
    src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
    kind, _, _, ident, seq = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
    return src, dst, kind, ident, seq, pkt[ihl + 8:]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["initiator", "responder"], required=True)
    ap.add_argument("--private", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--psk")
    ap.add_argument("--peer-endpoint")
    ap.add_argument("--listen", type=int, default=0)
    ap.add_argument("--local-ip", required=True)
    ap.add_argument("--peer-ip", required=True)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--under-load", action="store_true", help="answer handshakes without mac2 with cookies")
    a = ap.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", a.listen))
    print("READY", flush=True)
    endpoint = None
    if a.peer_endpoint:
        host, port = a.peer_endpoint.rsplit(":", 1)
        endpoint = (host, int(port))
    core = Core(decode_key(a.private), rng=os.urandom)
    core.force_under_load = a.under_load
    tunnel = core.add_peer(decode_key(a.peer), preshared_key=decode_key(a.psk) if a.psk else None,
                           endpoint=endpoint)
    result: dict[str, object] = {"role": a.role, "handshakes": 0, "replies": 0, "answered": 0}
    marker = b"pyvpn-interop-" + os.urandom(8).hex().encode()
    start = time.monotonic()
    deadline = start + a.timeout
    next_ping = start
    seq = 0

    def flush() -> None:
        for ep, dgrams in core.take_outbox():
            for d in dgrams:
                sock.sendto(d, ep)
        for ev in core.take_events():
            if isinstance(ev, HandshakeCompleted):
                result["handshakes"] = int(result["handshakes"]) + 1  # type: ignore[call-overload]

    while time.monotonic() < deadline:
        now = time.monotonic()
        if a.role == "initiator" and now >= next_ping and seq < 50:
            seq += 1
            ping = ipv4(a.local_ip, a.peer_ip, ICMP, icmp_echo(0x4242, seq, marker), ident=seq)
            tunnel.encapsulate([ping], now=now)
            next_ping = now + 0.5
        nt = core.next_timer()
        if nt is not None and nt <= now:
            core.handle_timer(now=now)
        flush()
        r, _, _ = select.select([sock], [], [], 0.05)
        if not r:
            continue
        data, addr = sock.recvfrom(65535)
        now = time.monotonic()
        for _t, packets in core.decapsulate(addr, [data], now=now):
            for p in packets:
                info = parse_icmp(p)
                if info is None:
                    continue
                src, dst, kind, ident, pseq, payload = info
                if a.role == "initiator" and kind == 0 and ident == 0x4242 and payload == marker:
                    result["replies"] = int(result["replies"]) + 1  # type: ignore[call-overload]
                    result["reply_len_padded_ok"] = True
                elif kind == 8 and dst == a.local_ip:
                    reply = ipv4(a.local_ip, src, ICMP, icmp_echo(ident, pseq, payload, reply=True), ident=pseq)
                    tunnel.encapsulate([reply], now=now)
                    result["answered"] = int(result["answered"]) + 1  # type: ignore[call-overload]
        flush()
        done_key = "replies" if a.role == "initiator" else "answered"
        if int(result[done_key]) >= a.count:  # type: ignore[call-overload]
            # linger briefly so the peer sees our last packets
            break
    result["drops"] = dict(core.drops)
    result["rx_bytes"] = tunnel.rx_bytes
    result["tx_bytes"] = tunnel.tx_bytes
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
