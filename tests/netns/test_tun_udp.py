"""tunnel/tun.py and tunnel/udp.py against the kernel.

TUN tests run their device work in a child process *inside* a fresh namespace: ``_in_ns`` runs one function of
:mod:`vpn.testlab.tun_scenarios` there (:mod:`vpn.testlab.child`), which returns its findings as JSON; the
assertions stay here.  The test process itself never changes namespace.

UDP tests that need only loopback (127.0.0.1, ::1) run in-process without root; the veth test uses two
namespaces.  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tunnel.udp import UdpError, UdpSocket
from tunnel.udpaddr import AddressError
from vpn.testlab import child
from vpn.testlab.differential import check_bulk_matches_loop, random_batches
from vpn.testlab.tun_scenarios import wait_readable

SCENARIOS = "vpn.testlab.tun_scenarios"


def _in_ns(ns: Any, func: str, timeout: float = 30.0, **kwargs: Any) -> Any:
    """Run the scenario ``func(**kwargs)`` in a new process inside ``ns``; return what it returned."""
    return child.call(ns, SCENARIOS, func, timeout=timeout, **kwargs)


# -- TUN tests ---------------------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("vnet_hdr", [False, True], ids=["plain", "vnet_hdr"])
def test_tun_packets_both_ways(netns_factory: Any, vnet_hdr: bool) -> None:
    ns = netns_factory("tun")
    r = _in_ns(ns, "tun_roundtrip", vnet_hdr=vnet_hdr)
    assert r["name"] == "pvt0" and r["mtu"] == 1420 and r["vnet_hdr"] is vnet_hdr
    if vnet_hdr:
        assert {"csum", "tso4", "tso6"} <= set(r["offloads"])
    else:
        assert r["offloads"] == []
    assert all(isinstance(p, str) for p in r["empty_read"])  # a list came back, no exception
    assert r["v4_out"][:2] == ["198.19.0.1", "198.19.1.7"] and r["v4_out"][3:] == [9999, "to-the-tun-v4"]
    assert r["v6_out"][:2] == ["fd00:19::1", "fd00:19::7"] and r["v6_out"][4] == "to-the-tun-v6"
    assert r["v4_in"] == ["from-the-tun-v4", "198.19.1.7", 9999]
    assert r["v6_in"] == ["from-the-tun-v6", "fd00:19::7", 9999]
    assert r["v4_written"] == 1 and r["v6_written"] == 1  # the junk packet was counted, not raised
    assert r["write_errors"] == {"EINVAL": 2}
    assert r["exists_after_close"] is False


@pytest.mark.root
def test_tun_attached_follows_a_move_to_another_namespace(netns_factory: Any) -> None:
    """``PytunDevice.attached`` asks the fd, not the name: a tun moved away (WireGuard's namespace integration)
    is still ours; deleted, it is not.  pyvpn-wg and the daemons decide "interface deleted" with it."""
    here, there = netns_factory("mv1"), netns_factory("mv2")
    r = _in_ns(here, "attached_after_move", other=there.name)
    assert r == {"before": True, "gone_here": True, "there": True, "after_move": True, "after_delete": False,
                 "after_close": False}


@pytest.mark.root
def test_tun_tso_yields_super_packets(netns_factory: Any) -> None:
    ns = netns_factory("tso")
    r = _in_ns(ns, "tso_superpacket")
    assert r["vnet_hdr"] and "tso4" in r["offloads"]
    assert r["biggest"] > 1420, r
    assert r["biggest"] <= 65535
    assert 1 in r["gso_types"]  # VIRTIO_NET_HDR_GSO_TCPV4
    assert max(r["gso_sizes"]) <= 1380


@pytest.mark.root
def test_tun_offload_fallbacks_and_cleanup(netns_factory: Any) -> None:
    ns = netns_factory("tunfb")
    r = _in_ns(ns, "fallbacks")
    assert r["no_uso"] == [True, ["csum", "tso4", "tso6"]]
    vnet, offloads, reason, mtu = r["refused"]
    assert vnet is False and offloads == [] and "refused" in reason and mtu == 1380
    assert r["refused_exists"] and r["refused_reads_plain_ip"] and r["gone_after_close"]
    assert r["mtu_error"] is not None and r["mtu_error"][0] == errno.EINVAL and "pvtap0" in r["mtu_error"][1]
    assert r["tap_left_behind"] is False
    assert r["tap"] == [9000, False]


@pytest.mark.root
def test_tun_lone_packet_read_without_eagain(netns_factory: Any) -> None:
    """One queued packet: one read() (poll(0) says nothing more, so no EAGAIN); five: all drained, then EAGAIN."""
    ns = netns_factory("tunlone")
    r = _in_ns(ns, "lone_read")
    assert r["one"] == [1, 1], r
    assert r["five"] == [5, 6], r


@pytest.mark.root
def test_tun_multi_queue_busy_closed_and_eperm(netns_factory: Any) -> None:
    ns = netns_factory("tunmq")
    r = _in_ns(ns, "multi_queue_and_errors")
    assert r["distinct_fds"] and r["exists_with_one_queue"] and not r["exists_after_all_closed"]
    assert r["busy"][0] == errno.EBUSY and "in use" in r["busy"][1]
    assert r["closed_read"] == errno.EBADF
    assert r["eperm"][0] in (errno.EPERM, errno.EACCES) and "CAP_NET_ADMIN" in r["eperm"][1] and r["eperm"][2]


def test_tun_missing_clone_device_is_a_clear_error(tmp_path: Path) -> None:
    from tunnel.tun import TunError, open_tun

    with pytest.raises(TunError) as info:
        open_tun("pvnone0", dev_path=str(tmp_path / "no-such-tun"))
    assert info.value.errno == errno.ENOENT and "does not exist" in str(info.value)
    with pytest.raises(ValueError):
        open_tun("a-name-longer-than-15")
    with pytest.raises(ValueError):
        open_tun("pvx0", mtu=10)


# -- UDP over loopback (no root) ------------------------------------------------------------------------------


def _drain(sock: UdpSocket, want: int, timeout: float = 3.0) -> list[tuple[list[bytes], tuple[str, int]]]:
    out: list[tuple[list[bytes], tuple[str, int]]] = []
    deadline = time.monotonic() + timeout
    while sum(len(d) for d, _ in out) < want and time.monotonic() < deadline:
        if wait_readable(sock.fileno(), 0.1):
            out.extend(sock.recv_batch(1024))
    return out


def _flat(batches: list[tuple[list[bytes], tuple[str, int]]]) -> list[bytes]:
    return [d for ds, _ in batches for d in ds]


@pytest.fixture
def udp_sockets() -> Any:
    made: list[UdpSocket] = []

    def make(*args: Any, **kwargs: Any) -> UdpSocket:
        s = UdpSocket.bind(*args, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


class _CountingSocket(socket.socket):
    """A UDP socket that counts recvmsg calls (socket.socket has __slots__, so a subclass, not a patch)."""

    recvmsg_calls = 0

    def recvmsg(self, *args: Any) -> Any:
        self.recvmsg_calls += 1
        return super().recvmsg(*args)


def test_recv_batch_of_a_lone_datagram_needs_no_eagain(udp_sockets: Any) -> None:
    """One queued datagram: one recvmsg (poll(0) says nothing more); three: all of them, then EAGAIN ends it."""
    raw = _CountingSocket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    rx = UdpSocket(raw, family="v4")
    tx = udp_sockets("127.0.0.1", 0, family="v4", gso=False)
    try:
        for count, calls in ((1, 1), (3, 4)):
            raw.recvmsg_calls = 0
            tx.send_batch(("127.0.0.1", rx.port), [bytes([i]) * 100 for i in range(count)])
            assert wait_readable(rx.fileno(), 3.0)
            time.sleep(0.05)
            got = rx.recv_batch(64)
            assert [len(d) for d, _ in got] == [count]
            assert raw.recvmsg_calls == calls
    finally:
        rx.close()


def test_gso_send_arrives_as_individual_datagrams_at_a_plain_receiver(udp_sockets: Any) -> None:
    tx = udp_sockets("127.0.0.1", 0, family="v4")
    rx = udp_sockets("127.0.0.1", 0, family="v4", gro=False)
    if not tx.gso:
        pytest.skip("kernel without UDP GSO")
    dgrams = [bytes([i]) * 1200 for i in range(20)] + [b"\xee" * 333]
    tx.send_batch(("127.0.0.1", rx.port), dgrams)
    assert tx.gso_sends == 1 and tx.dropped == 0
    got = _drain(rx, len(dgrams))
    assert _flat(got) == dgrams
    assert [addr for _, addr in got] == [("127.0.0.1", tx.port)]  # one entry: one source
    assert rx.gro_buffers == 0


def test_gro_receive_splits_coalesced_buffers(udp_sockets: Any) -> None:
    tx = udp_sockets("127.0.0.1", 0, family="v4")
    rx = udp_sockets("127.0.0.1", 0, family="v4", gro=True)
    if not (tx.gso and rx.gro):
        pytest.skip("kernel without UDP GSO/GRO")
    dgrams = [bytes([i]) * 1000 for i in range(30)] + [b"\x01" * 10]
    tx.send_batch(("127.0.0.1", rx.port), dgrams)
    got = _drain(rx, len(dgrams))
    assert _flat(got) == dgrams
    assert rx.gro_buffers >= 1  # loopback hands the GSO buffer over whole; we cut it


def test_send_runs_respect_gso_limits_and_order(udp_sockets: Any) -> None:
    tx = udp_sockets("127.0.0.1", 0, family="v4")
    rx = udp_sockets("127.0.0.1", 0, family="v4")
    if not tx.gso:
        pytest.skip("kernel without UDP GSO")
    # 100 x 1200: 54 fit in 65507 bytes -> 2 calls; 200 x 100: 64 segments max -> 4 calls
    tx.send_batch(("127.0.0.1", rx.port), [b"a" * 1200] * 100)
    assert tx.gso_sends == 2
    tx.send_batch(("127.0.0.1", rx.port), [b"b" * 100] * 200)
    assert tx.gso_sends == 6
    assert _flat(_drain(rx, 300)) == [b"a" * 1200] * 100 + [b"b" * 100] * 200
    # one size, 65 datagrams: one GSO send of 64, the last one alone
    tx.send_batch(("127.0.0.1", rx.port), [b"c" * 100] * 64 + [b"d" * 100])
    assert tx.gso_sends == 7
    assert _flat(_drain(rx, 65)) == [b"c" * 100] * 64 + [b"d" * 100]
    # mixed sizes: a shorter datagram ends a run, bigger ones start a new one, empty ones go alone
    mixed = [b"1" * 500, b"2" * 500, b"3" * 700, b"4" * 700, b"5" * 700, b"6" * 100, b"", b"7" * 5, b"8" * 5]
    tx.send_batch(("127.0.0.1", rx.port), mixed)
    assert _flat(_drain(rx, len(mixed))) == mixed
    assert tx.dropped == 0 and not tx.errors


class _RecordingSocket(socket.socket):
    """A UDP socket that records its sends: ``("gso", segment size, datagram sizes)`` or ``("one", size)``."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sends: list[tuple[Any, ...]] = []

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        self.sends.append(("gso", struct.unpack("=H", ancdata[0][2])[0], [len(b) for b in buffers]))
        return super().sendmsg(buffers, ancdata, flags, address)

    def sendto(self, data: Any, *args: Any) -> int:
        self.sends.append(("one", len(data)))
        return super().sendto(data, *args)


def test_send_batch_bulk_equals_the_loop(udp_sockets: Any) -> None:
    """Twin senders, send_batch's one-size branch on and off: the same GSO runs and lone sends, and the
    receiver gets the same datagrams in order (random batches of one size, and mixed)."""
    rx = udp_sockets("127.0.0.1", 0, family="v4")
    twins: dict[bool, tuple[_RecordingSocket, UdpSocket]] = {}
    for bulk in (True, False):
        raw = _RecordingSocket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind(("127.0.0.1", 0))
        twins[bulk] = raw, UdpSocket(raw, family="v4")
    if not twins[True][1].gso:
        pytest.skip("kernel without UDP GSO")

    def batch(r: random.Random) -> list[bytes]:
        n = r.randrange(0, 130)  # at most about 200 kB queued at the receiver before it drains
        if r.random() < 0.7:
            size = r.choice((1, 100, 1200, 1452, 8000))
            return [bytes([i & 0xFF]) * size for i in range(n if size < 8000 else n // 8)]
        return [bytes([i & 0xFF]) * r.choice((0, 5, 100, 1200)) for i in range(n)]

    def run(datagrams: list[bytes], bulk: bool) -> tuple[list[tuple[Any, ...]], list[bytes]]:
        raw, tx = twins[bulk]
        del raw.sends[:]
        tx.send_batch(("127.0.0.1", rx.port), datagrams, bulk=bulk)
        return list(raw.sends), _flat(_drain(rx, len(datagrams)))

    try:
        assert check_bulk_matches_loop(run, random_batches(batch, random.Random(4), 60)) == 60
        assert all(not tx.errors and tx.dropped == 0 for _, tx in twins.values())
    finally:
        for _, tx in twins.values():
            tx.close()


def test_without_gso_each_datagram_is_sent_alone(udp_sockets: Any) -> None:
    tx = udp_sockets("127.0.0.1", 0, family="v4", gso=False)
    rx = udp_sockets("127.0.0.1", 0, family="v4", gro=False)
    assert tx.gso is False
    dgrams = [b"z" * 1000] * 10
    tx.send_batch(("127.0.0.1", rx.port), dgrams)
    assert tx.gso_sends == 0
    assert _flat(_drain(rx, 10)) == dgrams


def test_recv_batch_is_bounded_and_groups_sources(udp_sockets: Any) -> None:
    rx = udp_sockets("127.0.0.1", 0, family="v4", gro=False)
    a = udp_sockets("127.0.0.1", 0, family="v4", gso=False)
    b = udp_sockets("127.0.0.1", 0, family="v4", gso=False)
    a.send_batch(("127.0.0.1", rx.port), [b"a1", b"a2"])
    b.send_batch(("127.0.0.1", rx.port), [b"b1"])
    a.send_batch(("127.0.0.1", rx.port), [b"a3"] * 20)
    assert wait_readable(rx.fileno(), 2)
    first = rx.recv_batch(3)
    assert first == [([b"a1", b"a2"], ("127.0.0.1", a.port)), ([b"b1"], ("127.0.0.1", b.port))]
    rest = _drain(rx, 20)
    assert _flat(rest) == [b"a3"] * 20
    assert rx.recv_batch(10) == []


def test_backlog_bytes_measures_the_receive_queue(udp_sockets: Any) -> None:
    rx = udp_sockets("127.0.0.1", 0, family="v4", gro=False)
    tx = udp_sockets("127.0.0.1", 0, family="v4", gso=False)
    assert rx.backlog_bytes() == 0
    tx.send_batch(("127.0.0.1", rx.port), [b"h" * 148] * 50)
    assert wait_readable(rx.fileno(), 2)
    deadline = time.monotonic() + 2
    while rx.backlog_bytes() < 50 * 148 and time.monotonic() < deadline:  # payload plus per-packet overhead
        time.sleep(0.01)
    assert rx.backlog_bytes() >= 50 * 148
    assert _flat(_drain(rx, 50)) == [b"h" * 148] * 50
    assert rx.backlog_bytes() == 0
    rx.close()
    assert rx.backlog_bytes() == 0


def test_dual_stack_normalizes_v4_peers_and_sends_back(udp_sockets: Any) -> None:
    rx = udp_sockets(None, 0, family="dual")
    v4 = udp_sockets("127.0.0.1", 0, family="v4")
    v6 = udp_sockets("::1", 0, family="v6")
    v4.send_batch(("127.0.0.1", rx.port), [b"from-v4"])
    v6.send_batch(("::1", rx.port), [b"from-v6"])
    got = _drain(rx, 2)
    assert sorted((d[0], addr) for d, addr in got) == [
        (b"from-v4", ("127.0.0.1", v4.port)),
        (b"from-v6", ("::1", v6.port)),
    ]
    assert rx.to_sockaddr(("127.0.0.1", v4.port)) == ("::ffff:127.0.0.1", v4.port, 0, 0)
    rx.send_batch(("127.0.0.1", v4.port), [b"r" * 900] * 5 + [b"s"])  # GSO through a mapped address
    assert _flat(_drain(v4, 6)) == [b"r" * 900] * 5 + [b"s"]
    rx.send_batch(("::1", v6.port), [b"six"])
    assert _flat(_drain(v6, 1)) == [b"six"]
    assert rx.local_addr[1] == rx.port and rx.dropped == 0


def test_addresses_are_checked_against_the_family(udp_sockets: Any) -> None:
    v4 = udp_sockets("127.0.0.1", 0, family="v4")
    v6 = udp_sockets("::1", 0, family="v6")
    dual = udp_sockets(None, 0, family="dual")
    for sock, addr in [
        (v4, ("::1", 9)),
        (v6, ("127.0.0.1", 9)),
        (v6, ("::ffff:127.0.0.1", 9)),
        (dual, ("localhost", 9)),
        (dual, ("127.0.0.1", 0)),
        (dual, ("127.0.0.1", 70000)),
        (dual, "127.0.0.1:9"),
        (dual, None),
    ]:
        with pytest.raises(AddressError):
            sock.send_batch(addr, [b"x"])
    with pytest.raises(AddressError):
        UdpSocket.bind("::1", 0, family="v4")
    with pytest.raises(ValueError):
        UdpSocket.bind(None, 0, family="v5")  # type: ignore[arg-type]
    with pytest.raises(UdpError) as info:
        UdpSocket.bind("127.0.0.1", v4.port, family="v4")
    assert info.value.errno == errno.EADDRINUSE


class _FailingSocket:
    """Wraps a real socket; sendto/sendmsg raise a chosen errno a given number of times."""

    def __init__(self, sock: socket.socket, *, sendmsg_errno: int | None = None,
                 sendto_errno: int | None = None, times: int = 10**9) -> None:
        self._sock, self.sendmsg_errno, self.sendto_errno, self.times = sock, sendmsg_errno, sendto_errno, times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendmsg(self, *args: Any) -> int:
        if self.sendmsg_errno is not None and self.times > 0:
            self.times -= 1
            raise OSError(self.sendmsg_errno, os.strerror(self.sendmsg_errno))
        return self._sock.sendmsg(*args)

    def sendto(self, *args: Any) -> int:
        if self.sendto_errno is not None:
            raise OSError(self.sendto_errno, os.strerror(self.sendto_errno))
        return self._sock.sendto(*args)


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOPROTOOPT, errno.EINVAL])
def test_gso_refusal_switches_gso_off_without_losing_the_run(udp_sockets: Any, code: int) -> None:
    """EIO/ENOPROTOOPT always, EINVAL before any GSO send worked: GSO goes off, the run is re-sent plainly."""
    tx = udp_sockets("127.0.0.1", 0, family="v4")
    rx = udp_sockets("127.0.0.1", 0, family="v4")
    if not tx.gso:
        pytest.skip("kernel without UDP GSO")
    tx._sock = _FailingSocket(tx._sock, sendmsg_errno=code)
    dgrams = [b"g" * 1000] * 8
    tx.send_batch(("127.0.0.1", rx.port), dgrams)
    assert tx.gso is False and tx.errors["send:gso_disabled"] == 1
    assert _flat(_drain(rx, 8)) == dgrams and tx.dropped == 0
    tx.send_batch(("127.0.0.1", rx.port), dgrams)  # now plain sendto
    assert _flat(_drain(rx, 8)) == dgrams


def test_einval_after_gso_worked_only_falls_back_for_that_run(udp_sockets: Any) -> None:
    tx = udp_sockets("127.0.0.1", 0, family="v4")
    rx = udp_sockets("127.0.0.1", 0, family="v4")
    if not tx.gso:
        pytest.skip("kernel without UDP GSO")
    dgrams = [b"k" * 1000] * 4
    tx.send_batch(("127.0.0.1", rx.port), dgrams)
    tx._sock = _FailingSocket(tx._sock, sendmsg_errno=errno.EINVAL, times=1)
    tx.send_batch(("127.0.0.1", rx.port), dgrams)
    assert tx.gso and tx.errors["send:gso_einval"] == 1
    tx.send_batch(("127.0.0.1", rx.port), dgrams)
    assert tx.gso_sends == 2
    assert _flat(_drain(rx, 12)) == dgrams * 3


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.ENOBUFS, errno.EPERM, errno.EHOSTUNREACH])
def test_send_failures_are_counted_not_raised(udp_sockets: Any, code: int) -> None:
    tx = udp_sockets("127.0.0.1", 0, family="v4")
    tx._sock = _FailingSocket(tx._sock, sendmsg_errno=code, sendto_errno=code)
    tx.send_batch(("127.0.0.1", 9), [b"q" * 100] * 5 + [b"single" * 50])
    assert tx.dropped == 6
    assert sum(n for k, n in tx.errors.items() if k == f"send:{errno.errorcode[code]}") >= 2
    tx._sock = _FailingSocket(tx._sock._sock, sendto_errno=errno.EBADF)
    with pytest.raises(OSError):  # a programming error is not swallowed
        tx.send_batch(("127.0.0.1", 9), [b"x"])


