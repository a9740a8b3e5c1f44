"""Traffic through the lab's tunnels: ping, checked TCP transfers and iperf3, from inside test namespaces.

1. :func:`ping` runs iputils ``ping`` once from a namespace (bounded; its result whatever the exit code, for
   tests that assert a ping fails); :func:`ping_ok` retries it until one run gets every reply;
   :func:`wait_ping` pings until the first reply (how long a tunnel took to come up); :func:`parse_ping`
   reads ping's summary line.
2. :class:`Transfer` runs a small stdlib-only receiver (``ns.popen``) and sender that move random bytes over
   TCP and report the sha256 on each side (:class:`TransferResult`); :func:`transfer` is one whole run.
3. :func:`iperf3_server` / :func:`iperf3_client` run iperf3 (``-J``) and :func:`iperf3_bytes` reads what
   the receiving side got.

Every wait is bounded; nothing sends traffic outside the namespaces the caller made.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Self

from vpn.testlab.netns import STOP_TIMEOUT, LabError, Netns, wait_for

# -- implementation constants ------------------------------------------------------------------------------
CMD_TIMEOUT = 10.0  # seconds of slack on top of a command's own bound (ping, ss)
IPERF3_PORT = 5201
START_TIMEOUT = 5.0  # seconds for iperf3 -s to listen
POLL_INTERVAL = 0.02  # seconds between polls


class TrafficError(LabError):
    """ping, iperf3 or a checked transfer did not do what the lab asked (the message says which)."""


# -- ping --------------------------------------------------------------------------------------------------
def ping(ns: Netns, addr: str, *, count: int = 3, interval: float = 0.05, wait: float = 2.0,
         source: str | None = None) -> subprocess.CompletedProcess[str]:
    """One bounded ``ping`` run from ``ns`` (its result, whatever the exit code)."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait)]
    if source:
        argv += ["-I", source]
    return ns.run([*argv, addr], check=False, timeout=count * interval + wait + CMD_TIMEOUT)


def ping_ok(ns: Netns, addr: str, *, attempts: int = 3, count: int = 3, interval: float = 0.05, wait: float = 2.0,
            source: str | None = None) -> bool:
    """True once a :func:`ping` run gets every reply (at most ``attempts`` runs of ``count`` echoes)."""
    return any(ping(ns, addr, count=count, interval=interval, wait=wait, source=source).returncode == 0
               for _ in range(attempts))


def wait_ping(ns: Netns, addr: str, timeout: float) -> float | None:
    """Ping once per 0.5 s until one reply comes (bounded); seconds it took, or None."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if ping(ns, addr, count=1, wait=0.5).returncode == 0:
            return time.monotonic() - start
    return None


def parse_ping(out: str) -> tuple[int, int]:
    """``(transmitted, received)`` from the summary line of ping's output.

    :raises TrafficError: when there is no summary line (ping did not run).
    """
    for line in out.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise TrafficError(f"no ping summary in {out!r}")


# -- checked TCP transfers ---------------------------------------------------------------------------------
_RECEIVER = r"""
import hashlib, json, socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
srv = socket.socket(fam, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(1)
srv.settimeout(timeout)
print("listening", flush=True)
conn, _ = srv.accept()
conn.settimeout(timeout)
h, n = hashlib.sha256(), 0
while True:
    b = conn.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
conn.close()
print(json.dumps({"sha256": h.hexdigest(), "bytes": n}), flush=True)
"""

_SENDER = r"""
import hashlib, json, os, socket, sys, time
host, port, nbytes, duration, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), \
    float(sys.argv[5])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
deadline = time.monotonic() + timeout
while True:
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3.0)
    try:
        s.connect((host, port))
        break
    except OSError:
        s.close()
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
s.settimeout(timeout)
h, sent, chunk, start = hashlib.sha256(), 0, 1 << 16, time.monotonic()
while sent < nbytes:
    b = os.urandom(min(chunk, nbytes - sent))
    h.update(b)
    s.sendall(b)
    sent += len(b)
    if duration > 0:
        ahead = start + duration * sent / nbytes - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
s.shutdown(socket.SHUT_WR)
while s.recv(4096):
    pass
