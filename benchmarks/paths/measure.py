"""iperf3 and ping: argument lists, runners, and pure parsers of their output.

The parsers take the decoded iperf3 JSON (``-J``) or ping's text and return frozen results; anything
malformed raises :class:`MeasureError` (a ValueError) with the reason, never KeyError/TypeError.

Receiver-side figures: for TCP the client's ``end.sum_received`` is what the server received; for UDP it
is the server's count (``packets`` expected from sequence numbers, ``lost_packets`` missing), so the
delivered packets are ``packets - lost_packets`` (also ``bytes / payload``).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vpn.testlab.netns import wait_for

from .base import Endpoints
from .lab import Lab

IPERF3_PORT = 5201
CONNECT_TIMEOUT_MS = 3000
SERVER_START_TIMEOUT = 5.0
EXTRA_TIMEOUT = 20.0  # seconds allowed beyond the test length for start-up and the final exchange


class MeasureError(ValueError):
    """iperf3 or ping failed, or printed something this module cannot read."""


@dataclass(frozen=True, slots=True)
class TcpResult:
    """One iperf3 TCP run, receiver side.

    :param bits_per_second: received payload rate.
    :param bytes: payload bytes received.
    :param seconds: the measured interval.
    :param retransmits: sender retransmissions (None when iperf3 does not report them).
    :param streams: parallel streams (``-P``).
    """

    bits_per_second: float
    bytes: int
    seconds: float
    retransmits: int | None
    streams: int

    @property
    def gbps(self) -> float:
        return self.bits_per_second / 1e9


@dataclass(frozen=True, slots=True)
class UdpResult:
    """One iperf3 UDP run with small datagrams.

    :param sent_packets: datagrams the client sent.
    :param delivered_packets: datagrams the server received (``packets - lost_packets``).
    :param lost_packets: datagrams the server found missing.
    :param seconds: the receiver's measured interval.
    :param payload: UDP payload size in bytes.
    """

    sent_packets: int
    delivered_packets: int
    lost_packets: int
    seconds: float
    payload: int

    @property
    def delivered_pps(self) -> float:
        return self.delivered_packets / self.seconds if self.seconds > 0 else 0.0

    @property
    def sent_pps(self) -> float:
        return self.sent_packets / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class PingResult:
    """Round-trip times of one ping series in milliseconds (replies only)."""

    rtts_ms: tuple[float, ...]
    sent: int

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.rtts_ms) if self.rtts_ms else None

    @property
    def loss(self) -> float:
        return 1.0 - len(self.rtts_ms) / self.sent if self.sent else 1.0


# -- pure parsers -----------------------------------------------------------------------------------------
def _section(doc: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    cur: Any = doc
    for k in keys:
        if not isinstance(cur, Mapping) or not isinstance(cur.get(k), Mapping):
            raise MeasureError(f"iperf3 JSON has no {'.'.join(keys)}")
        cur = cur[k]
    return cur  # type: ignore[no-any-return]


def _number(sec: Mapping[str, Any], key: str, where: str) -> float:
    v = sec.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise MeasureError(f"iperf3 JSON {where}.{key} is {v!r}, not a finite number")
    return float(v)


def _check_error(doc: Any) -> None:
    if not isinstance(doc, Mapping):
        raise MeasureError(f"iperf3 JSON is a {type(doc).__name__}, not an object")
    if doc.get("error"):
        raise MeasureError(f"iperf3: {doc['error']}")


def parse_iperf3_tcp(doc: Any) -> TcpResult:
    """Read a TCP run from iperf3's ``-J`` output (client side).

    :raises MeasureError: iperf3 reported an error, or fields are missing or not numbers.
    """
    _check_error(doc)
    received = _section(doc, "end", "sum_received")
    sent = doc["end"].get("sum_sent")
    retransmits = sent.get("retransmits") if isinstance(sent, Mapping) else None
    start = doc.get("start")
    test_start = start.get("test_start") if isinstance(start, Mapping) else None
    streams = test_start.get("num_streams", 1) if isinstance(test_start, Mapping) else 1
    return TcpResult(
        bits_per_second=_number(received, "bits_per_second", "end.sum_received"),
        bytes=int(_number(received, "bytes", "end.sum_received")),
        seconds=_number(received, "seconds", "end.sum_received"),
        retransmits=int(retransmits) if isinstance(retransmits, int) and not isinstance(retransmits, bool)
        else None,
        streams=streams if isinstance(streams, int) and not isinstance(streams, bool) and streams > 0 else 1,
    )


def parse_iperf3_udp(doc: Any, payload: int) -> UdpResult:
    """Read a UDP run from iperf3's ``-J`` output (client side; receiver figures in ``end.sum_received``,
    or ``end.sum`` from iperf3 versions without it).

    :param payload: the ``-l`` datagram size, kept in the result.
    :raises MeasureError: iperf3 reported an error, or fields are missing or not numbers.
    """
    _check_error(doc)
    end = _section(doc, "end")
    received = end.get("sum_received") if isinstance(end.get("sum_received"), Mapping) else end.get("sum")
    if not isinstance(received, Mapping):
        raise MeasureError("iperf3 JSON has no end.sum_received or end.sum")
    sent_section = end.get("sum_sent")
    sent: Mapping[str, Any] = sent_section if isinstance(sent_section, Mapping) else received
    packets = int(_number(received, "packets", "end.sum_received"))
    lost = int(_number(received, "lost_packets", "end.sum_received"))
    if packets < 0 or lost < 0:
        raise MeasureError(f"iperf3 reported negative packet counts ({packets}, {lost})")
    return UdpResult(
        sent_packets=int(_number(sent, "packets", "end.sum_sent")),
        delivered_packets=max(0, packets - lost),
        lost_packets=lost,
        seconds=_number(received, "seconds", "end.sum_received"),
        payload=payload,
    )


_RTT = re.compile(r"\btime[=<]([0-9]+(?:\.[0-9]+)?) ?ms\b")


def parse_ping_rtts(text: str, sent: int) -> PingResult:
    """Collect the ``time=X ms`` of every reply line in ping's output (``-n``, iputils or busybox).

    :param sent: how many echo requests were asked for (``-c``).
    """
    rtts = tuple(float(m.group(1)) for m in _RTT.finditer(text))
    return PingResult(rtts_ms=rtts[:sent] if sent > 0 else rtts, sent=max(sent, 0))


def iperf3_client_argv(addr: str, *, seconds: int, streams: int = 1, udp_payload: int | None = None,
                       port: int = IPERF3_PORT) -> list[str]:
    """``iperf3 -c`` arguments: TCP with ``streams`` streams, or UDP ``udp_payload``-byte datagrams with no
    rate limit (``-b 0``: as fast as the sender can)."""
    if seconds < 1:
        raise ValueError("iperf3 takes whole seconds >= 1")
    argv = ["iperf3", "-c", addr, "-p", str(port), "-t", str(seconds), "-J",
            "--connect-timeout", str(CONNECT_TIMEOUT_MS)]
    if streams > 1:
        argv += ["-P", str(streams)]
    if udp_payload is not None:
        argv += ["-u", "-l", str(udp_payload), "-b", "0"]
    return argv


# -- runners ----------------------------------------------------------------------------------------------
def run_iperf3(lab: Lab, ep: Endpoints, *, seconds: int, streams: int = 1, udp_payload: int | None = None,
               port: int = IPERF3_PORT) -> dict[str, Any]:
    """One iperf3 test from ``ep.client`` to a one-shot server in ``ep.server``; return the client's JSON.

    :raises MeasureError: the server did not start, the client timed out or printed no JSON.
    """
    log = lab.dir / "iperf3-server.log"
    server = lab.popen(ep.server, ["iperf3", "-s", "-1", "-B", ep.server_addr, "-p", str(port)], log=log)
    try:
        def listening() -> bool:
            if server.poll() is not None:
                return True
            out = ep.server.run(["ss", "-Hltn", f"sport = :{port}"], check=False, timeout=5.0).stdout
            return bool(out.strip())

        wait_for(listening, SERVER_START_TIMEOUT)
        if server.poll() is not None:
            raise MeasureError(f"iperf3 server exited {server.returncode} at start")
        argv = iperf3_client_argv(ep.server_addr, seconds=seconds, streams=streams, udp_payload=udp_payload,
                                  port=port)
        r = ep.client.run(argv, check=False, timeout=seconds + EXTRA_TIMEOUT)
        try:
            doc = json.loads(r.stdout)
        except json.JSONDecodeError:
            raise MeasureError(f"iperf3 exited {r.returncode} without JSON: {r.stderr.strip()[-200:]}") from None
        if not isinstance(doc, dict):
            raise MeasureError("iperf3 printed JSON that is not an object")
        return doc
    finally:
        try:
            server.wait(3.0)
        except subprocess.TimeoutExpired:
            Lab.stop(server, timeout=2.0)


def run_ping(ep: Endpoints, *, count: int, interval: float) -> PingResult:
    """``count`` pings from ``ep.client`` to ``ep.server_addr``, ``interval`` seconds apart."""
    deadline = int(count * interval + 5)
    r = ep.client.run(["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1", "-w", str(deadline),
                       ep.server_addr], check=False, timeout=deadline + 5.0)
    result = parse_ping_rtts(r.stdout, count)
    if not result.rtts_ms:
        raise MeasureError(f"ping got no replies (exit {r.returncode}): {r.stderr.strip()[-200:]}")
    return result
