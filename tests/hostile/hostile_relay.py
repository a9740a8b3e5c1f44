"""An impairment relay for WireGuard datagrams: drop, duplicate, reorder, delay and corrupt.

Run in a middle namespace, between a client and a server::

    client ──▶ LISTEN (relay) ──▶ [impair] ──▶ from UPSTREAM-BIND to UPSTREAM (server)
    client ◀── LISTEN (relay) ◀── [impair] ◀── UPSTREAM-BIND (relay) ◀── server

"up" is client → server, "down" is server → client.  Decisions come from one seeded
:class:`random.Random`, so a run is reproducible given the same arrival order.

Per datagram and direction: drop with probability ``loss``; otherwise send one copy, or two
with probability ``dup``; each copy is corrupted (one random bit flipped, anywhere) with
probability ``corrupt``, and held back for a random 0..``reorder_ms`` with probability
``reorder`` (later datagrams overtake it), on top of a fixed ``delay_ms``.

:class:`ReceiverModel` predicts what an honest WireGuard receiver must do with each copy as it
is sent (the receiver sees them in that order, as the veth keeps order): a transport message
whose header is intact goes through a per-index replay window (:mod:`crypto.replay`, the
receiver's own algorithm) — seen counter → ``replayed_counter``, flipped bit → ``decrypt_failed``,
else delivered; a transport message with a damaged header (type, reserved bytes or receiver
index) → ``corrupt_header`` (the receiver says ``unknown_index`` or another parse error).
Handshake messages are counted as ``control``.  The tests compare these predictions with the
daemon's drop counters and tun counters.

The relay can also record the datagrams it receives and later inject them again unchanged
(replay attacks), or dump them to a file (samples for the garbage generator).

Control: one JSON object per line on stdin, one JSON reply per line on stdout.  Commands:
``ping``, ``stats``, ``reset``, ``set`` (loss/dup/corrupt/reorder/reorder_ms/delay_ms),
``record`` (on, clear), ``recorded``, ``inject`` (dir, types, first, last), ``dump`` (path),
``quit``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import selectors
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from crypto.replay import ReplayWindow

_TRANSPORT = b"\x04\0\0\0"
MAX_RECORDED = 200_000


def kind(d: bytes) -> str:
    """``init``/``resp``/``cookie``/``data``/``keepalive``/``other`` by the (intact) header."""
    if len(d) >= 4 and d[1:4] == b"\0\0\0":
        t = d[0]
        if t == 1:
            return "init"
        if t == 2:
            return "resp"
        if t == 3:
            return "cookie"
        if t == 4:
            return "keepalive" if len(d) == 32 else "data"
    return "other"


@dataclass
class Impairment:
    loss: float = 0.0
    dup: float = 0.0
    corrupt: float = 0.0
    reorder: float = 0.0
    reorder_ms: float = 5.0
    delay_ms: float = 0.0

    def update(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            if k in ("loss", "dup", "corrupt", "reorder", "reorder_ms", "delay_ms"):
                setattr(self, k, float(v))


class ReceiverModel:
    """What an honest receiver must do with each transport copy, in sending order."""

    def __init__(self) -> None:
        self.windows: dict[bytes, ReplayWindow] = {}
        self.counts: Counter[str] = Counter()

    def verdict(self, original: bytes, sent: bytes) -> str:
        if original[:4] != _TRANSPORT or len(original) < 32:
            v = "control"
        elif sent[:8] != original[:8] or len(sent) < 32:
            v = "corrupt_header"
        else:
            w = self.windows.get(sent[4:8])
            if w is None:
                w = self.windows[sent[4:8]] = ReplayWindow()
            counter = int.from_bytes(sent[8:16], "little")
            if not w.check(counter):
                v = "replayed_counter"
            elif sent != original:
                v = "decrypt_failed"
            else:
                w.accept(counter)
                v = "delivered_data" if len(sent) > 32 else "delivered_keepalive"
        self.counts[v] += 1
        return v


class Relay:
    def __init__(self, listen: tuple[str, int], upstream_bind: tuple[str, int], upstream: tuple[str, int],
                 impairment: Impairment, seed: int) -> None:
        self.down_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.down_sock.bind(listen)
        self.up_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.up_sock.bind(upstream_bind)
        for s in (self.down_sock, self.up_sock):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setblocking(False)
        self.upstream = upstream
        self.client: tuple[str, int] | None = None
        self.imp = impairment
        self.rng = random.Random(seed)
        self.heap: list[tuple[float, int, str, bytes, bytes]] = []
        self.seq = 0
        self.recording = False
        self.recorded: list[tuple[str, bytes]] = []
        self.reset()

    def reset(self) -> None:
        self.stats: dict[str, Counter[str]] = {"up": Counter(), "down": Counter()}
        self.models = {"up": ReceiverModel(), "down": ReceiverModel()}

    # -- datagrams --------------------------------------------------------------------------
    def on_datagram(self, direction: str, d: bytes, now: float) -> None:
        st = self.stats[direction]
        k = kind(d)
        st["received"] += 1
        st["received_" + k] += 1
        if self.recording and len(self.recorded) < MAX_RECORDED:
            self.recorded.append((direction, d))
        imp, rng = self.imp, self.rng
        if rng.random() < imp.loss:
            st["dropped"] += 1
            return
        copies = 1
        if rng.random() < imp.dup:
            copies = 2
            st["duplicated"] += 1
        for _ in range(copies):
            out = d
            if d and rng.random() < imp.corrupt:
                bit = rng.randrange(len(d) * 8)
                b = bytearray(d)
                b[bit >> 3] ^= 1 << (bit & 7)
                out = bytes(b)
                st["corrupted"] += 1
                st["corrupted_" + k] += 1
            delay = imp.delay_ms / 1000.0
            if imp.reorder and rng.random() < imp.reorder:
                delay += rng.random() * imp.reorder_ms / 1000.0
                st["held_back"] += 1
            if delay <= 0:
                self.release(now)  # anything already due goes first
                self.send(direction, d, out)
            else:
                self.seq += 1
                heapq.heappush(self.heap, (now + delay, self.seq, direction, d, out))

    def send(self, direction: str, original: bytes, out: bytes) -> None:
        st = self.stats[direction]
        try:
            if direction == "up":
                self.up_sock.sendto(out, self.upstream)
            elif self.client is not None:
                self.down_sock.sendto(out, self.client)
            else:
                st["no_client"] += 1
                return
        except OSError as e:
            st["send_error_" + (os.strerror(e.errno) if e.errno else "?")] += 1
            return
        st["sent"] += 1
        self.models[direction].verdict(original, out)

    def release(self, now: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, direction, original, out = heapq.heappop(heap)
            self.send(direction, original, out)

    def drain(self, sock: socket.socket, direction: str) -> None:
        now = time.monotonic()
        for _ in range(512):
            try:
                d, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats[direction]["recv_error"] += 1
                continue
            if direction == "up":
                self.client = addr
            elif addr[:2] != self.upstream:
                self.stats[direction]["foreign_source"] += 1
                continue
            self.on_datagram(direction, d, now)
        self.release(time.monotonic())

    # -- control ------------------------------------------------------------------------------
    def command(self, req: dict[str, Any]) -> dict[str, Any] | None:
        cmd = req.get("cmd")
        if cmd == "ping":
            return {"ok": True}
        if cmd == "stats":
            return {"ok": True, "pending": len(self.heap), "client": self.client,
                    **{d: dict(c) for d, c in self.stats.items()},
                    "expected": {d: dict(m.counts) for d, m in self.models.items()}}
        if cmd == "reset":
            self.reset()
            return {"ok": True}
        if cmd == "set":
            self.imp.update(req)
            return {"ok": True, "impairment": self.imp.__dict__}
        if cmd == "record":
            if req.get("clear", True):
                self.recorded = []
            self.recording = bool(req.get("on", True))
            return {"ok": True}
        if cmd == "recorded":
            c = Counter(f"{d}_{kind(x)}" for d, x in self.recorded)
            return {"ok": True, "count": len(self.recorded), "kinds": dict(c)}
        if cmd == "inject":
            return self.inject(req)
        if cmd == "dump":
            with open(req["path"], "w") as f:
                f.writelines(json.dumps({"dir": d, "hex": x.hex()}) + "\n" for d, x in self.recorded)
            return {"ok": True, "count": len(self.recorded)}
        if cmd == "quit":
            return None
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def inject(self, req: dict[str, Any]) -> dict[str, Any]:
        """Send recorded datagrams again, unchanged and unimpaired (a replay attack)."""
        direction = req.get("dir", "up")
        kinds = set(req.get("kinds") or ["init", "resp", "cookie", "data", "keepalive", "other"])
        chosen = [x for d, x in self.recorded if d == direction and kind(x) in kinds]
        first = req.get("first")
        if first is not None:
            chosen = chosen[: int(first)]
        sent: Counter[str] = Counter()
        for x in chosen:
            try:
                if direction == "up":
                    self.up_sock.sendto(x, self.upstream)
                elif self.client is not None:
                    self.down_sock.sendto(x, self.client)
                else:
                    continue
            except BlockingIOError:
                time.sleep(0.001)
                continue
            sent[kind(x)] += 1
            if sum(sent.values()) % 64 == 0:
                time.sleep(0.0005)  # do not overrun the receiver's buffer: every replay must be seen
        return {"ok": True, "sent": dict(sent), "total": sum(sent.values())}

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.down_sock, selectors.EVENT_READ, "up")
        sel.register(self.up_sock, selectors.EVENT_READ, "down")
        sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "ctl")
        stdin = os.fdopen(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
        pending = b""
        while True:
            timeout = None
            if self.heap:
                timeout = max(0.0, self.heap[0][0] - time.monotonic())
            for key, _ in sel.select(timeout):
                if key.data == "ctl":
                    chunk = stdin.read(65536)
                    if not chunk:
                        return
                    pending += chunk
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        if not line.strip():
                            continue
                        reply = self.command(json.loads(line))
                        if reply is None:
                            print(json.dumps({"ok": True}), flush=True)
                            return
                        print(json.dumps(reply), flush=True)
                else:
                    self.drain(key.fileobj, key.data)  # type: ignore[arg-type]
            self.release(time.monotonic())


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", required=True, type=_addr)
    ap.add_argument("--upstream-bind", required=True, type=_addr)
    ap.add_argument("--upstream", required=True, type=_addr)
    ap.add_argument("--seed", type=int, default=1)
    for name in ("loss", "dup", "corrupt", "reorder", "reorder-ms", "delay-ms"):
        ap.add_argument(f"--{name}", type=float, default=None)
    a = ap.parse_args()
    imp = Impairment()
    imp.update({k: v for k, v in vars(a).items() if v is not None and k not in ("listen", "upstream", "seed")})
    Relay(a.listen, a.upstream_bind, a.upstream, imp, a.seed).run()


if __name__ == "__main__":
    main()
