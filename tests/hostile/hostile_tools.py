"""Traffic and attack tools for the hostile-network tests, run inside namespaces.

``python hostile_tools.py COMMAND ...``; each command prints one JSON line with its figures and
exits.  Every loop is bounded by a count and a time limit, and every destination is given on
the command line (the tests only pass addresses inside their own namespaces).

- ``tcp-sink`` / ``tcp-source``: a TCP transfer of seeded pseudo-random bytes (or a repeated
  marker) with sha256 on both ends; the sink can sample its byte count over time.
- ``udp-send``: UDP datagrams carrying a marker.
- ``flood``: handshake-initiation flood from many source ports: valid mac1 (garbage bodies and
  real initiations from a key the server does not know), invalid mac1, and, after a cookie
  reply, valid mac2; counts every reply per group.
- ``flood-sources``: initiations with a valid mac1 from many source addresses (IPv4 and IPv6
  /64s) through one socket per family (``IP_PKTINFO``), some answering cookies with mac2.
- ``handshakers``: legitimate clients, each with its own key and source address, timing their
  handshakes (the sans-IO core with its retransmit timer).
- ``garbage``: random, truncated, extended, bit-flipped and spliced datagrams of every type,
  optionally mutated from real messages of a session the tool holds as a configured peer.
- ``tun-inject``: packets written into a tun device through an AF_PACKET socket (they reach
  pyvpn as if the kernel had routed them), by class with the verdict pyvpn must give.
- ``capture``: a bounded AF_PACKET capture of an interface (with virtio-net headers, so UDP
  GSO/GRO super-packets can be cut back into datagrams).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import random
import resource
import select
import socket
import struct
import time
from collections import Counter
from typing import Any


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, sort_keys=True), flush=True)


# -- TCP ----------------------------------------------------------------------------------------
def tcp_sink(a: argparse.Namespace) -> None:
    fam = socket.AF_INET6 if ":" in a.bind else socket.AF_INET
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.bind, a.port))
    srv.listen(1)
    srv.settimeout(a.timeout)
    if a.announce:
        print(json.dumps({"listening": True}), flush=True)
    conn, _ = srv.accept()
    conn.settimeout(a.timeout)
    h = hashlib.sha256()
    total = 0
    t0 = time.monotonic()
    deadline = t0 + a.max_seconds
    samples: list[tuple[float, int]] = [(t0, 0)]
    next_sample = t0 + a.sample
    marker = a.marker.encode() if a.marker else None
    marker_hits = 0
    tail = b""
    error = None
    while time.monotonic() < deadline:
        try:
            chunk = conn.recv(1 << 18)
        except OSError as e:
            error = str(e)
            break
        if not chunk:
            break
        h.update(chunk)
        total += len(chunk)
        if marker:
            buf = tail + chunk
            marker_hits += buf.count(marker)
            tail = buf[-(len(marker) - 1):]
        now = time.monotonic()
        if now >= next_sample:
            samples.append((now, total))
            next_sample = now + a.sample
    samples.append((time.monotonic(), total))
    conn.close()
    srv.close()
    emit({"bytes": total, "sha256": h.hexdigest(), "seconds": time.monotonic() - t0, "samples": samples,
          "marker_hits": marker_hits, "error": error})


def source_chunks(seed: int, total: int, marker: str | None) -> Any:
    if marker:
        block = (marker.encode() + b"\n") * (65536 // (len(marker) + 1))
        sent = 0
        while sent < total:
            c = block[: total - sent]
            sent += len(c)
            yield c
        return
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        n = min(1 << 20, total - sent)
        sent += n
        yield rng.randbytes(n)


def tcp_source(a: argparse.Namespace) -> None:
    host, port = _addr(a.connect)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(a.timeout)
    deadline = time.monotonic() + a.timeout
    while True:
        try:
            s.connect((host, port))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            s.close()
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(a.timeout)
    h = hashlib.sha256()
    total = 0
    t0 = time.monotonic()
    end = t0 + a.seconds if a.seconds else None
    error = None
    try:
        for chunk in source_chunks(a.seed, a.bytes, a.marker):
            if end is not None and time.monotonic() > end:
                break
            view = memoryview(chunk)
            while view:
                step = view[: 1 << 16]
                s.sendall(step)
                h.update(step)
                total += len(step)
                view = view[len(step):]
                if end is not None and time.monotonic() > end:
                    break
        s.shutdown(socket.SHUT_WR)
        s.settimeout(a.timeout)
        while s.recv(4096):
            pass
    except OSError as e:
        error = str(e)
    s.close()
    emit({"bytes": total, "sha256": h.hexdigest(), "seconds": time.monotonic() - t0, "error": error})


def udp_send(a: argparse.Namespace) -> None:
    host, port = _addr(a.to)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    payload = (a.marker.encode() + b" ") * max(1, a.size // (len(a.marker) + 1))
    sent = 0
    for _ in range(a.count):
        try:
            s.sendto(payload, (host, port))
            sent += 1
        except OSError:
            pass
        time.sleep(a.interval)
    emit({"sent": sent, "size": len(payload)})


# -- handshake flood ----------------------------------------------------------------------------
def flood(a: argparse.Namespace) -> None:
    from crypto.keys import decode_key, private_from_random, public_from_private
    from crypto.messages import INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET, tai64n
    from crypto.noise import LABEL_COOKIE, LABEL_MAC1, create_initiation
    from crypto.primitives import hash_, mac, xaead_decrypt

    target = _addr(a.target)
    server_pub = decode_key(a.server_pub)
    mac1_key = hash_(LABEL_MAC1, server_pub)
    cookie_key = hash_(LABEL_COOKIE, server_pub)
    rng = random.Random(a.seed)
    # Precomputed bodies: each has its own sender index, so a cookie reply names the message it answers.
    valid: list[bytes] = []
    mac1_of: dict[int, bytes] = {}
    stranger = private_from_random(rng.randbytes(32))
    stranger_pub = public_from_private(stranger)
    for i in range(a.bodies):
        sender = rng.getrandbits(32) | 1
        if i < a.real:  # real initiations from a static key the server does not know
            parts, _ = create_initiation(local_static_private=stranger, local_static_public=stranger_pub,
                                         remote_static=server_pub, ephemeral_private=rng.randbytes(32),
                                         payload=tai64n(time.time() + i))
            body = struct.pack("<II", 1, sender) + parts.ephemeral_public + parts.encrypted_static \
                + parts.encrypted_payload
        else:  # garbage body, valid mac1: costs the server a DH while it is not under load
            body = struct.pack("<II", 1, sender) + rng.randbytes(32 + 48 + 28)
        m1 = mac(mac1_key, body)
        mac1_of[sender] = m1
        valid.append(body + m1 + bytes(16))
    assert all(len(v) == 148 for v in valid)
    invalid = [b"\x01\0\0\0" + rng.randbytes(144) for _ in range(64)]

    def sockets(n: int) -> list[socket.socket]:
        out = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((a.bind, 0))
            s.setblocking(False)
            out.append(s)
        return out

    vsocks, isocks = sockets(a.valid_sockets), sockets(a.invalid_sockets)
    cookie_socks = set(range(min(a.cookie_sockets, len(vsocks))))
    cookies: dict[int, bytes] = {}  # socket number → cookie
    sent: Counter[str] = Counter()
    replies: Counter[str] = Counter()
    t0 = time.monotonic()
    end = t0 + a.seconds
    vi = ii = 0
    total = 0

    poller = select.epoll()
    where: dict[int, tuple[str, int, socket.socket]] = {}
    for group, socks in (("valid", vsocks), ("invalid", isocks)):
        for n, s in enumerate(socks):
            poller.register(s.fileno(), select.EPOLLIN)
            where[s.fileno()] = (group, n, s)

    def drain() -> None:
        for fd, _ in poller.poll(0):
            group, n, s = where[fd]
            for _ in range(256):
                try:
                    d = s.recv(2048)
                except BlockingIOError:
                    break
                except OSError:
                    replies[f"{group}_error"] += 1
                    break
                kind = "cookie" if len(d) == 64 and d[:4] == b"\x03\0\0\0" else f"len{len(d)}"
                replies[f"{group}_{kind}"] += 1
                if group == "valid" and kind == "cookie" and n in cookie_socks:
                    receiver = int.from_bytes(d[4:8], "little")
                    ad = mac1_of.get(receiver)
                    if ad is None:
                        replies["cookie_unknown_receiver"] += 1
                        continue
                    try:
                        cookies[n] = xaead_decrypt(cookie_key, d[8:32], d[32:64], ad)
                        replies["cookie_decrypted"] += 1
                    except ValueError:
                        replies["cookie_bad"] += 1

    while True:
        now = time.monotonic()
        if now >= end or total >= a.max_packets:
            break
        due = int((now - t0) * a.rate) - total
        for _ in range(min(due, 2000)):
            if rng.random() < a.invalid_share:
                s = isocks[ii % len(isocks)]
                msg = invalid[ii % len(invalid)]
                ii += 1
                kind = "invalid_mac1"
            else:
                n = vi % len(vsocks)
                s = vsocks[n]
                msg = valid[vi % len(valid)]
                vi += 1
                kind = "valid_mac1"
                c = cookies.get(n)
                if c is not None:
                    msg = msg[:INITIATION_MAC2_OFFSET] + mac(c, msg[:INITIATION_MAC2_OFFSET])
                    kind = "valid_mac2"
            try:
                s.sendto(msg, target)
                sent[kind] += 1
            except OSError as e:
                sent["error_" + (os.strerror(e.errno) if e.errno else "?")] += 1
            total += 1
        assert INITIATION_MAC1_OFFSET == 116
        drain()
        time.sleep(0.004)
    # late replies
    late_end = time.monotonic() + a.linger
    while time.monotonic() < late_end:
        drain()
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    emit({"cpu_seconds": usage.ru_utime + usage.ru_stime, "sent": dict(sent), "replies": dict(replies),
          "total": total, "seconds": min(elapsed, a.seconds),
          "rate": total / max(1e-9, min(elapsed, a.seconds)), "t0": t0, "t_end": min(end, t0 + elapsed),
          "source_ports": len(vsocks) + len(isocks)})


# -- multi-source flood and legitimate handshakes -------------------------------------------------
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux <linux/in.h>; Python does not export it
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)


def _pktinfo(src: str) -> tuple[int, int, bytes]:
    """The ancillary item that makes ``sendmsg`` use ``src`` (a local address) as the source."""
    if ":" in src:
        return socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, struct.pack("=16sI", socket.inet_pton(socket.AF_INET6, src), 0)
    return socket.SOL_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, socket.inet_aton(src), bytes(4))


def _local_dst(anc: list[tuple[int, int, bytes]]) -> str | None:
    for level, kind, data in anc:
        if level == socket.SOL_IP and kind == IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntoa(data[8:12])
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            return socket.inet_ntop(socket.AF_INET6, data[:16])
    return None


def flood_sources(a: argparse.Namespace) -> None:
    """Initiations with a valid mac1 from many source addresses (IPv4 addresses and IPv6 /64s that
    the test put on this namespace's interface), sent with ``sendmsg`` + IP(V6)_PKTINFO from one
    socket per family.  Bodies are a precomputed pool (random, each with its own sender index and
    mac1).  The first ``--mac2-sources`` of each family read their cookie replies (on a second port)
    and from then on add a valid mac2.  Runs until ``--seconds``, ``--max-packets`` or ``--stop-file``."""
    import ipaddress

    from crypto.keys import decode_key
    from crypto.messages import INITIATION_MAC2_OFFSET
    from crypto.noise import LABEL_COOKIE, LABEL_MAC1
    from crypto.primitives import hash_, mac, xaead_decrypt

    target4, target6 = _addr(a.target4), _addr(a.target6)
    server_pub = decode_key(a.server_pub)
    mac1_key, cookie_key = hash_(LABEL_MAC1, server_pub), hash_(LABEL_COOKIE, server_pub)
    rng = random.Random(a.seed)
    pool: list[bytes] = []
    mac1_of: dict[int, bytes] = {}
    for sender in range(a.pool):
        body = struct.pack("<II", 1, sender) + rng.randbytes(108)
        m1 = mac(mac1_key, body)
        mac1_of[sender] = m1
        pool.append(body + m1 + bytes(16))
    v4 = [str(ipaddress.IPv4Address(a.src4) + i) for i in range(a.count4)]
    v6 = [str(ipaddress.IPv6Address(int(ipaddress.IPv6Address(a.src6)) + (i << 64))) for i in range(a.count6)]

    def sock(family: int, port: int) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            s.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        s.setblocking(False)
        return s

    plain = {socket.AF_INET: sock(socket.AF_INET, a.port), socket.AF_INET6: sock(socket.AF_INET6, a.port)}
    with_cookie = {socket.AF_INET: sock(socket.AF_INET, a.port + 1), socket.AF_INET6: sock(socket.AF_INET6, a.port + 1)}
    sources: list[tuple[socket.socket, list[tuple[int, int, bytes]], tuple[str, int], str]] = []
    for i in range(max(len(v4), len(v6))):  # interleaved, so every window of packets has both families
        for fam, lst, target in ((socket.AF_INET, v4, target4), (socket.AF_INET6, v6, target6)):
            if i < len(lst):
                s = with_cookie[fam] if i < a.mac2_sources else plain[fam]
                sources.append((s, [_pktinfo(lst[i])], target, lst[i]))
    cookies: dict[str, bytes] = {}
    sent: Counter[str] = Counter()
    replies: Counter[str] = Counter()

    def drain() -> None:
        for s in with_cookie.values():
            for _ in range(512):
                try:
                    d, anc, _, _ = s.recvmsg(2048, 256)
                except BlockingIOError:
                    break
                dst = _local_dst(anc)
                if len(d) != 64 or d[:4] != b"\x03\0\0\0" or dst is None:
                    replies["other"] += 1
                    continue
                ad = mac1_of.get(int.from_bytes(d[4:8], "little"))
                try:
                    assert ad is not None
                    cookies[dst] = xaead_decrypt(cookie_key, d[8:32], d[32:64], ad)
                    replies["cookie_decrypted"] += 1
                except (AssertionError, ValueError):
                    replies["cookie_bad"] += 1

    nsrc, npool = len(sources), len(pool)
    t0 = time.monotonic()
    end = t0 + a.seconds
    total = 0
    next_check = t0
    while True:
        now = time.monotonic()
        if now >= end or total >= a.max_packets:
            break
        if now >= next_check:
            next_check = now + 0.1
            if a.stop_file and os.path.exists(a.stop_file):
                break
            drain()
        due = min(int((now - t0) * a.rate) - total, 2000)
        if due <= 0:
            time.sleep(0.001)
            continue
        for _ in range(due):
            s, anc, target, src = sources[total % nsrc]
            msg = pool[total % npool]
            c = cookies.get(src)
            kind = "valid_mac1"
            if c is not None:
                msg = msg[:INITIATION_MAC2_OFFSET] + mac(c, msg[:INITIATION_MAC2_OFFSET])
                kind = "valid_mac2"
            try:
                s.sendmsg([msg], anc, 0, target)
                sent[kind] += 1
            except OSError as e:
                sent["error_" + errno.errorcode.get(e.errno or 0, str(e.errno))] += 1
            total += 1
    elapsed = time.monotonic() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    ok = sent["valid_mac1"] + sent["valid_mac2"]
    emit({"sent": dict(sent), "replies": dict(replies), "total": total, "seconds": elapsed,
          "rate": ok / max(1e-9, elapsed), "t0": t0, "t_end": t0 + elapsed, "sources4": len(v4), "sources6": len(v6),
          "mac2_sources": len(cookies), "cpu_seconds": usage.ru_utime + usage.ru_stime})


def handshakers(a: argparse.Namespace) -> None:
    """Legitimate clients, each with its own key (``--keys-file``, one base64 private key a line)
    and its own source address, run the real protocol (the sans-IO core with its timers: cookie
    reply, retry with mac2 after REKEY_TIMEOUT) against the server.  Client ``k`` starts at
    ``k × --stagger`` s and gives up after ``--timeout`` s; each reports how long it took."""
    from crypto.keys import decode_key
    from crypto.tunnel import Core

    server_pub = decode_key(a.server_pub)
    with open(a.keys_file) as f:
        keys = [decode_key(line.strip()) for line in f if line.strip()]
    srcs = a.sources.split(",")
    assert len(keys) == len(srcs), (len(keys), len(srcs))
    t0 = time.monotonic()
    clients: list[dict[str, Any]] = []
    for k, (priv, src) in enumerate(zip(keys, srcs, strict=True)):
        fam = socket.AF_INET6 if ":" in src else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setblocking(False)
        core = Core(priv, rng=os.urandom)
        core.wall_offset = time.time() - time.monotonic()
        target = _addr(a.target6 if fam == socket.AF_INET6 else a.target4)
        tunnel = core.add_peer(server_pub, endpoint=target)
        clients.append({"src": src, "sock": s, "core": core, "tunnel": tunnel, "start": t0 + k * a.stagger,
                        "state": "waiting", "seconds": None, "initiations": 0, "with_mac2": 0, "cookies": 0,
                        "responses": 0})

    def flush(c: dict[str, Any]) -> None:
        for ep, datagrams in c["core"].take_outbox():
            for d in datagrams:
                if d[0] == 1:
                    c["initiations"] += 1
                    c["with_mac2"] += d[-16:] != bytes(16)
                with contextlib.suppress(OSError):
                    c["sock"].sendto(d, ep)

    deadline = t0 + len(clients) * a.stagger + a.timeout + 1.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        active = []
        for c in clients:
            if c["state"] == "waiting" and now >= c["start"]:
                c["state"] = "running"
                c["tunnel"].initiate(now=now)
                flush(c)
            if c["state"] == "running":
                if now - c["start"] > a.timeout:
                    c["state"] = "gave_up"
                    continue
                active.append(c)
        if not active and all(c["state"] != "waiting" for c in clients):
            break
        timers = [t for c in active if (t := c["core"].next_timer()) is not None]
        wait = max(0.0, min([0.05, *(t - now for t in timers)]))
        r: list[socket.socket] = []
        if active:
            r, _, _ = select.select([c["sock"] for c in active], [], [], wait)
        else:
            time.sleep(wait)
        now = time.monotonic()
        for c in active:
            if c["sock"] in r:
                for _ in range(64):
                    try:
                        d, addr = c["sock"].recvfrom(2048)
                    except BlockingIOError:
                        break
                    c["cookies"] += d[:1] == b"\x03"
                    c["responses"] += d[:1] == b"\x02"
                    c["core"].decapsulate((addr[0], addr[1]), [d], now=now)
                    flush(c)
            t = c["core"].next_timer()
            if t is not None and t <= now:
                c["core"].handle_timer(now=now)
                flush(c)
            if c["tunnel"].current is not None:
                c["state"] = "done"
                c["seconds"] = round(now - c["start"], 3)
                c["done_at"] = now
    results = [{k: v for k, v in c.items() if k not in ("sock", "core", "tunnel")} for c in clients]
    for c in clients:
        c["sock"].close()
    emit({"clients": results, "done": sum(c["state"] == "done" for c in clients), "count": len(clients),
          "t0": t0, "t_end": time.monotonic()})


# -- garbage ------------------------------------------------------------------------------------
class Insider:
    """A real peer session with the server, held with the sans-IO core (for realistic samples)."""

    def __init__(self, private: bytes, server_pub: bytes, target: tuple[str, int], sock: socket.socket) -> None:
        from crypto.tunnel import Core

        self.core = Core(private, rng=os.urandom)
        self.core.wall_offset = time.time() - time.monotonic()
        self.tunnel = self.core.add_peer(server_pub, endpoint=target)
        self.sock = sock
        self.sent: list[bytes] = []
        self.received: list[bytes] = []

    def flush(self) -> None:
        for ep, datagrams in self.core.take_outbox():
            for d in datagrams:
                self.sock.sendto(d, ep)
                self.sent.append(d)

    def handshake(self, timeout: float = 10.0) -> None:
        self.tunnel.initiate(now=time.monotonic())
        self.flush()
        end = time.monotonic() + timeout
        while self.tunnel.current is None:
            if time.monotonic() > end:
                raise SystemExit("insider handshake timed out")
            r, _, _ = select.select([self.sock], [], [], 0.5)
            if not r:
                continue
            d, addr = self.sock.recvfrom(2048)
            self.received.append(d)
            self.core.decapsulate(addr, [d], now=time.monotonic())
            self.flush()  # the confirming keepalive

    def transport_samples(self, n: int) -> list[bytes]:
        """Valid, never-sent transport messages (sending one unchanged would deliver it!)."""
        pkts = [bytes([0x45, 0, 0, 28]) + bytes(16) + bytes(8) for _ in range(n // 2)]
        pkts += [bytes(20 + 8 + 64 * i) for i in range(n - len(pkts))]
        self.tunnel.encapsulate(pkts, now=time.monotonic())
        out = [d for _, ds in self.core.take_outbox() for d in ds]
        return out


def garbage(a: argparse.Namespace) -> None:
    target = _addr(a.target)
    rng = random.Random(a.seed)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.bind, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    # replayable = already seen by the server (unchanged copies are replays); fresh = never sent
    replayable: list[bytes] = []
    fresh: list[bytes] = []
    insider = None
    if a.peer_priv:
        from crypto.keys import decode_key

        insider = Insider(decode_key(a.peer_priv), decode_key(a.server_pub), target, s)
        insider.handshake()
        replayable += insider.sent  # the initiation the server consumed, the confirming keepalive
        fresh += insider.transport_samples(32)
        resp = insider.received[0]
        server_index = resp[4:8]
        # a response naming the server's own session index; a cookie reply naming it (bad nonce/cookie)
        fresh.append(b"\x02\0\0\0" + rng.randbytes(4) + server_index + rng.randbytes(80))
        fresh.append(b"\x03\0\0\0" + server_index + rng.randbytes(56))
        replayable.append(resp)
    for t, size in ((1, 148), (2, 92), (3, 64), (4, 32), (4, 48), (4, 1452)):
        fresh.append(struct.pack("<I", t) + rng.randbytes(size - 4))
    samples = replayable + fresh
    s.setblocking(False)

    def mutate() -> tuple[str, bytes]:
        op = rng.randrange(8)
        if op == 0:  # pure random bytes, random length
            return "random", rng.randbytes(rng.randrange(0, 1500))
        if op == 1:  # a typed header, random body of a random (often exact) length
            t = rng.choice([0, 1, 2, 3, 4, 5, 255])
            n = rng.choice([rng.randrange(0, 200), 148, 92, 64, 32, 48, rng.randrange(32, 1500)])
            hdr = struct.pack("<I", t) if rng.random() < 0.8 else bytes([t]) + rng.randbytes(3)
            return "typed", (hdr + rng.randbytes(max(0, n - 4)))[:n]
        base = rng.choice(samples)
        if op in (2, 3):  # truncated
            return "truncated", base[: rng.randrange(0, len(base))]
        if op == 4:  # extended
            return "extended", base + rng.randbytes(rng.randrange(1, 65))
        if op in (5, 6):  # bit flips (at least one, so never an unchanged fresh message)
            b = bytearray(base)
            for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
                bit = rng.randrange(len(b) * 8)
                b[bit >> 3] ^= 1 << (bit & 7)
            if bytes(b) == base:
                b[-1] ^= 1
            return "flipped", bytes(b)
        # op 7: an unchanged replay of something the server has already seen, or a splice
        if replayable and rng.random() < 0.5:
            return "replayed", rng.choice(replayable)
        other = rng.choice(samples)
        cut = rng.randrange(1, max(2, min(len(base), len(other))))
        spliced = base[:cut] + other[cut:]
        if spliced in fresh:
            spliced += b"\0"
        return "spliced", spliced

    sent: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    t0 = time.monotonic()
    end = t0 + a.max_seconds
    total = 0
    while total < a.count and time.monotonic() < end:
        due = min(a.count, int((time.monotonic() - t0) * a.rate) + 64) - total
        for _ in range(max(0, due)):
            k, d = mutate()
            try:
                s.sendto(d, target)
                sent[k] += 1
                total += 1
            except BlockingIOError:
                errors["EAGAIN"] += 1
                break
            except OSError as e:
                errors[os.strerror(e.errno) if e.errno else "?"] += 1
                total += 1
        # swallow answers (cookie replies) so our buffer never fills
        for _ in range(256):
            try:
                s.recv(2048)
                sent["_replies"] += 1
            except OSError:
                break
        time.sleep(0.001)
    replies = sent.pop("_replies", 0)
    emit({"sent": dict(sent), "total": sum(sent.values()), "errors": dict(errors), "replies": replies,
          "seconds": time.monotonic() - t0, "insider": insider is not None,
          "insider_datagrams": len(insider.sent) if insider else 0})


# -- tun injection ------------------------------------------------------------------------------
def ipv4(src: str, dst: str, payload: bytes, proto: int = 1, total: int | None = None) -> bytes:
    from vpn.testlab.packets import ipv4 as build

    return build(src, dst, proto, payload, ident=0x1234, df=False, total=total)


def ipv6(src: str, dst: str, payload: bytes, nh: int = 59) -> bytes:
    from vpn.testlab.packets import ipv6 as build

    return build(src, dst, nh, payload)


def icmp_echo(ident: int, seq: int, data: bytes) -> bytes:
    from vpn.testlab.packets import icmp_echo as build

    return build(ident, seq, data)


def tun_packet(cls: str, rng: random.Random, a: argparse.Namespace, i: int) -> bytes:
    if cls == "short":  # → tun_short_packet
        return rng.randbytes(rng.randrange(1, 20))
    if cls == "not_ip":  # → tun_not_ip
        b = bytearray(rng.randbytes(rng.randrange(20, 200)))
        b[0] = (rng.choice([0, 1, 2, 3, 5, 7, 8, 15]) << 4) | (b[0] & 15)
        return bytes(b)
    if cls == "short6":  # a v6 nibble but shorter than an IPv6 header → tun_not_ip
        return bytes([0x60]) + rng.randbytes(rng.randrange(19, 39))
    if cls == "no_route":  # → no_route
        return ipv4(a.src, a.unrouted, rng.randbytes(rng.randrange(0, 200)), proto=rng.randrange(256))
    if cls == "bad_length":  # reaches the server; total length beyond the packet → invalid_inner_packet
        # Beyond the padded length too: WireGuard pads to 16 bytes, and a length that ends inside the
        # padding is indistinguishable from a real packet that ends in zero bytes.
        body = rng.randbytes(rng.randrange(0, 200))
        padded = (20 + len(body) + 15) // 16 * 16
        return ipv4(a.src, a.dst, body, proto=rng.randrange(256), total=padded + rng.randrange(1, 500))
    if cls == "spoofed":  # a correct ICMP echo from a source the peer does not own → spoofed_source
        return ipv4(a.spoof_src, a.dst, icmp_echo(0x4242, i & 0xFFFF, rng.randbytes(rng.randrange(0, 64))))
    if cls == "spoofed6":
        return ipv6(a.spoof_src6, a.dst6, rng.randbytes(rng.randrange(0, 64)))
    if cls == "random_ok":  # a well-formed IPv4 header with random protocol and payload → delivered
        return ipv4(a.src, a.dst, rng.randbytes(rng.randrange(0, 300)), proto=rng.randrange(256))
    if cls == "random_ok6":
        return ipv6(a.src6, a.dst6, rng.randbytes(rng.randrange(0, 300)), nh=rng.randrange(256))
    raise SystemExit(f"unknown class {cls}")


def tun_inject(a: argparse.Namespace) -> None:
    rng = random.Random(a.seed)
    classes = a.classes.split(",")
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    sent: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for i in range(a.count):
        cls = classes[i % len(classes)]
        pkt = tun_packet(cls, rng, a, i)
        proto = 0x86DD if cls.endswith("6") else 0x0800
        try:
            s.sendto(pkt, (a.ifname, proto))
            sent[cls] += 1
        except OSError as e:
            errors[f"{cls}:{os.strerror(e.errno) if e.errno else '?'}"] += 1
        if i % 32 == 31:
            time.sleep(a.pause)
    emit({"sent": dict(sent), "errors": dict(errors)})


# -- L2: VXLAN through the tunnel, frames into a tap ----------------------------------------------
def _mac(rng: random.Random, group: bool = False) -> bytes:
    first = rng.randrange(256) & 0xFC | 0x02  # locally administered unicast
    return bytes([first | (1 if group else 0)]) + rng.randbytes(5)


def _frame(rng: random.Random, cls: str, macs: list[bytes], dst: bytes | None = None, vlan: int | None = None) -> bytes:
    if cls == "runt":
        return rng.randbytes(rng.randrange(1, 14))
    src = _mac(rng, group=True) if cls == "group_src" else rng.choice(macs)
    if dst is None:
        dst = b"\xff" * 6 if rng.random() < 0.5 else _mac(rng)
    from vpn.testlab.packets import eth  # EtherType 0x88B5 below: local experimental

    return eth(rng.randbytes(rng.randrange(46, 200)), dst=dst, src=src, ethertype=0x88B5, vlan=vlan)


def _macs(rng: random.Random, a: argparse.Namespace) -> list[bytes]:
    """``--src-mac`` (one fixed source MAC) or ``--macs`` random ones."""
    if getattr(a, "src_mac", None):
        return [bytes.fromhex(a.src_mac.replace(":", ""))]
    return [_mac(rng) for _ in range(a.macs)]


def vxlan_inject(a: argparse.Namespace) -> None:
    """VXLAN datagrams to a VTEP through the tunnel (a peer's own packets, so they pass the ACL)."""
    rng = random.Random(a.seed)
    host, port = _addr(a.to)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    macs = _macs(rng, a)
    dst = bytes.fromhex(a.dst_mac.replace(":", "")) if a.dst_mac else None
    classes = a.classes.split(",")
    sent: Counter[str] = Counter()
    for i in range(a.count):
        cls = classes[i % len(classes)]
        if cls == "short":
            payload = rng.randbytes(rng.randrange(0, 8))
        else:
            vni = {"unknown_vni": a.unknown_vni, "not_member": a.other_vni}.get(cls, a.vni)
            flags = 0x00 if cls == "bad_flags" else 0x08
            hdr = struct.pack("!B3xI", flags, vni << 8)
            payload = hdr + _frame(rng, "valid" if cls in ("unknown_vni", "not_member", "bad_flags") else cls, macs,
                                   dst, a.vlan)
        s.sendto(payload, (host, port))
        sent[cls] += 1
        if a.interval:
            time.sleep(a.interval)
        elif i % 32 == 31:
            time.sleep(a.pause)
    emit({"sent": dict(sent)})


def vxlan_insider(a: argparse.Namespace) -> None:
    """VXLAN frames from a second member: a real session as the peer whose private key is in
    ``PYVPN_INSIDER_KEY`` (base64), held with the sans-IO core, frames encapsulated by hand."""
    from crypto.keys import decode_key
    from tunnel.encap.vxlan import encap_ip

    rng = random.Random(a.seed)
    target = _addr(a.target)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.bind, 0))
    me = Insider(decode_key(os.environ["PYVPN_INSIDER_KEY"]), decode_key(a.server_pub), target, s)
    me.handshake()
    host, port = _addr(a.to)
    src_ip, dst_ip = socket.inet_aton(a.src_ip), socket.inet_aton(host)
    macs = _macs(rng, a)
    dst = bytes.fromhex(a.dst_mac.replace(":", "")) if a.dst_mac else None
    sent = 0
    for _ in range(a.count):
        frame = _frame(rng, "valid", macs, dst)
        me.tunnel.encapsulate([encap_ip(frame, vni=a.vni, src_ip=src_ip, dst_ip=dst_ip, dst_port=port)],
                              now=time.monotonic())
        me.flush()
        sent += 1
        time.sleep(a.interval)
    emit({"sent": sent})


