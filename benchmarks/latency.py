"""Ping latency and idle CPU of pyvpn variants beside wireguard-go and raw veth, in one run (root).

The latency half of ``netbench.py`` without the iperf3 tests, so that levers can be compared A/B with
many more pings: each path gets its own namespace pair (``paths.lab``), then

1. **idle CPU**: once every tunnel is up and handshaken, utime+stime of each path's daemons (both ends,
   from ``/proc``) over ``--idle`` seconds with no traffic, as % of one core per daemon;
2. **ping rounds, interleaved**: round 1 of every path, round 2, ...; a round is ``--pings`` echo requests
   ``--interval`` seconds apart (default 0.05 s, as netbench: every packet finds the daemons asleep);
   the daemons' CPU during the pings is recorded too (the cost of any polling after a packet).

A pyvpn variant is ``LABEL`` or ``LABEL:VAR=VALUE[,VAR=VALUE...]``: the environment the two daemons get
(e.g. ``poll0:PYVPN_POLL_US=0``).  ``--pyvpn-cmd`` picks the command as in netbench.

    sudo .venv/bin/python -m benchmarks.latency --variants base,poll0:PYVPN_POLL_US=0 --rounds 5
    sudo .venv/bin/python -m benchmarks.latency --pin --idle 30

Prints one table (mean and median RTT with the spread of the round means, ratio of means to wireguard-go
trixie, CPU) and one JSON line (``--json FILE`` writes it to a file too).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.paths import BenchPath, Endpoints, make_path
from benchmarks.paths.lab import Lab, cpu_delta, pin_cpus, sweep_stale, tree_cpu_seconds
from benchmarks.paths.measure import run_ping
from benchmarks.paths.pyvpn import PyvpnL3Path
from benchmarks.paths.wggo import sweep_stale_sockets


class PyvpnVariant(PyvpnL3Path):
    """pyvpn L3 with extra environment variables for both daemons."""

    def __init__(self, label: str, env: dict[str, str], command: Sequence[str] | None = None) -> None:
        super().__init__(command)
        self.label = label
        self.extra_env = env

    def daemon_env(self) -> dict[str, str | None]:
        return {**super().daemon_env(), **self.extra_env}


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``LABEL`` or ``LABEL:VAR=VALUE,VAR=VALUE`` → (label, environment)."""
    label, _, rest = text.partition(":")
    env: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"bad variant {text!r}: expected VAR=VALUE, got {item!r}")
        env[key] = value
    if not label:
        raise ValueError(f"bad variant {text!r}: no label")
    return label, env


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="pyvpn", help="comma-separated pyvpn variants (see the docstring); "
                   "separate variables of one variant with '+' instead of ','")
    p.add_argument("--others", default="veth,wireguard-go-trixie", help="netbench path keys to run beside")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pings", type=int, default=40)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement (0: skip)")
    p.add_argument("--pin", action="store_true", help="client end on one CPU, server end on another")
    p.add_argument("--pyvpn-cmd", default=None)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    command = shlex.split(a.pyvpn_cmd) if a.pyvpn_cmd else None
    paths: list[tuple[str, BenchPath]] = []
    for key in filter(None, a.others.split(",")):
        paths.append((key, make_path(key)))
    for text in filter(None, a.variants.split(",")):
        label, env = parse_variant(text.replace("+", ","))
        paths.append((label, PyvpnVariant(label, env, command)))
    for name in sweep_stale() + sweep_stale_sockets():
        print(f"removed stale {name}", file=sys.stderr)
    pin = pin_cpus(os.sched_getaffinity(0)) if a.pin else None
    rtts: dict[str, list[list[float]]] = {label: [] for label, _ in paths}
    ping_cpu: dict[str, float] = {label: 0.0 for label, _ in paths}
    idle: dict[str, float | None] = {}
    with Lab(pin=pin) as lab:
        eps: dict[str, Endpoints] = {}
        for slot, (label, path) in enumerate(paths, start=1):
            why = path.unavailable()
            if why:
                print(f"{label}: {why}", file=sys.stderr)
                continue
            eps[label] = path.setup(lab, slot, veth_gso=False)
            print(f"{label}: up", file=sys.stderr)
        for ep in eps.values():  # one ping each: every tunnel handshaken before the idle measurement
            run_ping(ep, count=1, interval=0.2)
        if a.idle > 0:
            pids = {label: path.daemon_pids() for label, path in paths if label in eps}
            before = {label: tree_cpu_seconds(v) for label, v in pids.items()}
            t0 = time.monotonic()
            time.sleep(a.idle)
            wall = time.monotonic() - t0
            for label, v in pids.items():
                if v:
                    per_daemon = cpu_delta(before[label], tree_cpu_seconds(v)) / wall / len(v)
                    idle[label] = 100.0 * per_daemon
        for r in range(a.rounds):
            for label, path in paths:
                if label not in eps:
                    continue
                pids_now = path.daemon_pids()
                c0 = tree_cpu_seconds(pids_now)
                try:
                    res = run_ping(eps[label], count=a.pings, interval=a.interval)
                except Exception as e:  # noqa: BLE001 - a failed round is reported, the others go on
                    print(f"{label} round {r + 1}: {e}", file=sys.stderr)
                    continue
                ping_cpu[label] += cpu_delta(c0, tree_cpu_seconds(pids_now))
                rtts[label].append(list(res.rtts_ms))
            print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    doc: dict[str, Any] = {"pin": list(pin) if pin else None, "pings": a.pings, "interval": a.interval,
                           "rounds": a.rounds, "git": _git(), "paths": {}}
    ref = _mean_of(rtts.get("wireguard-go-trixie", []))
    print(f"{'path':<24}{'mean ms':>9}{'median':>9}{'round means':>17}{'÷wg-trixie':>11}"
          f"{'idle %core':>11}{'CPU ms/ping':>12}")
    for label, rounds in rtts.items():
        if not rounds:
            continue
        flat = [x for rr in rounds for x in rr]
        means = [statistics.fmean(rr) for rr in rounds if rr]
        mean = statistics.fmean(flat)
        ratio = mean / ref if ref else None
        cpu_ms = 1000.0 * ping_cpu[label] / max(1, len(flat))
        idle_pct = idle.get(label)
        doc["paths"][label] = {"mean_ms": mean, "median_ms": statistics.median(flat), "round_means_ms": means,
                               "ratio_to_wg_trixie": ratio, "idle_pct_core_per_daemon": idle_pct,
                               "cpu_ms_per_ping": cpu_ms, "rtts_ms": rounds}
        print(f"{label:<24}{mean:>9.3f}{statistics.median(flat):>9.3f}"
              f"{f'{min(means):.3f}-{max(means):.3f}':>17}{(f'{ratio:.2f}x' if ratio else '-'):>11}"
              f"{(f'{idle_pct:.3f}' if idle_pct is not None else '-'):>11}{cpu_ms:>12.3f}")
    line = json.dumps(doc)
    if a.json is not None:
        a.json.write_text(line + "\n")
    return 0


def _mean_of(rounds: list[list[float]]) -> float | None:
    flat = [x for rr in rounds for x in rr]
    return statistics.fmean(flat) if flat else None


def _git() -> str:
    r = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
                       capture_output=True, text=True, check=False)
    return r.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
