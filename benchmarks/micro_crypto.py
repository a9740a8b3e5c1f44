"""Micro benchmark: the core's transport path against the raw AEAD call it is built on.

Measures, on one core (one Python thread), packets per second for

- ``ChaCha20Poly1305.encrypt`` / ``decrypt`` of one packet-sized plaintext (the ceiling: the
  cost of the cipher call alone, with a fixed nonce and no framing);
- ``Keypair.seal_batch`` on batches of ``--batch`` packets (framing, counter, padding, AEAD);
- ``Tunnel.encapsulate`` (seal_batch plus timers, counters and the outbox);
- ``Core.decapsulate`` on batches of sealed transport messages (index lookup, replay window,
  AEAD, padding removal, grouping by peer, timers),

and prints each rate with its ratio to the raw call.  Inner packets are IPv4 packets of
``--size`` bytes (default 1420, the usual WireGuard MTU, so there is no padding).

Each round seals ``--batches`` batches of distinct transport messages (untimed), then times each
operation over the same number of packets, the raw calls included, so that every row sees the
same cache behaviour and the same share of whatever else the machine is doing; figures are
medians over ``--rounds`` rounds.  The raw decrypt runs over the very messages the core then
decapsulates, with precomputed nonces.

Run: ``.venv/bin/python benchmarks/micro_crypto.py [--batch 64] [--size 1420] [--batches 128] [--rounds 9]``
(the Python that has pyvpn installed).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import cryptography

from crypto.keys import private_from_random
from crypto.session import Keypair
from crypto.tunnel import Core, Tunnel
from vpn.testlab.packets import ipv4_packet

A_ADDR = ("198.18.0.1", 51820)
B_ADDR = ("198.18.0.2", 51820)


def make_pair(mtu: int) -> tuple[Core, Tunnel, Core, Tunnel]:
    """Two cores after a completed handshake (seeded, with a fixed fake clock)."""
    r = random.Random(7)
    a = Core(private_from_random(r.randbytes(32)), rng=random.Random(8).randbytes, mtu=mtu)
    b = Core(private_from_random(r.randbytes(32)), rng=random.Random(9).randbytes, mtu=mtu)
    ta = a.add_peer(b.public_key, endpoint=B_ADDR)
    tb = b.add_peer(a.public_key)
    now = 1000.0
    ta.initiate(now=now)
    for src, dst, addr in ((a, b, A_ADDR), (b, a, B_ADDR), (a, b, A_ADDR)):
        for _, datagrams in src.take_outbox():
            dst.decapsulate(addr, datagrams, now=now)
    assert ta.current is not None and tb.current is not None
    return a, ta, b, tb


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64, help="packets per batch")
    ap.add_argument("--size", type=int, default=1420, help="inner packet size in bytes")
    ap.add_argument("--batches", type=int, default=128, help="batches per round (distinct packets)")
    ap.add_argument("--rounds", type=int, default=9, help="rounds; figures are medians over them")
    args = ap.parse_args()
    batch_size, size, n_batches = args.batch, args.size, args.batches
    mtu = max(1420, size)
    now = 1001.0

    a, ta, b, tb = make_pair(mtu)
    kp_b = tb.current
    assert kp_b is not None
    raw_aead = kp_b.recv_aead  # the same key object decapsulate uses
    batch = [ipv4_packet(size, i) for i in range(batch_size)]
    seal_kp = Keypair(bytes(range(32)), bytes(32), initiator=True, local_index=1, remote_index=2, created=0.0)
    nonces = [bytes(4) + i.to_bytes(8, "little") for i in range(batch_size)]
    pairs = list(zip(nonces, batch, strict=True))

    timings: dict[str, list[float]] = {k: [] for k in ("enc", "seal", "encap", "dec", "decap")}
    for _ in range(args.rounds):
        # Fresh, distinct transport messages for this round (sealing them is not timed).
        pool: list[list[bytes]] = []
        for _ in range(n_batches):
            ta.encapsulate(batch, now=now)
            pool.extend(ds for _, ds in a.take_outbox())
        raw = [[(bytes(4) + d[8:16], d[16:]) for d in ds] for ds in pool]
        n = n_batches * batch_size

        enc = raw_aead.encrypt
        t0 = time.perf_counter()
        for _ in range(n_batches):
            for nonce, p in pairs:
                enc(nonce, p, None)
        timings["enc"].append(n / (time.perf_counter() - t0))

        t0 = time.perf_counter()
        for _ in range(n_batches):
            seal_kp.seal_batch(batch, mtu)
        timings["seal"].append(n / (time.perf_counter() - t0))

        t0 = time.perf_counter()
        for _ in range(n_batches):
            ta.encapsulate(batch, now=now)
            a.outbox.clear()
        timings["encap"].append(n / (time.perf_counter() - t0))

        dec = raw_aead.decrypt
        t0 = time.perf_counter()
        for msgs in raw:
            for nonce, ct in msgs:
                dec(nonce, ct, None)
        timings["dec"].append(n / (time.perf_counter() - t0))

        delivered = 0
        t0 = time.perf_counter()
        for ds in pool:
            for _, pkts in b.decapsulate(A_ADDR, ds, now=now):
                delivered += len(pkts)
        timings["decap"].append(n / (time.perf_counter() - t0))
        assert delivered == n and not b.drops, dict(b.drops)

    r = {k: statistics.median(v) for k, v in timings.items()}
    print(f"# pyvpn micro_crypto: Python {platform.python_version()}, cryptography {cryptography.__version__}, "
          f"{platform.machine()}; {args.rounds} rounds of {n_batches} batches x {batch_size} distinct "
          f"{size}-byte IPv4 packets; one core; medians")
    print(f"{'operation':<42} {'packets/s':>11} {'us/packet':>10} {'Gbit/s':>7} {'vs raw':>7}")
    rows = [
        ("ChaCha20Poly1305.encrypt (raw ceiling)", r["enc"], r["enc"]),
        ("Keypair.seal_batch", r["seal"], r["enc"]),
        ("Tunnel.encapsulate (seal + timers, outbox)", r["encap"], r["enc"]),
        ("ChaCha20Poly1305.decrypt (raw ceiling)", r["dec"], r["dec"]),
        ("Core.decapsulate", r["decap"], r["dec"]),
    ]
    for name, rate, ceiling in rows:
        print(f"{name:<42} {rate:>11,.0f} {1e6 / rate:>10.2f} {rate * size * 8 / 1e9:>7.2f} {rate / ceiling:>7.2f}")


if __name__ == "__main__":
    main()
