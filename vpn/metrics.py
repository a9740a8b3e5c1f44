"""Prometheus metrics for one running interface (``--metrics HOST:PORT`` or ``#pyvpn Metrics``).

Nothing is counted per packet for this: the data path already keeps its counters (per peer in
the core's ``Tunnel``, drops by reason in the device).  At scrape time the collector asks the
event loop for :meth:`~vpn.device.Device.snapshot` (the loop thread owns the device; the HTTP
server runs in its own thread, as ``prometheus_client.start_http_server`` does) and turns it
into metric families.  That work on the data path's thread is bounded whatever the scrape rate:
one snapshot at a time, and at most one per :data:`SNAPSHOT_MIN_INTERVAL` (scrapes in between
get the last one).

The endpoint has no authentication and shows the interface's and the peers' public keys and
names, so ``:PORT`` means ``127.0.0.1:PORT``; any other address must be given explicitly
(``0.0.0.0:9586``, ``[::]:9586``) and is warned about at start-up.

Exported (labels ``interface``, and for peers ``public_key`` in base64 and ``name``):

- ``pyvpn_peer_receive_bytes_total``, ``pyvpn_peer_transmit_bytes_total``: data-message payload
  bytes as ``wg show`` reports them; ``pyvpn_peer_receive_packets_total``,
  ``pyvpn_peer_transmit_packets_total``;
- ``pyvpn_peer_latest_handshake_seconds``: UNIX time of the last completed handshake, 0 if none;
- ``pyvpn_peer_handshakes_total``: completed handshakes;
- ``pyvpn_peer_drops_total{reason}``: drops attributed to one peer (e.g. ``spoofed_source``);
- ``pyvpn_drops_total{reason}``: device- and protocol-level drops by reason;
- ``pyvpn_peers``, ``pyvpn_under_load`` and ``pyvpn_info{public_key, listen_port}``;
- the ``process_*`` metrics of ``prometheus_client`` (CPU, memory, open files).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("pyvpn.metrics")

SNAPSHOT_TIMEOUT = 5.0  # seconds a scrape waits for the event loop
SNAPSHOT_MIN_INTERVAL = 1.0  # seconds: scrapes closer together than this share one snapshot
DEFAULT_HOST = "127.0.0.1"  # ':PORT' binds here; anything else must be written out


class MetricsError(ValueError):
    """A bad ``HOST:PORT`` for the metrics endpoint."""


def _b64(key: Any) -> str:
    return base64.b64encode(key).decode("ascii") if isinstance(key, (bytes, bytearray)) else str(key)


def parse_listen(address: str) -> tuple[str, int]:
    """``127.0.0.1:9586``, ``[::1]:9586`` or ``:9586`` (loopback: ``127.0.0.1``) → ``(host, port)``.

    Port 0 picks a free port (see :attr:`MetricsServer.bound_port`).  Every address but loopback
    (``0.0.0.0:9586``, ``[::]:9586``, a LAN address) must be written out.
    """
    a = address.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d{1,5})", a) or re.fullmatch(r"([^:\[\]\s]*):(\d{1,5})", a)
    if not m or int(m.group(2)) > 65535:
        raise MetricsError(f"metrics address {address!r} is not HOST:PORT, [IPv6]:PORT or :PORT")
    return m.group(1) or DEFAULT_HOST, int(m.group(2))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def families(snap: dict[str, Any]) -> list[Any]:
    """The metric families for one device snapshot (pure: a dict in, families out)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    iface = str(snap.get("interface", ""))
    peer_labels = ["interface", "public_key", "name"]

    def counter(name: str, doc: str, labels: list[str] = peer_labels) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=labels)

    rx_b = counter("pyvpn_peer_receive_bytes", "Bytes received from the peer (data messages).")
    tx_b = counter("pyvpn_peer_transmit_bytes", "Bytes sent to the peer (data messages).")
    rx_p = counter("pyvpn_peer_receive_packets", "Packets received from the peer.")
    tx_p = counter("pyvpn_peer_transmit_packets", "Packets sent to the peer.")
    hs = counter("pyvpn_peer_handshakes", "Completed handshakes with the peer.")
    latest = GaugeMetricFamily("pyvpn_peer_latest_handshake_seconds",
                               "UNIX time of the latest completed handshake (0: never).", labels=peer_labels)
    pdrops = counter("pyvpn_peer_drops", "Packets dropped for one peer, by reason.", [*peer_labels, "reason"])
    for p in snap.get("peers", []):
        labels = [iface, _b64(p.get("public_key", b"")), str(p.get("name") or "")]
        rx_b.add_metric(labels, float(p.get("rx_bytes", 0)))
        tx_b.add_metric(labels, float(p.get("tx_bytes", 0)))
        rx_p.add_metric(labels, float(p.get("rx_packets", 0)))
        tx_p.add_metric(labels, float(p.get("tx_packets", 0)))
        hs.add_metric(labels, float(p.get("handshakes", 0)))
        latest.add_metric(labels, float(p.get("latest_handshake") or 0))
        for reason, n in sorted((p.get("drops") or {}).items()):
            pdrops.add_metric([*labels, str(reason)], float(n))
    drops = counter("pyvpn_drops", "Packets dropped by the device or the protocol core, by reason.",
                    ["interface", "reason"])
    for reason, n in sorted((snap.get("drops") or {}).items()):
        drops.add_metric([iface, str(reason)], float(n))
    peers = GaugeMetricFamily("pyvpn_peers", "Configured peers.", labels=["interface"])
    peers.add_metric([iface], float(len(snap.get("peers", []))))
    load = GaugeMetricFamily("pyvpn_under_load", "1 while handshakes are answered with cookies.",
                             labels=["interface"])
    load.add_metric([iface], 1.0 if snap.get("under_load") else 0.0)
    info = GaugeMetricFamily("pyvpn_info", "The interface's public key and UDP port.",
                             labels=["interface", "public_key", "listen_port"])
    pub = snap.get("public_key")
    info.add_metric([iface, _b64(pub) if pub else "", str(snap.get("listen_port", ""))], 1.0)
    return [rx_b, tx_b, rx_p, tx_p, hs, latest, pdrops, drops, peers, load, info]


