"""Side-by-side network benchmark: raw veth, kernel vxlan, wireguard-go (trixie and bookworm), fastd, tinc,
OpenVPN and pyvpn in one run.

Run as root: ``python -m benchmarks.netbench [--quick] [--pin] [--paths veth,wireguard-go-trixie,pyvpn]
[--rounds 3] [--seconds 5] [--out DIR] [--veth-gso]`` (``bash benchmarks/setup.sh`` installs the tools).  From code:
``main(argv) -> exit status`` or ``run(Options(...), progress=print) -> Report``.

Theory of operation:

1. Every path gets its own pair of network namespaces joined by a veth (underlay ``198.18.<slot>.1/.2``;
   tunnel ``198.19.<slot>.1/.2`` and ``fd00:<slot>::1/2``), with the veth offload settings of
   PROTOCOL-NOTES section 3 unless ``--veth-gso``.  All paths are set up first; a path that cannot be
   set up is reported as ``failed: <reason>`` (or ``not available``) and the others go on.
   Shared mode (the default): both ends, their daemons and iperf3 share every core.  Pinned mode
   (``--pin``): the client namespace's daemon, iperf3 client and ping run on one CPU and the server
   namespace's daemon and iperf3 server on another, like two one-core hosts (``paths.lab.pin_cpus``).
2. Rounds are interleaved: round 1 of every path, then round 2, ... so that slow drifts of a shared
   machine spread over all paths.  One round of one path is: ping RTT (``--pings`` pings,
   ``--ping-interval`` apart), iperf3 TCP with 1 stream, with 4 streams, and UDP with small datagrams at
   no rate limit (delivered packets per second counted by the receiver).
3. Around each iperf3 run the CPU seconds (utime + stime from ``/proc/<pid>/stat``) of the path's daemons
   at both ends, and their descendants, are sampled; CPU seconds per GB of received payload (TCP) and CPU
   microseconds per delivered datagram (UDP) follow.  Kernel paths have no daemons: their work is in
   softirq and is not attributed.
4. Results: medians with min-max spread per path, ratios to the raw veth and between pyvpn and each
   peer, a rich table on the terminal, a JSON file with every raw figure and the machine, and a PNG chart
   (when matplotlib is installed) in ``--out``.
5. Everything the run made (namespaces, processes, temporary files) is removed at the end, on failure and
   on Ctrl-C/SIGTERM; ``pvb-<pid>-*`` namespaces left by a killed earlier run are removed at the start.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.paths import PATH_KEYS, PATH_TITLES, BenchPath, Endpoints, make_path
from benchmarks.paths.lab import Lab, cpu_delta, pin_cpus, sweep_stale, system_busy_seconds, tree_cpu_seconds
from benchmarks.paths.measure import (
    MeasureError,
    parse_iperf3_tcp,
    parse_iperf3_udp,
    run_iperf3,
    run_ping,
)
from benchmarks.paths.wggo import sweep_stale_sockets
from vpn.testlab.netns import have, sh

_HERE = Path(__file__).resolve().parent

DEFAULT_OUT = _HERE / "results"
SCHEMA = "pyvpn-netbench/1"
BASELINE = "veth"
#: Paths compared against their peers in the ratio table (numerator), and the peers (denominator), most
#: telling first.  pyvpn L3 against the other VPNs (the modern wireguard-go first) and kernel vxlan.
#: pyvpn L2 against pyvpn L3 (what the tap + VXLAN layer costs), OpenVPN in tap mode (the L2 VPN users
#: compare), kernel vxlan (the same L2 encapsulation, in the kernel, unencrypted) and the modern
#: wireguard-go (the encrypted L3 reference); not against the L3 (tun) VPNs, which add nothing that the
#: wireguard-go row does not say.
PYVPN_PATHS = ("pyvpn", "pyvpn-l2")
PEERS: dict[str, tuple[str, ...]] = {
    "pyvpn": ("wireguard-go-trixie", "wireguard-go", "fastd", "tinc", "openvpn", "vxlan"),
    "pyvpn-l2": ("pyvpn", "openvpn-tap", "vxlan", "wireguard-go-trixie")}
MODES = ("shared", "pinned")
PAUSE = 0.3  # seconds between tests, so that queues of the previous test drain

Progress = Callable[[str], None]


# -- options -----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Options:
    """What to measure and how.

    :param paths: path keys in table order (see ``paths.PATH_KEYS``).
    :param rounds: interleaved rounds (at least 1; 3 or more for a spread).
    :param seconds: length of each iperf3 run (whole seconds).
    :param streams: parallel TCP streams of the multi-stream test.
    :param udp_payload: UDP payload bytes of the small-datagram test.
    :param pings: pings per RTT measurement; ``ping_interval`` seconds apart.
    :param veth_gso: keep the veth's default offloads instead of the realistic settings.
    :param out: directory for the JSON and PNG files.
    :param chart: write the PNG (needs matplotlib).
    :param pyvpn_command: command that runs pyvpn (``server``/``client`` follow), default
        ``<python> -m vpn.cli``.
    :param quick: shorter runs (set by ``--quick``; kept for the JSON).
    :param pin: pinned mode: each end (daemon + its iperf3 end) on its own CPU (``--pin``).
    """

    paths: tuple[str, ...] = PATH_KEYS
    rounds: int = 3
    seconds: int = 5
    streams: int = 4
    udp_payload: int = 64
    pings: int = 20
    ping_interval: float = 0.05
    veth_gso: bool = False
    out: Path = DEFAULT_OUT
    chart: bool = True
    pyvpn_command: tuple[str, ...] | None = None
    quick: bool = False
    pin: bool = False

    @property
    def mode(self) -> str:
        """``pinned`` with ``--pin``, else ``shared`` (one of :data:`MODES`)."""
        return MODES[1] if self.pin else MODES[0]

    def __post_init__(self) -> None:
        unknown = [p for p in self.paths if p not in PATH_KEYS]
        if unknown:
            raise ValueError(f"unknown path(s) {', '.join(unknown)} (known: {', '.join(PATH_KEYS)})")
        if not self.paths:
            raise ValueError("no paths to measure")
        if len(set(self.paths)) != len(self.paths):
            raise ValueError("a path is listed twice")
        if self.rounds < 1 or self.seconds < 1 or self.streams < 2 or self.pings < 1:
            raise ValueError("rounds, seconds and pings must be >= 1 and streams >= 2")
        if not 16 <= self.udp_payload <= 1400:
            raise ValueError("udp_payload must be 16..1400 bytes")
        if not 0.002 <= self.ping_interval <= 1.0:
            raise ValueError("ping_interval must be 0.002..1 s")


QUICK = {"seconds": 2, "pings": 10}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netbench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paths", default=",".join(PATH_KEYS),
                   help=f"comma-separated paths (default all: {','.join(PATH_KEYS)})")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per path (default 3)")
    p.add_argument("--seconds", type=int, default=None, help="seconds per iperf3 run (default 5; 2 with --quick)")
    p.add_argument("--streams", type=int, default=4, help="streams of the multi-stream TCP test (default 4)")
    p.add_argument("--udp-size", type=int, default=64, help="UDP payload bytes (default 64)")
    p.add_argument("--pings", type=int, default=None, help="pings per RTT measurement (default 20; 10 quick)")
    p.add_argument("--ping-interval", type=float, default=0.05, help="seconds between pings (default 0.05)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="short runs: 2 s per iperf3 run, 10 pings, 3 rounds")
    p.add_argument("--pin", action="store_true",
                   help="pinned mode: client end (daemon, iperf3 client, ping) on one CPU, server end on another")
    p.add_argument("--veth-gso", action="store_true",
                   help="keep veth default offloads (UDP GSO crosses the veth unsegmented; less realistic)")
    p.add_argument("--both-modes", action="store_true",
                   help="run shared, then pinned; also write one table (.md) and one chart of both modes")
    p.add_argument("--combine", nargs=2, type=Path, metavar=("SHARED_JSON", "PINNED_JSON"),
                   help="no run: write the table (.md) and chart of both modes from two runs' JSON files")
    p.add_argument("--no-chart", action="store_true", help="do not write the PNG chart")
    p.add_argument("--pyvpn-cmd", default=None,
                   help="command that runs pyvpn, e.g. 'pyvpn' (default: this python -m vpn.cli)")
    return p


def parse_options(argv: Sequence[str] | None = None) -> Options:
    """Options from command-line arguments (``SystemExit`` on bad ones, as argparse does)."""
    parser = build_parser()
    return options_from_args(parser, parser.parse_args(argv))


def options_from_args(parser: argparse.ArgumentParser, a: argparse.Namespace) -> Options:
    """Options from parsed arguments (``parser.error`` on bad values)."""
    paths = tuple(x.strip() for x in a.paths.split(",") if x.strip())
    quick = bool(a.quick)
    try:
        return Options(
            paths=paths,
            rounds=a.rounds if a.rounds is not None else 3,
            seconds=a.seconds if a.seconds is not None else (QUICK["seconds"] if quick else 5),
            streams=a.streams,
            udp_payload=a.udp_size,
            pings=a.pings if a.pings is not None else (QUICK["pings"] if quick else 20),
            ping_interval=a.ping_interval,
            veth_gso=a.veth_gso,
            out=a.out,
            chart=not a.no_chart,
            pyvpn_command=tuple(shlex.split(a.pyvpn_cmd)) if a.pyvpn_cmd else None,
            quick=quick,
            pin=bool(a.pin),
        )
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


# -- metrics and aggregation (pure) ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Metric:
    """One figure reported per path.

    :param key: JSON key.
    :param title: table column / chart title.
    :param unit: unit shown under the title.
    :param higher_is_better: direction, for the reader of ratios.
    :param fmt: format of a value.
    :param vpn_only: only daemons have it (CPU figures).
    """

    key: str
    title: str
    unit: str
    higher_is_better: bool
    fmt: str
    vpn_only: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("tcp1_gbps", "TCP 1", "Gbit/s", True, "{:.2f}"),
    Metric("tcp4_gbps", "TCP {streams}", "Gbit/s", True, "{:.2f}"),
    Metric("udp_kpps", "UDP {payload}B", "kpps", True, "{:.1f}"),
    Metric("rtt_ms", "RTT", "ms", False, "{:.3f}"),
    Metric("tcp1_cpu_s_per_gb", "CPU TCP 1", "s/GB", False, "{:.1f}", vpn_only=True),
    Metric("tcp4_cpu_s_per_gb", "CPU TCP {streams}", "s/GB", False, "{:.1f}", vpn_only=True),
    Metric("udp_cpu_us_per_pkt", "CPU UDP", "µs/pkt", False, "{:.1f}", vpn_only=True),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


@dataclass(frozen=True, slots=True)
class Stats:
    """Median and spread of one metric over the rounds that produced it."""

    median: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


def summarize(values: Sequence[float]) -> Stats | None:
    """Median, min, max and count of ``values``; None when empty."""
    vals = [float(v) for v in values]
    if not vals:
        return None
    return Stats(statistics.median(vals), min(vals), max(vals), len(vals))


def cpu_s_per_gb(cpu_seconds: float | None, nbytes: int) -> float | None:
    """CPU seconds per 10^9 bytes moved; None without a CPU figure or bytes."""
    if cpu_seconds is None or nbytes <= 0:
        return None
    return cpu_seconds / (nbytes / 1e9)


def cpu_us_per_packet(cpu_seconds: float | None, packets: int) -> float | None:
    """CPU microseconds per delivered packet; None without a CPU figure or packets."""
    if cpu_seconds is None or packets <= 0:
        return None
    return cpu_seconds * 1e6 / packets


def round_metrics(rnd: Mapping[str, Any]) -> dict[str, float]:
    """The metric values one round produced (tests that failed are simply absent).

    :param rnd: one entry of a path's ``rounds`` as built by :func:`measure_round` (tests ``ping``,
        ``tcp1``, ``tcp4``, ``udp``; each either has ``error`` or its figures).
    """
    out: dict[str, float] = {}

    def ok(name: str) -> Mapping[str, Any] | None:
        t = rnd.get(name)
        return t if isinstance(t, Mapping) and not t.get("error") else None

    if (t := ok("ping")) is not None and isinstance(t.get("median_ms"), (int, float)):
        out["rtt_ms"] = float(t["median_ms"])
    for name in ("tcp1", "tcp4"):
        if (t := ok(name)) is not None:
            out[f"{name}_gbps"] = float(t["bits_per_second"]) / 1e9
            per_gb = cpu_s_per_gb(t.get("vpn_cpu_s"), int(t["bytes"]))
            if per_gb is not None:
                out[f"{name}_cpu_s_per_gb"] = per_gb
    if (t := ok("udp")) is not None:
        secs = float(t["seconds"])
        if secs > 0:
            out["udp_kpps"] = int(t["delivered_packets"]) / secs / 1e3
        per_pkt = cpu_us_per_packet(t.get("vpn_cpu_s"), int(t["delivered_packets"]))
        if per_pkt is not None:
            out["udp_cpu_us_per_pkt"] = per_pkt
    return out


def summarize_rounds(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Stats]:
    """Stats of every metric over ``rounds`` (metrics no round produced are left out)."""
    per: dict[str, list[float]] = {}
    for rnd in rounds:
        for k, v in round_metrics(rnd).items():
            per.setdefault(k, []).append(v)
    return {k: s for k, vals in per.items() if (s := summarize(vals)) is not None}


def ratio(num: Stats | None, den: Stats | None) -> float | None:
    """``num.median / den.median``; None when either is missing or the denominator is 0."""
    if num is None or den is None or den.median == 0:
        return None
    return num.median / den.median


def comparisons(keys: Sequence[str]) -> list[tuple[str, str]]:
    """Ratio rows for the paths in ``keys``: each path against the raw veth, then each pyvpn path against
    its peers (:data:`PEERS`: pyvpn L3 ÷ wireguard-go, OpenVPN, kernel vxlan; pyvpn L2 ÷ pyvpn L3, kernel
    vxlan, wireguard-go)."""
    rows: list[tuple[str, str]] = []
    if BASELINE in keys:
        rows += [(k, BASELINE) for k in keys if k != BASELINE]
    for mine in PYVPN_PATHS:
        if mine not in keys:
            continue
        rows += [(mine, peer) for peer in PEERS[mine] if peer in keys]
    return rows


# -- results ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class PathRecord:
    """Everything measured for one path (filled in during the run).

    :param status: ``ok``, ``failed: <reason>`` or ``not available: <reason>``.
    :param rounds: one mapping per round (see :func:`measure_round`).
    """

    key: str
    title: str
    is_vpn: bool
    status: str = "ok"
    version: str = ""
    detail: str = ""
    offloads: str = ""
    setup_seconds: float | None = None
    daemon_cpus: list[list[int]] | None = None  # pinned mode: each daemon's allowed CPUs, read back after set-up
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> dict[str, Stats]:
        return summarize_rounds(self.rounds)

    def errors(self) -> list[str]:
        """Per-test errors over all rounds, as ``r<round> <test>: <error>``."""
        out = []
        for rnd in self.rounds:
            for name, t in rnd.items():
                if isinstance(t, Mapping) and t.get("error"):
                    out.append(f"r{rnd.get('round')} {name}: {t['error']}")
        return out


@dataclass(slots=True)
class Report:
    """One benchmark run: options, machine, and a record per path in table order."""

    options: Options
    machine: dict[str, Any]
    records: list[PathRecord]
    started: str
    finished: str = ""
    interrupted: bool = False
    pin: tuple[int, int] | None = None  # (client CPU, server CPU) in pinned mode

    def record(self, key: str) -> PathRecord | None:
        return next((r for r in self.records if r.key == key), None)

    def summaries(self) -> dict[str, dict[str, Stats]]:
        return {r.key: r.summary() for r in self.records}

    def ratio_rows(self) -> list[dict[str, Any]]:
        """One row per :func:`comparisons` pair: ``{"num", "den", "ratios": {metric: float | None}}``."""
        sums = self.summaries()
        rows = []
        for num, den in comparisons([r.key for r in self.records]):
            rows.append({"num": num, "den": den,
                         "ratios": {m.key: ratio(sums[num].get(m.key), sums[den].get(m.key)) for m in METRICS}})
        return rows


def report_json(report: Report) -> dict[str, Any]:
    """The JSON document: schema, options, machine, per path status/version/summary/raw rounds, ratios."""
    opts = report.options
    sums = report.summaries()
    return {
        "schema": SCHEMA,
        "started": report.started,
        "finished": report.finished,
        "interrupted": report.interrupted,
        "options": {
            "paths": list(opts.paths), "rounds": opts.rounds, "seconds": opts.seconds, "streams": opts.streams,
            "udp_payload": opts.udp_payload, "pings": opts.pings, "ping_interval": opts.ping_interval,
            "veth_gso": opts.veth_gso, "quick": opts.quick, "mode": opts.mode,
            "pyvpn_command": list(opts.pyvpn_command) if opts.pyvpn_command else None,
        },
        "mode": opts.mode,
        "pin_cpus": list(report.pin) if report.pin else None,
        "machine": report.machine,
        "metrics": {m.key: {"title": metric_title(m, opts), "unit": m.unit, "higher_is_better": m.higher_is_better}
                    for m in METRICS},
        "paths": {
            r.key: {
                "title": r.title, "status": r.status, "is_vpn": r.is_vpn, "version": r.version,
                "detail": r.detail, "offloads": r.offloads, "setup_seconds": r.setup_seconds,
                "daemon_cpus": r.daemon_cpus,
                "summary": {k: s.as_dict() for k, s in sums[r.key].items()},
                "errors": r.errors(),
                "rounds": r.rounds,
            }
            for r in report.records
        },
        "ratios": report.ratio_rows(),
    }


# -- table (rich) --------------------------------------------------------------------------------------------
def format_cell(metric: Metric, stats: Stats | None, *, rounds: int) -> str:
    """``median (min–max)``, with ``[n=k]`` when fewer than ``rounds`` values; ``-`` when none."""
    if stats is None:
        return "-"
    f = metric.fmt
    text = f.format(stats.median)
    if stats.n > 1:
        text += f" ({f.format(stats.min)}–{f.format(stats.max)})"
    if stats.n < rounds:
        text += f" [n={stats.n}]"
    return text


def metric_title(metric: Metric, opts: Options) -> str:
    """The metric's title with the run's stream count and UDP payload filled in."""
    return metric.title.format(streams=opts.streams, payload=opts.udp_payload)


def mode_text(report: Report) -> str:
    """``shared CPUs`` or ``pinned: client end CPU a, server end CPU b``."""
    if report.pin is None:
        return "shared CPUs"
    return f"pinned: client end CPU {report.pin[0]}, server end CPU {report.pin[1]}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _title(key: str) -> str:
    return PATH_TITLES.get(key, key)


def results_table(report: Report) -> Any:
    """A rich Table: one row per path, medians with min–max spread; paths without figures show their status
    (the reason is in :func:`notes_lines`)."""
    from rich.markup import escape
    from rich.table import Table

    opts = report.options
    table = Table(title=f"netbench ({mode_text(report)}): median (min–max) of {opts.rounds} interleaved rounds, "
                        f"{opts.seconds} s per iperf3 run; UDP = delivered packets/s; CPU = VPN daemons of both ends",
                  title_justify="left")
    table.add_column("path", no_wrap=True)
    for m in METRICS:
        table.add_column(f"{metric_title(m, opts)}\n{m.unit}", justify="right")
    sums = report.summaries()
    for r in report.records:
        if not r.rounds:
            short = "not measured" if r.ok else r.status.split(":", 1)[0]
            style = "dim" if short == "not available" else "red"
            table.add_row(escape(r.title), f"[{style}]{escape(short)}[/{style}]", *[""] * (len(METRICS) - 1))
            continue
        cells = [escape(format_cell(m, sums[r.key].get(m.key), rounds=opts.rounds))
                 if (r.is_vpn or not m.vpn_only) else "[dim]kernel[/dim]" for m in METRICS]
        title = escape(r.title) if r.ok else f"{escape(r.title)} [red](failed)[/red]"
        table.add_row(title, *cells)
    return table


def ratio_table(report: Report) -> Any:
    """A rich Table of median ratios: each path ÷ raw veth, pyvpn ÷ each peer (rows without figures left out)."""
    from rich.table import Table

    opts = report.options
    table = Table(title="ratios of medians (throughput: higher is better; RTT and CPU: lower is better)",
                  title_justify="left")
    table.add_column("ratio", no_wrap=True)
    for m in METRICS:
        table.add_column(f"{metric_title(m, opts)}\n{m.unit}", justify="right")
    for row in report.ratio_rows():
        if all(v is None for v in row["ratios"].values()):
            continue
        table.add_row(f"{_title(row['num'])} ÷ {_title(row['den'])}",
                      *[format_ratio(row["ratios"][m.key]) for m in METRICS])
    return table


def notes_lines(report: Report) -> list[str]:
    """Lines under the tables: offload setting, path details, per-test errors."""
    lines = []
    offloads = sorted({r.offloads for r in report.records if r.offloads})
    lines.append(f"mode: {mode_text(report)}")
    lines.append(f"veth offloads: {'; '.join(offloads) or 'n/a'}")
    for r in report.records:
        if not r.ok:
            lines.append(f"{r.title}: {r.status}")
        if r.detail:
            lines.append(f"{r.title}: {r.detail}")
        if r.version:
            lines.append(f"{r.title} version: {r.version}")
        if r.daemon_cpus is not None:
            shown = ", ".join(",".join(map(str, cpus)) or "?" for cpus in r.daemon_cpus)
            lines.append(f"{r.title} daemons' CPUs (in start order): {shown}")
        for err in r.errors()[:5]:
            lines.append(f"{r.title}: {err}")
    if report.interrupted:
        lines.append("interrupted: partial results")
    return lines


# -- chart (matplotlib, optional) --------------------------------------------------------------------------
def write_chart(report: Report, path: Path) -> str | None:
    """Bar charts (median, min–max error bars) of every metric; returns None, or why no chart was made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install matplotlib): no chart"
    sums = report.summaries()
    records = [r for r in report.records if sums[r.key]]
    if not records:
        return "no results to chart"
    cols = 4
    rows = (len(METRICS) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    colors = {"veth": "#999999", "vxlan": "#bbbbbb", "wireguard-go-trixie": "#54278f", "wireguard-go": "#9e9ac8",
              "fastd": "#31a354", "tinc": "#a1d99b", "openvpn": "#ef8a17", "openvpn-tap": "#fdae6b",
              "pyvpn": "#1f78b4", "pyvpn-l2": "#6baed6"}
    for ax, m in zip(axes.flat, METRICS, strict=False):
        names, med, lo, hi, col = [], [], [], [], []
        for r in records:
            s = sums[r.key].get(m.key)
            if s is None:
                continue
            names.append(r.title)
            med.append(s.median)
            lo.append(s.median - s.min)
            hi.append(s.max - s.median)
            col.append(colors.get(r.key, "#444444"))
        bars = ax.bar(range(len(names)), med, yerr=[lo, hi], color=col, capsize=3)
        ax.bar_label(bars, labels=[m.fmt.format(v) for v in med], fontsize=7, padding=2)
        positive = [v for v in med if v > 0]
        if positive and max(positive) / min(positive) > 20:
            ax.set_yscale("log")  # tunnels next to the raw veth: keep them visible
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{metric_title(m, report.options)} ({m.unit})"
                     + (", log scale" if ax.get_yscale() == "log" else ""), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    spare = list(axes.flat)[len(METRICS):]
    for ax in spare:
        ax.axis("off")
    if spare:
        lines = [f"{_title(r['num'])} ÷ {_title(r['den'])}: TCP1 {format_ratio(r['ratios']['tcp1_gbps'])}, "
                 f"UDP {format_ratio(r['ratios']['udp_kpps'])}, CPU/GB {format_ratio(r['ratios']['tcp1_cpu_s_per_gb'])}"
                 for r in report.ratio_rows() if r["num"] in PYVPN_PATHS and r["den"] != BASELINE
                 and any(v is not None for v in r["ratios"].values())]
        spare[0].text(0.0, 1.0, "ratios of medians\n" + "\n".join(lines or ["(no pyvpn figures)"]),
                      va="top", ha="left", fontsize=8, family="monospace", transform=spare[0].transAxes)
    machine = report.machine
    fig.suptitle(f"pyvpn netbench {report.started} ({mode_text(report)}) — {machine.get('cpu_model', '?')}, "
                 f"{machine.get('nproc', '?')} CPUs, Linux {machine.get('kernel', '?')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# -- machine info ----------------------------------------------------------------------------------------
def _first_line(argv: Sequence[str]) -> str:
    r = sh(argv, check=False, timeout=5.0)
    text = (r.stdout or r.stderr).strip()
    return text.splitlines()[0] if text else ""


def machine_info() -> dict[str, Any]:
    """nproc, kernel, CPU model, load, Python and tool versions."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        import cryptography

        crypto_version = cryptography.__version__
    except ImportError:
        crypto_version = None
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": affinity,
        "kernel": platform.release(),
        "cpu_model": model,
        "machine": platform.machine(),
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "cryptography": crypto_version,
        "iperf3": _first_line(["iperf3", "--version"]) if have("iperf3") else None,
        "ethtool": _first_line(["ethtool", "--version"]) if have("ethtool") else None,
        "ping": _first_line(["ping", "-V"]) if have("ping") else None,
    }


# -- measuring ---------------------------------------------------------------------------------------------
def _sample(path: BenchPath) -> tuple[dict[int, float], float]:
    pids = path.daemon_pids() if path.is_vpn else []
    return tree_cpu_seconds(pids), system_busy_seconds()


def _cpu_fields(path: BenchPath, before: tuple[dict[int, float], float]) -> dict[str, Any]:
    procs_after, sys_after = _sample(path)
    return {"vpn_cpu_s": cpu_delta(before[0], procs_after) if path.is_vpn else None,
            "system_cpu_s": sys_after - before[1]}


def measure_round(lab: Lab, path: BenchPath, ep: Endpoints, opts: Options, round_no: int) -> dict[str, Any]:
    """One round on one path: ping, TCP 1 stream, TCP ``opts.streams`` streams, UDP small datagrams.

    Each test's entry holds its raw figures plus ``vpn_cpu_s`` (daemons of both ends, None for kernel
    paths) and ``system_cpu_s`` (whole machine), or ``{"error": ...}``.
    """
    rnd: dict[str, Any] = {"round": round_no, "started": time.time()}
    try:
        p = run_ping(ep, count=opts.pings, interval=opts.ping_interval)
        rnd["ping"] = {"rtts_ms": list(p.rtts_ms), "sent": p.sent, "median_ms": p.median_ms, "loss": p.loss}
    except MeasureError as e:
        rnd["ping"] = {"error": str(e)}
    for name, streams in (("tcp1", 1), ("tcp4", opts.streams)):
        time.sleep(PAUSE)
        before = _sample(path)
        t0 = time.monotonic()
        try:
            res = parse_iperf3_tcp(run_iperf3(lab, ep, seconds=opts.seconds, streams=streams))
            rnd[name] = {"bits_per_second": res.bits_per_second, "gbps": res.gbps, "bytes": res.bytes,
                         "seconds": res.seconds, "retransmits": res.retransmits, "streams": res.streams,
                         "wall_s": time.monotonic() - t0, **_cpu_fields(path, before)}
        except MeasureError as e:
            rnd[name] = {"error": str(e)}
    time.sleep(PAUSE)
    before = _sample(path)
    t0 = time.monotonic()
    try:
        u = parse_iperf3_udp(run_iperf3(lab, ep, seconds=opts.seconds, udp_payload=opts.udp_payload),
                             opts.udp_payload)
        rnd["udp"] = {"sent_packets": u.sent_packets, "delivered_packets": u.delivered_packets,
                      "lost_packets": u.lost_packets, "seconds": u.seconds, "payload": u.payload,
                      "delivered_pps": u.delivered_pps, "sent_pps": u.sent_pps,
                      "wall_s": time.monotonic() - t0, **_cpu_fields(path, before)}
    except MeasureError as e:
        rnd["udp"] = {"error": str(e)}
    return rnd


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt while the run lasts, so that clean-up runs (main thread
    only; Ctrl-C is KeyboardInterrupt already, unless SIGINT was ignored by whoever started us)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave the handlers alone
        pass
    try:
        yield
    finally:
        for num, previous in old.items():
            signal.signal(num, previous)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def preflight(*, pin: bool = False) -> str | None:
    """Why the benchmark cannot run at all here (not root, tools missing, one CPU in pinned mode), or None."""
    if os.geteuid() != 0:
        return "netbench needs root (network namespaces): run it with sudo"
    missing = [t for t in ("ip", "iperf3", "ping", "ss", *(["taskset"] if pin else [])) if not have(t)]
    if missing:
        return f"missing tools: {', '.join(missing)} (run benchmarks/setup.sh)"
    if pin:
        try:
            pin_cpus(os.sched_getaffinity(0))
        except ValueError as e:
            return str(e)
    return None


def run(options: Options, progress: Progress | None = None) -> Report:
    """Set up every path, measure the interleaved rounds, clean up; return the report.

    Ctrl-C or SIGTERM stops the measurements, cleans up and returns the partial report with
    ``interrupted`` set.

    :param progress: called with one line of text per step.
    :raises RuntimeError: when :func:`preflight` finds a reason not to run.
    """
    say: Progress = progress or (lambda _line: None)
    if (why := preflight(pin=options.pin)) is not None:
        raise RuntimeError(why)
    pin = pin_cpus(os.sched_getaffinity(0)) if options.pin else None
    report = Report(options=options, machine=machine_info(), records=[], started=_now(), pin=pin)
    with _signals_as_interrupt():
        for name in sweep_stale() + sweep_stale_sockets():
            say(f"removed stale {name}")
        say(f"mode: {mode_text(report)}")
        lab = Lab(pin=pin)
        try:
            _run_in(lab, report, say)
        except KeyboardInterrupt:
            report.interrupted = True
            say("interrupted: cleaning up")
        finally:
            lab.close()
    report.finished = _now()
    return report


def daemon_affinities(pids: Sequence[int]) -> list[list[int]]:
    """The CPUs each of ``pids`` may run on (what pinned mode set; [] for a process that is gone)."""
    out = []
    for pid in pids:
        try:
            out.append(sorted(os.sched_getaffinity(pid)))
        except OSError:
            out.append([])
    return out


def _run_in(lab: Lab, report: Report, say: Progress) -> None:
    opts = report.options
    active: list[tuple[BenchPath, PathRecord, Endpoints]] = []
    for slot, key in enumerate(opts.paths, start=1):
        path = make_path(key, pyvpn_command=opts.pyvpn_command)
        rec = PathRecord(key=key, title=path.title, is_vpn=path.is_vpn)
        report.records.append(rec)
        try:
            rec.version = path.version()
        except Exception as e:  # noqa: BLE001 - a version string never stops the run
            rec.version = f"? ({e})"
        reason = path.unavailable()
        if reason is not None:
            rec.status = f"not available: {reason}"
            say(f"{path.title}: {rec.status}")
            continue
        say(f"{path.title}: setting up")
        t0 = time.monotonic()
        try:
            ep = path.setup(lab, slot, veth_gso=opts.veth_gso)
        except Exception as e:  # noqa: BLE001 - any set-up failure is reported, the other paths go on
            rec.status = f"failed: {e}"
            say(f"{path.title}: {rec.status}")
            continue
        rec.setup_seconds = round(time.monotonic() - t0, 2)
        rec.detail, rec.offloads = ep.detail, ep.offloads
        if report.pin is not None and path.is_vpn:
            rec.daemon_cpus = daemon_affinities(path.daemon_pids())
        active.append((path, rec, ep))
    for round_no in range(1, opts.rounds + 1):
        for path, rec, ep in active:
            if not rec.ok:
                continue
            if (dead := path.alive()) is not None:
                rec.status = f"failed: {dead}"
                say(f"{path.title}: {rec.status}")
                continue
            say(f"round {round_no}/{opts.rounds}: {path.title}")
            rnd = measure_round(lab, path, ep, opts, round_no)
            rec.rounds.append(rnd)
            got = round_metrics(rnd)
            say("  " + ", ".join(f"{metric_title(METRIC_BY_KEY[k], opts)} {METRIC_BY_KEY[k].fmt.format(v)}"
                                 for k, v in got.items()) if got else "  no figures this round")
            if (dead := path.alive()) is not None:
                rec.status = f"failed: {dead}"
                say(f"{path.title}: {rec.status}")


# -- output ----------------------------------------------------------------------------------------------
def write_outputs(report: Report, out: Path, *, chart: bool = True) -> tuple[Path, Path | None, str | None]:
    """Write ``netbench-<time>.json`` (and ``.png``) into ``out``; return the paths and a chart note."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{report.options.mode}"
    json_path = out / f"netbench-{stamp}.json"
    json_path.write_text(json.dumps(report_json(report), indent=1) + "\n")
    png_path = out / f"netbench-{stamp}.png"
    note = write_chart(report, png_path) if chart else "chart not requested"
    return json_path, (png_path if note is None else None), note


def print_report(report: Report, console: Any = None) -> None:
    """Print both tables and the notes with rich."""
    from rich.console import Console

    con = console if console is not None else Console()
    con.print(results_table(report))
    if report.ratio_rows():
        con.print(ratio_table(report))
    for line in notes_lines(report):
        con.print(line, markup=False, highlight=False)


def write_modes(docs: Sequence[Mapping[str, Any]], out: Path, *, chart: bool,
                console: Any) -> None:
    """The table (.md) and chart of both modes (:mod:`modes`), named after the runs' start."""
    from benchmarks import modes

    stem = "netbench-modes-" + str(docs[0].get("started", "run")).replace(":", "")[:17]
    md, png, note = modes.write(docs, out, stem, chart=chart)
    console.print(f"both modes: {md}", markup=False, highlight=False)
    console.print(f"both modes: {png}" if png else f"both modes: no chart ({note})", markup=False, highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: parse, run (once, or shared then pinned), print, write files; return the
    exit status."""
    from rich.console import Console

    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)
    if args.combine:
        from benchmarks import modes

        try:
            given = [modes.load(p) for p in args.combine]
            modes.by_mode(given)
        except modes.ModesError as e:
            console.print(f"netbench: {e}", style="red", markup=False)
            return 2
        write_modes(given, args.out, chart=not args.no_chart, console=console)
        return 0
    opts = options_from_args(parser, args)
    if args.both_modes and opts.pin:
        parser.error("--both-modes runs the pinned mode itself: leave out --pin")
    runs = [opts, replace(opts, pin=True)] if args.both_modes else [opts]
    started = time.monotonic()

    def progress(line: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] {line}", highlight=False)

    docs: list[dict[str, Any]] = []
    status = 0
    for run_opts in runs:
        try:
            report = run(run_opts, progress=progress)
        except RuntimeError as e:
            console.print(f"netbench: {e}", style="red", markup=False)
            return 2
        print_report(report, console)
        json_path, png_path, note = write_outputs(report, run_opts.out, chart=run_opts.chart)
        console.print(f"JSON: {json_path}", markup=False, highlight=False)
        console.print(f"PNG:  {png_path}" if png_path else f"PNG:  none ({note})", markup=False, highlight=False)
        docs.append(json.loads(json_path.read_text()))
        if report.interrupted:
            return 130
        if not any(r.ok and r.rounds for r in report.records):
            status = 1
    if len(docs) == 2:
        write_modes(docs, opts.out, chart=opts.chart, console=console)
    return status


if __name__ == "__main__":
    sys.exit(main())
