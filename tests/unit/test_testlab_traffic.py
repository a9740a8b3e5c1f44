"""The lab's ping helpers (:mod:`vpn.testlab.traffic`) without a namespace: the command lines they run, how
often, and how ping's summary is read."""

from __future__ import annotations

import subprocess
from typing import Any, cast

import pytest

from vpn.testlab.netns import Netns
from vpn.testlab.traffic import TrafficError, parse_ping, ping, ping_ok, wait_ping

SUMMARY = """PING 198.19.0.1 (198.19.0.1) 56(84) bytes of data.

--- 198.19.0.1 ping statistics ---
3 packets transmitted, 2 received, 33.3333% packet loss, time 102ms
rtt min/avg/max/mdev = 0.061/0.074/0.087/0.013 ms
"""


class FakeNs:
    """Records every command and answers with the next exit code."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, kw))
        return subprocess.CompletedProcess(argv, self.codes.pop(0), SUMMARY, "")


def test_parse_ping() -> None:
    assert parse_ping(SUMMARY) == (3, 2)
    assert parse_ping("1 packets transmitted, 0 received, +1 errors, 100% packet loss, time 0ms\n") == (1, 0)
    with pytest.raises(TrafficError, match="no ping summary"):
        parse_ping("ping: connect: Network is unreachable\n")


def test_ping_command_line_and_bound() -> None:
    ns = FakeNs([1])
    assert ping(cast(Netns, ns), "fd00:19::1", count=4, interval=0.2, wait=1.5, source="fd00:19::2").returncode == 1
    argv, kw = ns.calls[0]
    assert argv == ["ping", "-n", "-q", "-c", "4", "-i", "0.2", "-W", "1.5", "-I", "fd00:19::2", "fd00:19::1"]
    assert kw["check"] is False and kw["timeout"] == pytest.approx(4 * 0.2 + 1.5 + 10)


def test_ping_ok_retries_until_a_run_gets_every_reply() -> None:
    ns = FakeNs([1, 0, 0])
    assert ping_ok(cast(Netns, ns), "198.19.0.1", count=1)
    assert len(ns.calls) == 2 and all(argv[4] == "1" for argv, _ in ns.calls)
    ns = FakeNs([1, 1])
    assert not ping_ok(cast(Netns, ns), "198.19.0.1", attempts=2)
    assert [argv[4] for argv, _ in ns.calls] == ["3", "3"]  # three echoes a run by default


def test_wait_ping_reports_the_first_reply() -> None:
    ns = FakeNs([1, 1, 0])
    took = wait_ping(cast(Netns, ns), "198.19.0.1", timeout=30.0)
    assert took is not None and len(ns.calls) == 3
    assert all(argv[4] == "1" and argv[8] == "0.5" for argv, _ in ns.calls)  # one echo, half a second each