s.close()
print(json.dumps({"sha256": h.hexdigest(), "bytes": sent}), flush=True)
"""


@dataclass(frozen=True, slots=True)
class TransferResult:
    sent_bytes: int
    sent_sha256: str
    received_bytes: int
    received_sha256: str

    @property
    def ok(self) -> bool:
        return self.sent_bytes == self.received_bytes and self.sent_sha256 == self.received_sha256


class Transfer:
    """A receiver in ``dst`` on ``addr:port`` and a sender in ``src``; :meth:`start` then :meth:`wait`.

    :param duration: spread the bytes over about this many seconds (0 = as fast as possible), so that
        something can happen mid-transfer.
    """

    def __init__(self, src: Netns, dst: Netns, addr: str, nbytes: int, *, port: int = 5001,
                 duration: float = 0.0, timeout: float = 30.0) -> None:
        self.src, self.dst, self.addr, self.nbytes = src, dst, addr, nbytes
        self.port, self.duration, self.timeout = port, duration, timeout
        self.receiver: subprocess.Popen[bytes] | None = None
        self.sender: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self.receiver = self.dst.popen([sys.executable, "-c", _RECEIVER, self.addr, str(self.port),
                                        str(self.timeout)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.receiver.stdout is not None
        ready, _, _ = select.select([self.receiver.stdout], [], [], 10.0)
        line = self.receiver.stdout.readline() if ready else b""
        if line.strip() != b"listening":
            self.receiver.kill()
            err = self.receiver.stderr.read().decode(errors="replace") if self.receiver.stderr else ""
            raise TrafficError(f"receiver on {self.addr}:{self.port} did not start: {line!r} {err}")
        self.sender = self.src.popen([sys.executable, "-c", _SENDER, self.addr, str(self.port),
                                      str(self.nbytes), str(self.duration), str(self.timeout)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return self

    def progress(self) -> bool:
        """Whether the sender is still running."""
        return self.sender is not None and self.sender.poll() is None

    def wait(self, timeout: float | None = None) -> TransferResult:
        assert self.sender is not None and self.receiver is not None
        limit = timeout if timeout is not None else self.timeout + self.duration + 10
        try:
            s_out, s_err = self.sender.communicate(timeout=limit)
            r_out, r_err = self.receiver.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            for p in (self.sender, self.receiver):
                p.kill()
                p.wait(5)
            raise TrafficError(f"transfer to {self.addr}:{self.port} did not finish within {limit:.0f}s"
                               ) from None
        if self.sender.returncode != 0 or self.receiver.returncode != 0:
            raise TrafficError(f"transfer to {self.addr}:{self.port} failed: sender {self.sender.returncode} "
                               f"{s_err.decode(errors='replace')[-800:]} receiver {self.receiver.returncode} "
                               f"{r_err.decode(errors='replace')[-800:]}")
        sent, got = json.loads(s_out), json.loads(r_out)
        return TransferResult(sent["bytes"], sent["sha256"], got["bytes"], got["sha256"])


def transfer(src: Netns, dst: Netns, addr: str, nbytes: int = 4 << 20, *, port: int = 5001,
             timeout: float = 30.0) -> TransferResult:
    """Send ``nbytes`` random bytes from ``src`` to ``addr:port`` in ``dst`` over TCP; both hashes."""
    return Transfer(src, dst, addr, nbytes, port=port, timeout=timeout).start().wait()


# -- iperf3 -------------------------------------------------------------------------------------------------
def iperf3_server(ns: Netns, bind_addr: str, *, port: int = IPERF3_PORT,
                  timeout: float = START_TIMEOUT) -> subprocess.Popen[bytes]:
    """Start ``iperf3 -s`` in ``ns`` bound to ``bind_addr`` and wait (bounded) until it listens.

    The process is registered with ``ns``, so closing the namespace stops it; ``terminate()`` it earlier
    if you like.
    """
    p = ns.popen(["iperf3", "-s", "-B", bind_addr, "-p", str(port)], stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE)

    def listening() -> bool:
        out = ns.run(["ss", "-Hltn", f"sport = :{port}"], check=False, timeout=CMD_TIMEOUT).stdout
        return p.poll() is not None or bool(out.strip())

    wait_for(listening, timeout, POLL_INTERVAL)
    if p.poll() is not None:
        err = p.stderr.read().decode(errors="replace") if p.stderr is not None else ""
        raise TrafficError(f"iperf3 -s -B {bind_addr} exited {p.returncode}: {err.strip()}")
    if not listening():
        p.kill()
        p.wait(STOP_TIMEOUT)
        raise TrafficError(f"iperf3 -s -B {bind_addr} did not listen within {timeout}s")
    return p


def iperf3_client(ns: Netns, server_addr: str, seconds: int = 2, udp: bool = False, reverse: bool = False, *,
                  port: int = IPERF3_PORT, bitrate: str | None = None,
                  timeout: float | None = None) -> dict[str, Any]:
    """Run ``iperf3 -c server_addr -J`` from ``ns`` and return the parsed JSON.

    :param seconds: test length (whole seconds; iperf3 3.12 takes an integer).
    :param udp: UDP instead of TCP; ``bitrate`` defaults to ``10M`` then (iperf3's own default is 1M).
    :param reverse: the server sends (``-R``).
    :param timeout: hard limit for the process, default ``seconds + 15``.
    :raises TrafficError: when iperf3 reports an error (retried twice, briefly, if the server is busy
        finishing the previous test).
    """
    argv = ["iperf3", "-c", server_addr, "-p", str(port), "-t", str(int(seconds)), "-J",
            "--connect-timeout", "3000"]
    if udp:
        argv += ["-u", "-b", bitrate or "10M"]
    elif bitrate:
        argv += ["-b", bitrate]
    if reverse:
        argv.append("-R")
    limit = timeout if timeout is not None else seconds + 15.0
    for attempt in range(3):
        proc = ns.run(argv, check=False, timeout=limit)
        try:
            result: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise TrafficError(f"iperf3 exited {proc.returncode} without JSON: {proc.stderr.strip()}") from None
        err = result.get("error")
        if err and "busy" in str(err) and attempt < 2:
            time.sleep(0.3)
            continue
        if err or proc.returncode != 0:
            raise TrafficError(f"iperf3 -c {server_addr} failed ({proc.returncode}): {err}")
        return result
    raise AssertionError("unreachable")


def iperf3_bytes(result: dict[str, Any]) -> int:
    """Bytes the receiving side got, from an :func:`iperf3_client` result (TCP or UDP)."""
    end = result["end"]
    summary = end["sum_received"] if "sum_received" in end else end["sum"]
    return int(summary["bytes"])