def tap_inject(a: argparse.Namespace) -> None:
    """Ethernet frames written into a tap through AF_PACKET (pyvpn reads them as local traffic)."""
    rng = random.Random(a.seed)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((a.ifname, 0))
    macs = _macs(rng, a)
    classes = a.classes.split(",")
    sent: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for i in range(a.count):
        cls = classes[i % len(classes)]
        try:
            s.send(_frame(rng, cls, macs))
            sent[cls] += 1
        except OSError as e:
            errors[f"{cls}:{os.strerror(e.errno) if e.errno else '?'}"] += 1
        if i % 32 == 31:
            time.sleep(a.pause)
    emit({"sent": dict(sent), "errors": dict(errors)})


# -- capture ------------------------------------------------------------------------------------
PACKET_VNET_HDR = 15
SOL_PACKET = 263


def capture(a: argparse.Namespace) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.bind((a.ifname, 0))
    s.settimeout(0.2)
    print(json.dumps({"capturing": True}), flush=True)
    t0 = time.monotonic()
    count = 0
    nbytes = 0
    with open(a.out, "wb") as f:
        while time.monotonic() - t0 < a.seconds and count < a.max_packets and nbytes < a.max_bytes:
            if a.stop_file and os.path.exists(a.stop_file):
                break
            try:
                frame, addr = s.recvfrom(1 << 17)
            except TimeoutError:
                continue
            # record: u32 length, u8 pkttype (0 host, 4 outgoing...), frame (virtio_net_hdr + ethernet)
            f.write(struct.pack("<IB", len(frame), addr[2]) + frame)
            count += 1
            nbytes += len(frame)
    emit({"frames": count, "bytes": nbytes, "seconds": time.monotonic() - t0})


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("tcp-sink")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--sample", type=float, default=0.25)
    p.add_argument("--marker", default=None)
    p.add_argument("--announce", action="store_true")
    p = sub.add_parser("tcp-source")
    p.add_argument("--connect", required=True)
    p.add_argument("--bytes", type=int, default=1 << 20)
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: send --bytes)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--marker", default=None)
    p.add_argument("--timeout", type=float, default=30.0)
    p = sub.add_parser("udp-send")
    p.add_argument("--to", required=True)
    p.add_argument("--marker", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--interval", type=float, default=0.01)
    p = sub.add_parser("flood")
    p.add_argument("--target", required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--server-pub", required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=12000.0)
    p.add_argument("--max-packets", type=int, default=2_000_000)
    p.add_argument("--bodies", type=int, default=512)
    p.add_argument("--real", type=int, default=32)
    p.add_argument("--valid-sockets", type=int, default=48)
    p.add_argument("--invalid-sockets", type=int, default=16)
    p.add_argument("--cookie-sockets", type=int, default=16)
    p.add_argument("--invalid-share", type=float, default=0.25)
    p.add_argument("--linger", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=3)
    p = sub.add_parser("flood-sources")
    p.add_argument("--target4", required=True)
    p.add_argument("--target6", required=True)
    p.add_argument("--server-pub", required=True)
    p.add_argument("--src4", required=True, help="first IPv4 source; the next --count4 addresses follow")
    p.add_argument("--count4", type=int, default=1000)
    p.add_argument("--src6", required=True, help="first IPv6 source; each next one is in the next /64")
    p.add_argument("--count6", type=int, default=1000)
    p.add_argument("--port", type=int, default=30000, help="source port (mac2 sources: port + 1)")
    p.add_argument("--mac2-sources", type=int, default=100, help="per family: these read cookies, then add mac2")
    p.add_argument("--rate", type=float, default=12000.0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--max-packets", type=int, default=1_000_000)
    p.add_argument("--pool", type=int, default=4096)
    p.add_argument("--stop-file", default=None)
    p.add_argument("--seed", type=int, default=8)
    p = sub.add_parser("handshakers")
    p.add_argument("--target4", required=True)
    p.add_argument("--target6", required=True)
    p.add_argument("--server-pub", required=True)
    p.add_argument("--keys-file", required=True)
    p.add_argument("--sources", required=True, help="comma-separated local source addresses, one per key")
    p.add_argument("--stagger", type=float, default=0.3)
    p.add_argument("--timeout", type=float, default=20.0)
    p = sub.add_parser("garbage")
    p.add_argument("--target", required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=50_000.0)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--server-pub", default=None)
    p.add_argument("--peer-priv", default=None)
    p = sub.add_parser("tun-inject")
    p.add_argument("--ifname", required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--classes", default="short,not_ip,short6,no_route,bad_length,spoofed,spoofed6,random_ok,"
                                        "random_ok6")
    p.add_argument("--src", default="198.19.0.2")
    p.add_argument("--dst", default="198.19.0.1")
    p.add_argument("--src6", default="fd00:19::2")
    p.add_argument("--dst6", default="fd00:19::1")
    p.add_argument("--spoof-src", default="198.19.0.77")
    p.add_argument("--spoof-src6", default="fd00:19::77")
    p.add_argument("--unrouted", default="100.64.99.1")
    p.add_argument("--pause", type=float, default=0.0005)
    p = sub.add_parser("vxlan-inject")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=700)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--vni", type=int, default=100)
    p.add_argument("--other-vni", type=int, default=200)
    p.add_argument("--unknown-vni", type=int, default=999)
    p.add_argument("--macs", type=int, default=200)
    p.add_argument("--classes", default="unknown_vni,not_member,bad_flags,short,runt,group_src,valid")
    p.add_argument("--pause", type=float, default=0.001)
    p.add_argument("--src-mac", default=None, help="one fixed source MAC (aa:bb:...) instead of --macs random ones")
    p.add_argument("--dst-mac", default=None, help="one fixed destination MAC (default: half broadcast, half random)")
    p.add_argument("--vlan", type=int, default=None, help="put this 802.1Q tag into every frame")
    p.add_argument("--interval", type=float, default=0.0, help="sleep after every frame (instead of --pause)")
    p = sub.add_parser("vxlan-insider")
    p.add_argument("--target", required=True, help="the server's underlay address:port")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--server-pub", required=True)
    p.add_argument("--src-ip", required=True, help="our tunnel address (our VTEP)")
    p.add_argument("--to", required=True, help="the server's VTEP address:port")
    p.add_argument("--vni", type=int, default=100)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--seed", type=int, default=9)
    p.add_argument("--macs", type=int, default=1)
    p.add_argument("--src-mac", default=None)
    p.add_argument("--dst-mac", default=None)
    p.add_argument("--interval", type=float, default=0.01)
    p = sub.add_parser("tap-inject")
    p.add_argument("--ifname", required=True)
    p.add_argument("--count", type=int, default=600)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--macs", type=int, default=200)
    p.add_argument("--classes", default="runt,group_src,valid")
    p.add_argument("--pause", type=float, default=0.001)
    p.add_argument("--src-mac", default=None, help="one fixed source MAC instead of --macs random ones")
    p = sub.add_parser("capture")
    p.add_argument("--ifname", required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-packets", type=int, default=200_000)
    p.add_argument("--max-bytes", type=int, default=256 << 20)
    p.add_argument("--out", required=True)
    p.add_argument("--stop-file", default=None, help="stop early once this file exists")
    a = ap.parse_args()
    {"tcp-sink": tcp_sink, "tcp-source": tcp_source, "udp-send": udp_send, "flood": flood, "garbage": garbage,
     "flood-sources": flood_sources, "handshakers": handshakers,
     "tun-inject": tun_inject, "vxlan-inject": vxlan_inject, "vxlan-insider": vxlan_insider,
     "tap-inject": tap_inject,
     "capture": capture}[a.cmd](a)


if __name__ == "__main__":
    main()

