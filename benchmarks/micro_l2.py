"""Micro benchmark: the L2 path's per-frame Python work, frame by frame against the bulk branches.

Rows (CPU time per frame, best and median of ``--rounds`` rounds of ``--number`` calls each, one core):

* VXLAN encapsulation of 1370-byte TCP frames of one flow: :func:`tunnel.encap.vxlan.encap_ip` per frame
  (the path before the bulk branches), :func:`~tunnel.encap.vxlan.encap_ip_batch` of a lone frame (the
  cached outer header) and of a batch of ``--batch`` frames (one header per length, C-level loops);
* decapsulation: :func:`~tunnel.encap.vxlan.decap_ip` per packet against
  :func:`~tunnel.encap.vxlan.decap_ip_batch` of the batch;
* the switch: ``Switch.from_peer`` per frame against one call with ``count=`` for the run;
* tap writes' preparation: the all-zero virtio header per frame against :func:`tunnel.offload.gro_frames`
  (one super-frame for the batch; the system calls it saves are not in this figure);
* a TSO read cut in Python: :func:`tunnel.offload.segment` with ``l2=True`` of one super-frame.

Run: ``.venv/bin/python benchmarks/micro_l2.py [--rounds 15] [--batch 40]`` (the Python that has pyvpn installed).
"""

from __future__ import annotations

import argparse
import platform
import socket
import statistics
import struct
import time
from collections.abc import Callable

from tunnel.encap.vxlan import decap_ip, decap_ip_batch, encap_ip, encap_ip_batch
from tunnel.offload import gro_frames, segment
from vpn.l2.mactable import LOCAL
from vpn.l2.switch import Switch
from vpn.testlab.packets import TCP, eth, ipv4, tcp

MSS = 1318  # 1370-byte IP packets with a 32-byte TCP header (timestamps)
SRC, DST = socket.inet_aton("198.19.0.2"), socket.inet_aton("198.19.0.1")
MAC_A, MAC_B = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")


def tcp_frames(n: int, seq: int = 1000) -> list[bytes]:
    """``n`` full-size in-order segments of one IPv4 TCP flow, as Ethernet frames with valid checksums."""
    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", 1, 2)  # NOP NOP timestamps
    return [eth(ipv4("100.64.100.11", "100.64.100.21", TCP,
                     tcp(40000, 5201, bytes([i & 0xFF]) * MSS, seq=seq + i * MSS, ack=77, window=512, options=opts),
                     ident=i, l4_csum="full"), dst=MAC_B, src=MAC_A)
            for i in range(n)]


def cpu_per(fn: Callable[[], object], number: int, per_call: int) -> float:
    t0 = time.process_time()
    for _ in range(number):
        fn()
    return (time.process_time() - t0) / (number * per_call)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=40, help="frames per batch (one flow)")
    ap.add_argument("--number", type=int, default=50, help="calls per row and round")
    args = ap.parse_args()
    n, number = args.batch, args.number
    frames = tcp_frames(n)
    packets = [encap_ip(f, vni=100, src_ip=SRC, dst_ip=DST) for f in frames]
    assert encap_ip_batch(frames, vni=100, src_ip=SRC, dst_ip=DST) == packets
    got = decap_ip_batch(packets)
    assert got is not None and got[1] == frames
    (sup,) = gro_frames(frames)
    assert segment(sup, l2=True) == frames
    sw: Switch[bytes] = Switch(100)
    sw.add_peer(b"p")
    sw.from_local(frames[0][6:12] + frames[0][0:6] + frames[0][12:], now=0.0)  # the destination is local
    assert sw.from_peer(frames[0], b"p", now=0.0, count=n).deliver_local and sw.table.lookup(MAC_B, now=0.0) == LOCAL

    rows: dict[str, list[float]] = {}
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("encap_ip, frame by frame", lambda: [encap_ip(f, vni=100, src_ip=SRC, dst_ip=DST) for f in frames], n),
        ("encap_ip_batch, a lone frame", lambda: encap_ip_batch(frames[:1], vni=100, src_ip=SRC, dst_ip=DST), 1),
        (f"encap_ip_batch, {n} frames of one flow",
         lambda: encap_ip_batch(frames, vni=100, src_ip=SRC, dst_ip=DST), n),
        ("decap_ip, packet by packet", lambda: [decap_ip(p) for p in packets], n),
        (f"decap_ip_batch, {n} packets", lambda: decap_ip_batch(packets), n),
        ("Switch.from_peer, frame by frame", lambda: [sw.from_peer(f, b"p", now=1.0) for f in frames], n),
        (f"Switch.from_peer, count={n}", lambda: sw.from_peer(frames[0], b"p", now=1.0, count=n), n),
        ("tap write buffers, frame by frame", lambda: [bytes(10) + f for f in frames], n),
        (f"gro_frames, {n} frames -> 1 super-frame", lambda: gro_frames(frames), n),
        ("segment(l2=True) of a TSO read", lambda: segment(sup, l2=True), n),
    ]
    for _ in range(args.rounds):
        for name, fn, per in cases:
            rows.setdefault(name, []).append(cpu_per(fn, number, per))
    print(f"# pyvpn micro_l2: Python {platform.python_version()}, {platform.machine()}; {args.rounds} rounds x "
          f"{number} calls; {n} frames of {len(frames[0])} B; CPU time per frame, best and median of the rounds")
    print(f"{'operation':<44} {'us best':>8} {'us med':>8}")
    for name, v in rows.items():
        print(f"{name:<44} {min(v) * 1e6:>8.2f} {statistics.median(v) * 1e6:>8.2f}")


if __name__ == "__main__":
    main()
