"""The in-memory TUN and UDP fakes (tunnel/testing.py): no root, no sockets."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
import uvloop

from tunnel.testing import MemoryNetwork, MemoryTun, MemoryUdp, MemoryUdpPair, impairment
from tunnel.tun import TunDevice
from tunnel.udp import UdpEndpoint
from tunnel.udpaddr import AddressError

IP4 = bytes([0x45]) + bytes(19)  # enough of an IPv4 header for the fakes' version check
IP6 = bytes([0x60]) + bytes(39)


def _readable(fd: int) -> bool:
    import select

    r, _, _ = select.select([fd], [], [], 0)
    return bool(r)


LOOPS: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [
    ("asyncio", asyncio.new_event_loop),
    ("uvloop", uvloop.new_event_loop),
]


# -- MemoryTun -----------------------------------------------------------------------------------------------


def test_memory_tun_satisfies_protocol() -> None:
    with MemoryTun("mt0", 1380, vnet_hdr=True, offloads={"csum", "tso4"}) as tun:
        assert isinstance(tun, TunDevice)
        assert (tun.name, tun.mtu, tun.vnet_hdr, tun.offloads) == ("mt0", 1380, True, frozenset({"csum", "tso4"}))
    assert MemoryTun(offloads={"csum"}).offloads == frozenset()  # nothing without vnet_hdr


def test_memory_tun_inject_read_and_readiness() -> None:
    tun = MemoryTun()
    try:
        assert tun.read_batch(8) == []
        assert not _readable(tun.fileno())
        pkts = [IP4 + bytes([i]) for i in range(5)]
        tun.inject(pkts)
        assert _readable(tun.fileno())
        assert tun.read_batch(3) == pkts[:3]
        assert _readable(tun.fileno())  # still two queued
        assert tun.read_batch(10) == pkts[3:]
        assert not _readable(tun.fileno())
        assert tun.read_batch(10) == []
    finally:
        tun.close()


def test_memory_tun_write_counts_refusals_like_the_kernel() -> None:
    seen: list[list[bytes]] = []
    tun = MemoryTun(on_write=seen.append)
    try:
        assert tun.write_batch([IP4, b"", b"\x00junk", IP6]) == 2
        assert tun.written == [IP4, IP6]
        assert seen == [[IP4, IP6]]
        assert tun.write_errors["EINVAL"] == 2
        assert tun.take_written() == [IP4, IP6] and tun.written == []
    finally:
        tun.close()
    with MemoryTun(tap=True) as tap:
        assert tap.write_batch([b"\xff" * 60]) == 1  # any frame goes on a tap
    with MemoryTun(vnet_hdr=True) as vt:
        assert vt.write_batch([bytes(10), bytes(10) + IP4]) == 1  # header alone is refused


def test_memory_tun_queue_limit_and_close() -> None:
    tun = MemoryTun(queue_limit=3)
    tun.inject([IP4] * 5)
    assert tun.queued == 3 and tun.dropped_inbound == 2
    fd = tun.fileno()
    tun.close()
    tun.close()
    assert tun.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(OSError):
        tun.read_batch(1)


@pytest.mark.parametrize("loop_name,factory", LOOPS, ids=[n for n, _ in LOOPS])
def test_memory_tun_add_reader(loop_name: str, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = factory()
    tun = MemoryTun()
    got: list[bytes] = []
    done = loop.create_future()

    def on_readable() -> None:
        got.extend(tun.read_batch(64))
        if len(got) >= 6 and not done.done():
            done.set_result(None)

    try:
        loop.add_reader(tun.fileno(), on_readable)
        loop.call_soon(tun.inject, [IP4] * 3)
        loop.call_later(0.01, tun.inject, [IP6] * 3)
        loop.run_until_complete(asyncio.wait_for(done, 5))
        loop.remove_reader(tun.fileno())
        assert got == [IP4] * 3 + [IP6] * 3
    finally:
        tun.close()
        loop.close()


# -- MemoryUdp -----------------------------------------------------------------------------------------------


def test_memory_udp_pair_delivers_and_groups_by_source() -> None:
    pair = MemoryUdpPair()
    a, b = pair
    try:
        assert isinstance(a, UdpEndpoint) and isinstance(b, UdpEndpoint)
        assert (a.port, b.port) == (51820, 51820)
        a.send_batch(("198.18.0.2", 51820), [b"1", b"2"])
        c = pair.network.endpoint("198.18.0.3")
        c.send_batch(("198.18.0.2", 51820), [b"3"])
        a.send_batch(("198.18.0.2", 51820), [b"4"])
        assert b.recv_batch(100) == [
            ([b"1", b"2"], ("198.18.0.1", 51820)),
            ([b"3"], ("198.18.0.3", c.port)),
            ([b"4"], ("198.18.0.1", 51820)),
        ]
        assert b.recv_batch(100) == []
        b.send_batch(("198.18.0.1", 51820), [b"x"] * 5)
        assert a.recv_batch(2) == [([b"x", b"x"], ("198.18.0.2", 51820))]
        assert a.recv_batch(10) == [([b"x"] * 3, ("198.18.0.2", 51820))]
        c.close()
    finally:
        pair.close()


def test_memory_udp_unknown_destination_and_bad_address() -> None:
    net = MemoryNetwork()
    a = net.endpoint("198.18.0.1", 1000)
    try:
        a.send_batch(("198.18.0.9", 1), [b"lost", b"lost"])
        assert net.undeliverable == 2
        with pytest.raises(AddressError):
            a.send_batch(("198.18.0.9", 0), [b"x"])
        with pytest.raises(AddressError):
            a.send_batch("nonsense", [b"x"])  # type: ignore[arg-type]
        with pytest.raises(OSError):
            net.endpoint("198.18.0.1", 1000)
        auto1, auto2 = net.endpoint("198.18.0.1"), net.endpoint("198.18.0.1")
        assert auto1.port != auto2.port
    finally:
        a.close()


def test_memory_udp_receive_queue_limit() -> None:
    pair = MemoryUdpPair(queue_limit=4)
    try:
        pair.a.send_batch(("198.18.0.2", 51820), [b"d"] * 10)
        assert pair.b.queued == 4 and pair.b.errors["recv:ENOBUFS"] == 6
    finally:
        pair.close()


def test_impairment_hook_is_seeded_and_does_its_job() -> None:
    data = [bytes([i]) for i in range(200)]

    def run(**kw: float) -> list[bytes]:
        pair = MemoryUdpPair(impairment(seed=7, **kw))
        try:
            pair.a.send_batch(("198.18.0.2", 51820), data)
            return [d for ds, _ in pair.b.recv_batch(10_000) for d in ds]
        finally:
            pair.close()

    assert run() == data
    dropped = run(drop=0.25)
    assert 100 < len(dropped) < 200 and dropped == run(drop=0.25)
    assert set(dropped) <= set(data) and dropped == sorted(dropped)
    duped = run(duplicate=0.5)
    assert len(duped) > 240 and sorted(set(duped)) == data
    shuffled = run(reorder=1.0)
    assert shuffled != data and sorted(shuffled) == data
    with pytest.raises(ValueError):
        impairment(drop=1.5)


@pytest.mark.parametrize("loop_name,factory", LOOPS, ids=[n for n, _ in LOOPS])
def test_memory_udp_attach_detach(loop_name: str, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = factory()
    pair = MemoryUdpPair()
    got: list[bytes] = []
    done = loop.create_future()
    b: MemoryUdp = pair.b

    def on_readable() -> None:
        for dgrams, addr in b.recv_batch(64):
            assert addr == ("198.18.0.1", 51820)
            got.extend(dgrams)
        if len(got) >= 4 and not done.done():
            done.set_result(None)

    try:
        b.attach(loop, on_readable)
        loop.call_soon(pair.a.send_batch, ("198.18.0.2", 51820), [b"p", b"q"])
        loop.call_later(0.01, pair.a.send_batch, ("198.18.0.2", 51820), [b"r", b"s"])
        loop.run_until_complete(asyncio.wait_for(done, 5))
        assert got == [b"p", b"q", b"r", b"s"]
        b.detach()
        b.detach()
    finally:
        pair.close()
        loop.close()
