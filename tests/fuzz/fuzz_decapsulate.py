"""atheris target: crypto.tunnel.Core.decapsulate on a core with an established session.

Each input is cut into up to 8 datagrams.  A datagram is raw fuzz bytes, or a valid message of
the session XOR-ed with fuzz bytes, optionally with mac1 recomputed so that the fuzzer reaches
the Noise code behind it.  Properties: decapsulate never raises, never delivers, and every
datagram counts as exactly one drop unless it is a byte-identical valid cookie reply (which is
consumed).  A flag byte can put the receiving core under load and behind.
"""

from __future__ import annotations

import atheris  # type: ignore[import-untyped]
import fuzzcommon

NAMES = ["initiation", "response", "cookie_reply", "keepalive", "transport"]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    world = fuzzcommon.make_world()
    flags = fdp.ConsumeIntInRange(0, 255)
    core = world.a if flags & 1 else world.b
    core.force_under_load = bool(flags & 2)
    core.behind = bool(flags & 4)  # the adapter's receive queue is deep: busy sources are shed
    datagrams: list[bytes] = []
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        mode = fdp.ConsumeIntInRange(0, 2)
        if mode == 0:
            datagrams.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300)))
            continue
        base = world.valid[NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)]]
        noise = fdp.ConsumeBytes(len(base) + fdp.ConsumeIntInRange(-4, 4))
        d = bytes(x ^ y for x, y in zip(base, noise.ljust(len(base), b"\0"), strict=False))
        d = d[: len(noise)] if len(noise) < len(base) else d + noise[len(base):]
        if mode == 2:
            d = world.with_mac1(core, d)
        datagrams.append(d)
    before = sum(core.drops.values())
    endpoint = ("198.18.0.9", fdp.ConsumeIntInRange(0, 65535))
    out = core.decapsulate(endpoint, datagrams, now=fuzzcommon.NOW + fdp.ConsumeIntInRange(0, 1000))
    assert sum(len(p) for _, p in out) == 0, "fuzz input delivered an inner packet"
    consumed = sum(1 for d in datagrams if d == world.valid["cookie_reply"])
    dropped = sum(core.drops.values()) - before
    assert len(datagrams) - consumed <= dropped <= len(datagrams), (dropped, len(datagrams), dict(core.drops))


if __name__ == "__main__":
    fuzzcommon.main(test_one_input)