def test_icmp_errors_are_swallowed_and_counted(udp_sockets: Any) -> None:
    """Even a connected socket (which pyvpn never makes) does not break recv_batch on ICMP errors."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    raw.connect(("127.0.0.1", dead_port))
    sock = UdpSocket(raw, family="v4")
    try:
        for _ in range(3):
            raw.send(b"ping")
            deadline = time.monotonic() + 2
            before = sum(sock.errors.values())
            while sum(sock.errors.values()) == before and time.monotonic() < deadline:
                assert sock.recv_batch(8) == []
                time.sleep(0.01)
        assert sock.errors["recv:ECONNREFUSED"] == 3
    finally:
        sock.close()


@pytest.mark.parametrize("flavour", ["asyncio", "uvloop"])
def test_unconnected_socket_keeps_receiving_after_icmp_unreachable(udp_sockets: Any, flavour: str) -> None:
    loop = uvloop.new_event_loop() if flavour == "uvloop" else asyncio.new_event_loop()
    me = udp_sockets("127.0.0.1", 0, family="v4")
    peer = udp_sockets("127.0.0.1", 0, family="v4")
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    dead = ("127.0.0.1", closed.getsockname()[1])
    closed.close()
    got: list[bytes] = []
    wakeups = 0

    def on_readable() -> None:
        nonlocal wakeups
        wakeups += 1
        for dgrams, _ in me.recv_batch(64):
            got.extend(dgrams)

    async def main() -> None:
        me.attach(asyncio.get_running_loop(), on_readable)
        for i in range(3):
            me.send_batch(dead, [b"nobody-home"] * 3)  # each draws an ICMP port unreachable
            await asyncio.sleep(0.02)
            peer.send_batch(("127.0.0.1", me.port), [f"still-alive-{i}".encode()])
            deadline = time.monotonic() + 3
            while len(got) <= i and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        me.detach()

    try:
        loop.run_until_complete(main())
    finally:
        me.detach()
        loop.close()
    assert got == [b"still-alive-0", b"still-alive-1", b"still-alive-2"]
    assert me.dropped == 0 and wakeups >= 3


def test_close_is_idempotent_and_final(udp_sockets: Any) -> None:
    s = UdpSocket.bind("127.0.0.1", 0, family="v4")
    loop = asyncio.new_event_loop()
    try:
        s.attach(loop, lambda: None)
        s.close()
        s.close()
        assert s.closed
        with pytest.raises(UdpError):
            s.recv_batch(1)
        with pytest.raises(UdpError):
            s.fileno()
    finally:
        loop.close()


# -- UDP across a veth between two namespaces (root) ---------------------------------------------------------


@pytest.mark.root
def test_gso_across_veth_to_plain_and_gro_receivers(netns_factory: Any) -> None:
    from vpn.testlab.netns import veth

    a, b = netns_factory("udpa"), netns_factory("udpb")
    veth(a, "va", b, "vb")
    a.run("ip addr add 198.18.0.1/24 dev va")
    b.run("ip addr add 198.18.0.2/24 dev vb")
    sizes = [1200] * 40 + [77]
    receivers = []
    for port, gro in ((40001, False), (40002, True)):
        p = subprocess.Popen(
            b.argv(child.argv(SCENARIOS, "udp_receiver", port=port, count=len(sizes), gro=gro)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        b.procs.append(p)  # Netns.close() kills and reaps it
        receivers.append(p)
    for p in receivers:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "READY", line
    sent = _in_ns(a, "udp_sender", dst="198.18.0.2", ports=[40001, 40002], sizes=sizes)
    assert sent["dropped"] == 0 and not sent["errors"]
    results = []
    for p in receivers:
        out, _ = p.communicate(timeout=20)
        results.append(child.result(out))
    for r in results:
        lengths = [n for g in r["got"] for n in g[0]]
        firsts = [h for g in r["got"] for h in g[2]]
        assert lengths == sizes
        assert firsts == [f"{i % 256:02x}" for i in range(len(sizes))]
        assert {g[1][0] for g in r["got"]} == {"198.18.0.1"}  # dual-stack socket, normalized
    if sent["gso"]:
        assert sent["gso_sends"] == 2
        assert results[0]["gro_buffers"] == 0
        if results[1]["gro"]:
            assert results[1]["gro_buffers"] >= 1  # veth carried the GSO buffer; the receiver cut it