class DeviceCollector:
    """A ``prometheus_client`` collector: snapshots taken on the loop's thread, at most one at a time
    and one per ``min_interval`` (scrapes in between, or waiting for one in flight, share it).

    :param snapshot: returns the device snapshot; it is called through ``loop`` when one is
        given (from the HTTP server's thread), directly otherwise.
    :param loop: the event loop that owns the device, or None.
    :param min_interval: seconds a snapshot is reused for.
    :param clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, snapshot: Callable[[], dict[str, Any]],
                 loop: asyncio.AbstractEventLoop | None = None, *,
                 min_interval: float = SNAPSHOT_MIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._snapshot = snapshot
        self._loop = loop
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()  # one snapshot in flight; other scrapes wait for it
        self._last: tuple[float, dict[str, Any]] | None = None

    def _take(self) -> dict[str, Any] | None:
        with self._lock:
            last = self._last
            if last is not None and self._clock() - last[0] < self._min_interval:
                return last[1]
            snap = self._take_now()
            if snap is not None:
                self._last = (self._clock(), snap)
            return snap

    def _take_now(self) -> dict[str, Any] | None:
        loop = self._loop
        if loop is None:
            return self._snapshot()
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(self._snapshot())
            except BaseException as e:  # noqa: BLE001  # handed to the scraping thread
                fut.set_exception(e)

        try:
            loop.call_soon_threadsafe(run)
            return fut.result(timeout=SNAPSHOT_TIMEOUT)
        except (RuntimeError, concurrent.futures.TimeoutError):  # the loop is closed or stuck
            fut.cancel()
            return None

    def collect(self) -> Iterator[Any]:
        try:
            snap = self._take()
        except Exception:  # a scrape never takes the daemon down
            log.exception("metrics: taking the device snapshot failed")
            return
        if snap is not None:
            yield from families(snap)

    def describe(self) -> list[Any]:
        return []  # no scrape at registration time


class MetricsServer:
    """An HTTP endpoint serving ``/metrics`` for ``device`` in a background thread.

    :param device: the running :class:`~vpn.device.Device` (anything with ``snapshot()``).
    :param address: ``HOST:PORT``, ``[V6]:PORT`` or ``:PORT``.
    """

    def __init__(self, device: Any, address: str) -> None:
        self.device = device
        self.host, self.port = parse_listen(address)
        self._httpd: Any = None
        self._thread: threading.Thread | None = None

    @property
    def bound_port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._httpd.server_address[1]) if self._httpd is not None else self.port

    async def start(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
            from prometheus_client.process_collector import ProcessCollector
        except ImportError:
            raise MetricsError("metrics need the prometheus-client package: pip install prometheus-client") from None

        registry = CollectorRegistry(auto_describe=False)
        registry.register(DeviceCollector(self.device.snapshot, asyncio.get_running_loop()))
        ProcessCollector(registry=registry)
        try:
            self._httpd, self._thread = start_http_server(self.port, addr=self.host, registry=registry)
        except OSError as e:
            raise MetricsError(f"cannot serve metrics on {self.host}:{self.port}: {e.strerror or e}") from None
        where = f"[{self.host}]:{self.bound_port}" if ":" in self.host else f"{self.host}:{self.bound_port}"
        name = getattr(self.device, "name", "?")
        log.info("%s: Prometheus metrics on http://%s/metrics", name, where)
        if not is_loopback(self.host):
            log.warning("%s: the metrics endpoint on %s is reachable from other hosts, without authentication; "
                        "it shows this interface's and its peers' public keys and names (use 127.0.0.1:PORT "
                        "and a reverse proxy, or a firewall, to limit who can scrape it)", name, where)

    async def close(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return

        def stop() -> None:
            httpd.shutdown()  # waits for serve_forever to return (it polls every 0.5 s)
            httpd.server_close()
            if thread is not None:
                thread.join(timeout=5)

        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(None, stop)


__all__ = ["DeviceCollector", "MetricsError", "MetricsServer", "families", "is_loopback", "parse_listen"]
