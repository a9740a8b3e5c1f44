"""vpn.stall.StallDetector: a table of observations and the transitions they must give (pure, no clock); and
vpn.stall.readable, the zero-timeout poll behind ``Device.queued()``."""

from __future__ import annotations

import socket

import pytest

from vpn.stall import Recovered, StallDetector, Stalled, readable


def feed(det: StallDetector, steps: list[tuple[float, tuple[str, ...], int]]) -> list[object]:
    return [det.update(now=now, queued=queued, progress=progress) for now, queued, progress in steps]


def test_queued_without_progress_stalls_once_then_recovers_on_progress() -> None:
    det = StallDetector(after=3.0)
    out = feed(det, [
        (0.0, ("udp",), 10),  # 1 first observation: a baseline, never a stall
        (1.0, ("udp",), 10),  # 2 stuck since 0
        (2.0, ("udp", "tun"), 10),  # 3
        (3.0, ("tun", "udp"), 10),  # 4 three seconds: stalled
        (4.0, ("udp",), 10),  # 5 reported once only
        (5.0, ("udp",), 11),  # 6 moved: recovered
        (6.0, ("udp",), 12),  # 7 moving: nothing
    ])
    assert out[:3] == [None, None, None]
    assert out[3] == Stalled(queued=("tun", "udp"), seconds=3.0)
    assert out[4] is None
    assert out[5] == Recovered(seconds=2.0, moved=True)
    assert out[6] is None
    assert det.stalls == 1 and not det.stalled


def test_idle_is_never_a_stall_and_an_emptied_queue_ends_one() -> None:
    det = StallDetector(after=2.0)
    assert feed(det, [(float(t), (), 5) for t in range(10)]) == [None] * 10  # nothing queued, nothing moves
    out = feed(det, [(10.0, ("tun",), 5), (11.0, ("tun",), 5), (12.0, ("tun",), 5), (13.0, (), 5)])
    assert out == [None, None, Stalled(queued=("tun",), seconds=2.0), Recovered(seconds=1.0, moved=False)]
    # A queue that is drained between ticks (progress every time) never stalls, however long it lasts.
    assert feed(det, [(20.0 + t, ("udp",), 100 + t) for t in range(20)]) == [None] * 20
    assert det.stalls == 1


def test_status_reports_state_queue_and_seconds() -> None:
    det = StallDetector(after=1.0)
    assert det.status(0.0)["state"] == "ok"
    feed(det, [(0.0, ("udp",), 0), (0.5, ("udp",), 0), (1.5, ("udp",), 0)])
    st = det.status(2.0)
    assert st == {"state": "stalled", "seconds": 2.0, "queued": ["udp"], "stalls": 1, "after": 1.0}
    det.update(now=3.0, queued=("udp",), progress=1)
    assert det.status(3.0) == {"state": "ok", "seconds": 0.0, "queued": [], "stalls": 1, "after": 1.0}


def test_bad_threshold() -> None:
    with pytest.raises(ValueError):
        StallDetector(after=0)


def test_readable_names_the_inputs_with_data_waiting() -> None:
    class Closed:  # a closed device: no fileno any more
        def fileno(self) -> int:
            raise ValueError("I/O operation on closed file")

    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    try:
        inputs = [("udp", a), ("tun", b), ("gone", Closed())]
        assert readable(inputs) == []
        a_peer.send(b"x")
        assert readable(inputs) == ["udp"]
        b_peer.send(b"y")
        assert readable(inputs) == ["tun", "udp"]  # sorted; the closed one is skipped
    finally:
        for s in (a, a_peer, b, b_peer):
            s.close()
