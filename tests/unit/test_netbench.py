"""Unit tests for the pure parts of benchmarks/netbench.py (no root, no namespaces, no traffic).

Covered: iperf3 JSON and ping text parsing (shapes taken from iperf3 3.12 and iputils 20221126 runs on this
machine kind), aggregation of rounds into medians/spreads, CPU per GB and per packet, ratios and the
comparison rows, option parsing, the JSON document, the rich tables, the chart file, the generated
OpenVPN/pyvpn configs, /proc CPU accounting helpers, and the run loop's order and failure isolation with
fake paths.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import netbench
from benchmarks.paths import PATH_KEYS, BenchPath, Endpoints, make_path
from benchmarks.paths.lab import cpu_delta, process_cpu_seconds, system_busy_seconds, tree_cpu_seconds
from benchmarks.paths.measure import (
    MeasureError,
    iperf3_client_argv,
    parse_iperf3_tcp,
    parse_iperf3_udp,
    parse_ping_rtts,
)

# -- samples (trimmed iperf3 3.12 -J output) -----------------------------------------------------------------
TCP_DOC: dict[str, Any] = {
    "start": {"test_start": {"protocol": "TCP", "num_streams": 4, "blksize": 131072, "duration": 2}},
    "intervals": [],
    "end": {
        "streams": [],
        "sum_sent": {"start": 0, "end": 2.0, "seconds": 2.0, "bytes": 84000000, "bits_per_second": 336e6,
                     "retransmits": 7, "sender": True},
        "sum_received": {"start": 0, "end": 2.01, "seconds": 2.01, "bytes": 83886080,
                         "bits_per_second": 333877930.0, "sender": True},
        "cpu_utilization_percent": {"host_total": 40.0},
    },
}
UDP_DOC: dict[str, Any] = {
    "start": {"test_start": {"protocol": "UDP", "num_streams": 1, "blksize": 64}},
    "end": {
        "sum": {"start": 0, "end": 2.000773, "seconds": 2.000773, "bytes": 12887680, "bits_per_second": 51.5e6,
                "jitter_ms": 0.0024, "lost_packets": 70368, "packets": 201370, "lost_percent": 34.9, "sender": True},
        "sum_sent": {"start": 0, "end": 2.000578, "seconds": 2.000578, "bytes": 12887680,
                     "bits_per_second": 51.5e6, "jitter_ms": 0, "lost_packets": 0, "packets": 201370,
                     "lost_percent": 0, "sender": True},
        "sum_received": {"start": 0, "end": 2.000773, "seconds": 2.000773, "bytes": 8375104,
                         "bits_per_second": 33.5e6, "jitter_ms": 0.0024, "lost_packets": 70368,
                         "packets": 201229, "lost_percent": 34.9, "sender": False},
    },
}
PING_TEXT = """PING 198.19.2.2 (198.19.2.2) 56(84) bytes of data.
64 bytes from 198.19.2.2: icmp_seq=1 ttl=64 time=0.912 ms
64 bytes from 198.19.2.2: icmp_seq=2 ttl=64 time=0.654 ms
64 bytes from 198.19.2.2: icmp_seq=4 ttl=64 time=0.700 ms

--- 198.19.2.2 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 151ms
rtt min/avg/max/mdev = 0.654/0.755/0.912/0.112 ms
"""


# -- parsers -------------------------------------------------------------------------------------------------
def test_parse_tcp_receiver_side() -> None:
    r = parse_iperf3_tcp(TCP_DOC)
    assert r.bits_per_second == 333877930.0
    assert r.bytes == 83886080 and r.seconds == 2.01
    assert r.retransmits == 7 and r.streams == 4
    assert math.isclose(r.gbps, 0.33387793)


def test_parse_tcp_without_optional_fields() -> None:
    doc = copy.deepcopy(TCP_DOC)
    del doc["start"]
    del doc["end"]["sum_sent"]
    r = parse_iperf3_tcp(doc)
    assert r.retransmits is None and r.streams == 1


@pytest.mark.parametrize("doc, needle", [
    ({"error": "unable to connect to server: Connection refused"}, "Connection refused"),
    ({"start": {}}, "end.sum_received"),
    ({"end": {"sum_received": "x"}}, "end.sum_received"),
    ({"end": {"sum_received": {"bits_per_second": "fast", "bytes": 1, "seconds": 1}}}, "not a finite number"),
    ({"end": {"sum_received": {"bits_per_second": True, "bytes": 1, "seconds": 1}}}, "not a finite number"),
    ({"end": {"sum_received": {"bits_per_second": float("nan"), "bytes": 1, "seconds": 1}}}, "finite"),
    ({"end": {"sum_received": {"bytes": 1, "seconds": 1}}}, "bits_per_second"),
    ([1, 2], "not an object"),
    (None, "not an object"),
])
def test_parse_tcp_rejects_with_typed_error(doc: Any, needle: str) -> None:
    with pytest.raises(MeasureError, match=needle):
        parse_iperf3_tcp(doc)


def test_parse_udp_delivered_from_receiver() -> None:
    u = parse_iperf3_udp(UDP_DOC, 64)
    assert u.sent_packets == 201370
    assert u.delivered_packets == 201229 - 70368 == 8375104 // 64
    assert u.lost_packets == 70368 and u.payload == 64
    assert math.isclose(u.delivered_pps, 130861 / 2.000773)
    assert math.isclose(u.sent_pps, 201370 / 2.000773)


def test_parse_udp_falls_back_to_sum() -> None:
    doc = copy.deepcopy(UDP_DOC)
    del doc["end"]["sum_received"]
    del doc["end"]["sum_sent"]
    u = parse_iperf3_udp(doc, 64)
    assert u.delivered_packets == 201370 - 70368
    assert u.sent_packets == 201370


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(error="the server is busy running a test"), "busy"),
    (lambda d: d.pop("end"), "end"),
    (lambda d: d["end"].pop("sum_received") and d["end"].pop("sum"), "sum_received or end.sum"),
    (lambda d: d["end"]["sum_received"].update(packets=-1), "negative"),
    (lambda d: d["end"]["sum_received"].update(lost_packets="x"), "lost_packets"),
])
def test_parse_udp_rejects(mutate: Any, needle: str) -> None:
    doc = copy.deepcopy(UDP_DOC)
    mutate(doc)
    with pytest.raises(MeasureError, match=needle):
        parse_iperf3_udp(doc, 64)


def test_parse_udp_more_lost_than_counted_is_zero_delivered() -> None:
    doc = copy.deepcopy(UDP_DOC)
    doc["end"]["sum_received"]["lost_packets"] = 10**9
    assert parse_iperf3_udp(doc, 64).delivered_packets == 0


def test_measure_error_is_value_error() -> None:
    assert issubclass(MeasureError, ValueError)


def test_parse_ping() -> None:
    p = parse_ping_rtts(PING_TEXT, 4)
    assert p.rtts_ms == (0.912, 0.654, 0.700)
    assert p.median_ms == 0.700
    assert math.isclose(p.loss, 0.25)


def test_parse_ping_edge_cases() -> None:
    assert parse_ping_rtts("", 5).median_ms is None and parse_ping_rtts("", 5).loss == 1.0
    assert parse_ping_rtts("64 bytes from ::1: icmp_seq=1 ttl=64 time<1 ms\n", 1).rtts_ms == (1.0,)
    assert parse_ping_rtts("x time=2 ms y time=4 ms", 2).median_ms == 3.0
    many = "\n".join(f"time={i}.0 ms" for i in range(10))
    assert len(parse_ping_rtts(many, 3).rtts_ms) == 3  # never more replies than requests
    assert parse_ping_rtts("time=abc ms\n\x00\xff", 1).rtts_ms == ()


def test_iperf3_argv() -> None:
    assert iperf3_client_argv("198.19.1.2", seconds=5) == [
        "iperf3", "-c", "198.19.1.2", "-p", "5201", "-t", "5", "-J", "--connect-timeout", "3000"]
    tcp4 = iperf3_client_argv("198.19.1.2", seconds=2, streams=4)
    assert tcp4[-2:] == ["-P", "4"]
    udp = iperf3_client_argv("198.19.1.2", seconds=2, udp_payload=64, port=5300)
    assert udp[-5:] == ["-u", "-l", "64", "-b", "0"]
    assert "5300" in udp
    with pytest.raises(ValueError):
        iperf3_client_argv("198.19.1.2", seconds=0)


# -- aggregation ---------------------------------------------------------------------------------------------
def test_summarize() -> None:
    assert netbench.summarize([]) is None
    s = netbench.summarize([3.0, 1.0, 2.0])
    assert s == netbench.Stats(2.0, 1.0, 3.0, 3)
    assert netbench.summarize([1, 4]) == netbench.Stats(2.5, 1.0, 4.0, 2)
    assert s is not None and s.as_dict() == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}


def test_cpu_per_unit() -> None:
    assert netbench.cpu_s_per_gb(2.0, 500_000_000) == 4.0
    assert netbench.cpu_s_per_gb(None, 10) is None
    assert netbench.cpu_s_per_gb(1.0, 0) is None
    assert netbench.cpu_us_per_packet(0.5, 100_000) == 5.0
    assert netbench.cpu_us_per_packet(None, 1) is None and netbench.cpu_us_per_packet(1.0, 0) is None


def make_round(n: int, *, gbps: float, cpu: float | None = 1.0, rtt: float = 0.5, kpps: float = 40.0,
               errors: tuple[str, ...] = ()) -> dict[str, Any]:
    nbytes = int(gbps * 1e9 / 8 * 2)
    rnd: dict[str, Any] = {
        "round": n,
        "ping": {"rtts_ms": [rtt], "sent": 1, "median_ms": rtt, "loss": 0.0},
        "tcp1": {"bits_per_second": gbps * 1e9, "bytes": nbytes, "seconds": 2.0, "vpn_cpu_s": cpu},
        "tcp4": {"bits_per_second": gbps * 1.2e9, "bytes": int(nbytes * 1.2), "seconds": 2.0, "vpn_cpu_s": cpu},
        "udp": {"delivered_packets": int(kpps * 2000), "seconds": 2.0, "vpn_cpu_s": cpu},
    }
    for name in errors:
        rnd[name] = {"error": "iperf3: boom"}
    return rnd


def test_round_metrics() -> None:
    m = netbench.round_metrics(make_round(1, gbps=0.5, cpu=2.0))
    assert math.isclose(m["tcp1_gbps"], 0.5)
    assert math.isclose(m["tcp1_cpu_s_per_gb"], 2.0 / 0.125)
    assert math.isclose(m["udp_kpps"], 40.0)
    assert math.isclose(m["udp_cpu_us_per_pkt"], 2.0 * 1e6 / 80000)
    assert m["rtt_ms"] == 0.5
    assert set(m) == {k.key for k in netbench.METRICS}


def test_round_metrics_kernel_and_errors() -> None:
    m = netbench.round_metrics(make_round(1, gbps=8.0, cpu=None, errors=("tcp4", "ping")))
    assert set(m) == {"tcp1_gbps", "udp_kpps"}
    assert netbench.round_metrics({"round": 1}) == {}
    assert netbench.round_metrics({"round": 1, "tcp1": "garbage"}) == {}


def test_summarize_rounds_spread() -> None:
    rounds = [make_round(1, gbps=0.3), make_round(2, gbps=0.5), make_round(3, gbps=0.4, errors=("udp",))]
    s = netbench.summarize_rounds(rounds)
    assert math.isclose(s["tcp1_gbps"].median, 0.4)
    assert math.isclose(s["tcp1_gbps"].min, 0.3) and math.isclose(s["tcp1_gbps"].max, 0.5)
    assert s["tcp1_gbps"].n == 3 and s["udp_kpps"].n == 2


def test_ratio() -> None:
    a, b = netbench.Stats(2.0, 1.0, 3.0, 3), netbench.Stats(4.0, 4.0, 4.0, 3)
    assert netbench.ratio(a, b) == 0.5
    assert netbench.ratio(b, a) == 2.0
    assert netbench.ratio(None, b) is None and netbench.ratio(a, None) is None
    assert netbench.ratio(a, netbench.Stats(0.0, 0.0, 0.0, 1)) is None


def test_comparisons() -> None:
    rows = netbench.comparisons(list(PATH_KEYS))
    n = len(PATH_KEYS) - 1
    assert rows[:n] == [(k, "veth") for k in PATH_KEYS if k != "veth"]
    assert rows[n:] == [("pyvpn", "wireguard-go-trixie"), ("pyvpn", "wireguard-go"), ("pyvpn", "fastd"),
                        ("pyvpn", "tinc"), ("pyvpn", "openvpn"), ("pyvpn", "vxlan"),
                        ("pyvpn-l2", "pyvpn"), ("pyvpn-l2", "openvpn-tap"), ("pyvpn-l2", "vxlan"),
                        ("pyvpn-l2", "wireguard-go-trixie")]
    assert ("pyvpn-l2", "openvpn") not in rows  # the L3 (tun) OpenVPN: pyvpn L2 meets its tap mode
    assert len(rows) == len(set(rows))
    assert netbench.comparisons(["pyvpn", "pyvpn-l2"]) == [("pyvpn-l2", "pyvpn")]
    assert netbench.comparisons(["vxlan", "pyvpn-l2"]) == [("pyvpn-l2", "vxlan")]
    assert netbench.comparisons(["wireguard-go", "pyvpn"]) == [("pyvpn", "wireguard-go")]
    assert netbench.comparisons(["pyvpn", "tinc", "wireguard-go-trixie"]) == [
        ("pyvpn", "wireguard-go-trixie"), ("pyvpn", "tinc")]  # the modern anchor first, whatever --paths says
    assert netbench.comparisons(["veth"]) == []
    assert netbench.comparisons(["veth", "openvpn"]) == [("openvpn", "veth")]


# -- options ---------------------------------------------------------------------------------------------------
def test_options_defaults_and_quick() -> None:
    o = netbench.parse_options([])
    assert o.paths == PATH_KEYS and o.rounds == 3 and o.seconds == 5 and o.pings == 20 and not o.veth_gso
    q = netbench.parse_options(["--quick"])
    assert q.quick and q.rounds == 3 and q.seconds == 2 and q.pings == 10
    q2 = netbench.parse_options(["--quick", "--seconds", "4", "--rounds", "5", "--paths", "veth, pyvpn",
                                 "--veth-gso", "--pyvpn-cmd", "pyvpn --log-level error", "--out", "/tmp/x"])
    assert q2.seconds == 4 and q2.rounds == 5 and q2.paths == ("veth", "pyvpn") and q2.veth_gso
    assert q2.pyvpn_command == ("pyvpn", "--log-level", "error") and q2.out == Path("/tmp/x")


@pytest.mark.parametrize("argv", [["--paths", "veth,nope"], ["--paths", "veth,veth"], ["--paths", ","],
                                  ["--rounds", "0"], ["--seconds", "0"], ["--streams", "1"],
                                  ["--udp-size", "8"], ["--ping-interval", "5"], ["--rounds", "x"]])
def test_options_rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        netbench.parse_options(argv)
    assert e.value.code == 2


def test_make_path() -> None:
    for key in PATH_KEYS:
        p = make_path(key, pyvpn_command=["pyvpn"])
        assert p.key == key and p.title
    assert make_path("veth").is_vpn is False and make_path("pyvpn").is_vpn is True
    assert {"wireguard-go-trixie", "fastd", "tinc"} <= set(PATH_KEYS)
    assert PATH_KEYS.index("wireguard-go-trixie") < PATH_KEYS.index("wireguard-go")  # the anchor row first
    with pytest.raises(ValueError):
        make_path("boringtun")


def _fake_sh(results: dict[str, subprocess.CompletedProcess[str]]) -> Any:
    """A stand-in for ``paths.lab.sh`` answering by the last word of the command."""
    calls: list[list[str]] = []

    def sh(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        return results[argv[-1]]

    sh.calls = calls  # type: ignore[attr-defined]
    return sh


def test_pyvpn_l2_unavailable_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.paths.pyvpn as pp

    helptext = "Commands:\n genkey ...\n client  Run ...\n server  Run ...\n"
    ok = subprocess.CompletedProcess([], 0, helptext, "")
    fake = _fake_sh({"--help": ok, "import vpn.l2": ok})
    monkeypatch.setattr(pp, "sh", fake)
    monkeypatch.setattr(pp.os.path, "exists", lambda p: True)
    assert make_path("pyvpn-l2").unavailable() is None
    assert fake.calls[-1][-2:] == ["-c", "import vpn.l2"]  # the default command's tree is checked for L2
    fake.calls.clear()
    assert make_path("pyvpn-l2", pyvpn_command=["pyvpn"]).unavailable() is None
    assert fake.calls == [["pyvpn", "--help"]]  # another command: only its --help

    broken = subprocess.CompletedProcess([], 1, "", "Traceback ...\nModuleNotFoundError: No module named 'vpn.l2'")
    monkeypatch.setattr(pp, "sh", _fake_sh({"--help": ok, "import vpn.l2": broken}))
    assert "no L2 mode" in (make_path("pyvpn-l2").unavailable() or "")
    monkeypatch.setattr(pp, "sh", _fake_sh({"--help": subprocess.CompletedProcess([], 127, "", "pyvpn: not found")}))
    assert "--help failed: pyvpn: not found" in (make_path("pyvpn-l2", pyvpn_command=["pyvpn"]).unavailable() or "")
    monkeypatch.setattr(pp, "sh", _fake_sh({"--help": subprocess.CompletedProcess([], 0, "Commands: genkey", "")}))
    assert "no server/client" in (make_path("pyvpn-l2").unavailable() or "")
    monkeypatch.setattr(pp, "sh", _fake_sh({"--help": ok, "import vpn.l2": ok}))
    monkeypatch.setattr(pp.os.path, "exists", lambda p: p != "/dev/net/tun")
    assert "/dev/net/tun" in (make_path("pyvpn-l2").unavailable() or "")


def test_pyvpn_l2_unavailable_for_real() -> None:
    """The real checks on this checkout (rootless: ``--help`` and an import); a missing command is named."""
    assert make_path("pyvpn-l2").unavailable() is None
    why = make_path("pyvpn-l2", pyvpn_command=["/nonexistent/pyvpn"]).unavailable()
    assert why is not None and "--help failed" in why


# -- report: JSON, tables, chart -----------------------------------------------------------------------------
def make_report() -> netbench.Report:
    opts = netbench.Options(paths=("veth", "wireguard-go", "openvpn", "pyvpn", "pyvpn-l2"), rounds=3, seconds=2)
    recs = [
        netbench.PathRecord("veth", "raw veth", False, rounds=[make_round(i, gbps=8.0, cpu=None, rtt=0.05)
                                                               for i in (1, 2, 3)]),
        netbench.PathRecord("wireguard-go", "wireguard-go", True, version="wireguard-go v0.0.20220316",
                            rounds=[make_round(i, gbps=0.2 + i / 100, cpu=1.5) for i in (1, 2, 3)]),
        netbench.PathRecord("openvpn", "OpenVPN", True, status="failed: openvpn: daemon exited 1: bad cert"),
        netbench.PathRecord("pyvpn", "pyvpn L3", True,
                            rounds=[make_round(i, gbps=0.4 + i / 100, cpu=1.0) for i in (1, 2)]
                            + [make_round(3, gbps=0.42, errors=("tcp4",))]),
        netbench.PathRecord("pyvpn-l2", "pyvpn L2", True, status="not available: not wired yet"),
    ]
    return netbench.Report(opts, {"nproc": 2, "kernel": "6.18", "cpu_model": "test"}, recs,
                           started="2025-01-01T00:00:00+00:00", finished="2025-01-01T00:01:00+00:00")


def test_report_json_shape() -> None:
    doc = netbench.report_json(make_report())
    text = json.dumps(doc, allow_nan=False)  # serialisable, no NaN
    back = json.loads(text)
    assert back["schema"] == netbench.SCHEMA
    assert back["options"]["rounds"] == 3 and back["options"]["paths"][0] == "veth"
    assert back["machine"]["nproc"] == 2
    assert set(back["paths"]) == {"veth", "wireguard-go", "openvpn", "pyvpn", "pyvpn-l2"}
    wg = back["paths"]["wireguard-go"]
    assert wg["status"] == "ok" and wg["version"].startswith("wireguard-go")
    assert wg["summary"]["tcp1_gbps"]["n"] == 3 and math.isclose(wg["summary"]["tcp1_gbps"]["median"], 0.22)
    assert len(wg["rounds"]) == 3  # raw figures kept
    assert back["paths"]["openvpn"]["status"].startswith("failed:")
    assert back["paths"]["pyvpn"]["errors"] == ["r3 tcp4: iperf3: boom"]
    assert back["metrics"]["tcp4_gbps"]["title"] == "TCP 4"
    rows = {(r["num"], r["den"]): r["ratios"] for r in back["ratios"]}
    assert math.isclose(rows[("pyvpn", "wireguard-go")]["tcp1_gbps"], 0.42 / 0.22)
    assert math.isclose(rows[("wireguard-go", "veth")]["tcp1_gbps"], 0.22 / 8.0)
    assert rows[("pyvpn", "openvpn")]["tcp1_gbps"] is None  # failed peer: no ratio
    assert rows[("wireguard-go", "veth")]["tcp1_cpu_s_per_gb"] is None  # kernel path has no daemon CPU


def render(table: Any) -> str:
    from rich.console import Console

    con = Console(file=io.StringIO(), width=200, record=True, color_system=None)
    con.print(table)
    return con.export_text()


def test_results_table_text() -> None:
    text = render(netbench.results_table(make_report()))
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 2}
    assert "8.00" in lines["raw veth"] and "kernel" in lines["raw veth"]
    assert "0.22 (0.21–0.23)" in lines["wireguard-go"]
    assert "failed" in lines["OpenVPN"] and "not available" in lines["pyvpn L2"]
    assert "[n=2]" in lines["pyvpn L3"]  # one round lost its TCP x4 figure
    assert "TCP 4" in text and "UDP 64B" in text


def test_ratio_table_text() -> None:
    text = render(netbench.ratio_table(make_report()))
    assert "pyvpn L3 ÷ wireguard-go" in text and f"{0.42 / 0.22:.2f}×" in text
    assert "pyvpn L3 ÷ OpenVPN" not in text  # no figures: row left out
    assert "pyvpn L2" not in text


def test_notes_and_cells() -> None:
    notes = netbench.notes_lines(make_report())
    assert any("OpenVPN: failed: openvpn: daemon exited 1: bad cert" in n for n in notes)
    assert any(n.startswith("pyvpn L3: r3 tcp4") for n in notes)
    m = netbench.METRIC_BY_KEY["rtt_ms"]
    assert netbench.format_cell(m, None, rounds=3) == "-"
    assert netbench.format_cell(m, netbench.Stats(0.5, 0.5, 0.5, 1), rounds=3) == "0.500 [n=1]"
    assert netbench.format_ratio(None) == "-" and netbench.format_ratio(1.234) == "1.23×"


def test_write_outputs(tmp_path: Path) -> None:
    json_path, png, note = netbench.write_outputs(make_report(), tmp_path / "out", chart=False)
    assert json.loads(json_path.read_text())["schema"] == netbench.SCHEMA
    assert png is None and note


def test_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert netbench.write_chart(make_report(), tmp_path / "c.png") is None
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_print_report_smoke() -> None:
    from rich.console import Console

    con = Console(file=io.StringIO(), width=200, record=True, color_system=None)
    netbench.print_report(make_report(), con)
    assert "veth offloads" in con.export_text()


# -- run loop with fake paths (order, failure isolation) ------------------------------------------------------
class FakePath(BenchPath):
    title = "fake"
    is_vpn = True

    def __init__(self, key: str, *, fail: str | None = None, missing: str | None = None,
                 dies_after: int | None = None) -> None:
        super().__init__()
        self.key = key  # type: ignore[misc]
        self.title = key  # type: ignore[misc]
        self.fail, self.missing, self.dies_after, self.rounds = fail, missing, dies_after, 0

    def unavailable(self) -> str | None:
        return self.missing

    def setup(self, lab: Any, slot: int, *, veth_gso: bool) -> Endpoints:
        if self.fail:
            raise RuntimeError(self.fail)
        return Endpoints(client=None, server=None, server_addr=f"198.19.{slot}.2", mtu=1420,  # type: ignore[arg-type]
                         offloads="test", detail=f"slot {slot}")

    def alive(self) -> str | None:
        if self.dies_after is not None and self.rounds >= self.dies_after:
            return "daemon exited -9: killed"
        return None


def test_run_loop_interleaves_and_isolates(monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = {"veth": FakePath("veth"), "vxlan": FakePath("vxlan", fail="ip link add: no vxlan module"),
             "wireguard-go": FakePath("wireguard-go", dies_after=2), "openvpn": FakePath("openvpn"),
             "pyvpn": FakePath("pyvpn"), "pyvpn-l2": FakePath("pyvpn-l2", missing="not wired")}
    paths = ("veth", "vxlan", "wireguard-go", "openvpn", "pyvpn", "pyvpn-l2")
    calls: list[tuple[int, str]] = []

    def fake_measure(lab: Any, path: BenchPath, ep: Endpoints, opts: Any, round_no: int) -> dict[str, Any]:
        calls.append((round_no, path.key))
        assert isinstance(path, FakePath)
        path.rounds += 1
        return make_round(round_no, gbps=1.0)

    monkeypatch.setattr(netbench, "make_path", lambda key, pyvpn_command=None: fakes[key])
    monkeypatch.setattr(netbench, "measure_round", fake_measure)
    report = netbench.Report(netbench.Options(paths=paths, rounds=3), {}, [], started="now")
    lines: list[str] = []
    netbench._run_in(object(), report, lines.append)  # type: ignore[arg-type]
    # round 1 of every live path, then round 2, ...; the dead daemon stops after its 2nd round
    assert calls == [(1, "veth"), (1, "wireguard-go"), (1, "openvpn"), (1, "pyvpn"),
                     (2, "veth"), (2, "wireguard-go"), (2, "openvpn"), (2, "pyvpn"),
                     (3, "veth"), (3, "openvpn"), (3, "pyvpn")]
    status = {r.key: r.status for r in report.records}
    assert status["vxlan"] == "failed: ip link add: no vxlan module"
    assert status["pyvpn-l2"] == "not available: not wired"
    assert status["wireguard-go"].startswith("failed: daemon exited -9")
    assert status["veth"] == status["pyvpn"] == "ok"
    assert len(report.record("wireguard-go").rounds) == 2  # type: ignore[union-attr]
    assert report.record("veth").detail == "slot 1"  # type: ignore[union-attr]
    assert any("round 3/3: pyvpn" in line for line in lines)


def test_run_refuses_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in (netbench.preflight() or "")
    with pytest.raises(RuntimeError, match="root"):
        netbench.run(netbench.Options())
    assert netbench.main(["--paths", "veth"]) == 2


# -- generated configs ---------------------------------------------------------------------------------------
def test_openvpn_config_and_fingerprint(tmp_path: Path) -> None:
    from benchmarks.paths.openvpn import p2p_config, self_signed

    cert, key, fp = self_signed("netbench-test")
    assert cert.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY" in key
    assert len(fp.split(":")) == 32 and fp == fp.upper()
    text = p2p_config(tls_role="tls-server", local="198.18.3.2", remote="198.18.3.1",
                      ifconfig_local="198.19.3.2", ifconfig_remote="198.19.3.1", ipv6_local="fd00:3::2",
                      ipv6_remote="fd00:3::1", cert=tmp_path / "c", key=tmp_path / "k", peer_fingerprint=fp,
                      ifname="tun0")
    lines = text.splitlines()
    for want in ("tls-server", "dh none", "data-ciphers AES-256-GCM", "disable-dco", "tun-mtu 1420",
                 f"peer-fingerprint {fp}", "ifconfig 198.19.3.2 198.19.3.1", "proto udp"):
        assert want in lines
    with pytest.raises(ValueError):
        p2p_config(tls_role="server", local="", remote="", ifconfig_local="", ifconfig_remote="",
                   ipv6_local="", ipv6_remote="", cert=tmp_path, key=tmp_path, peer_fingerprint="", ifname="t")
    tap = p2p_config(tls_role="tls-client", local="198.18.3.1", remote="198.18.3.2", ifconfig_local="198.19.3.1",
                     ifconfig_remote="198.19.3.2", ipv6_local="fd00:3::1", ipv6_remote="fd00:3::2",
                     cert=tmp_path / "c", key=tmp_path / "k", peer_fingerprint=fp, ifname="tap0", dev_type="tap",
                     mtu=1370).splitlines()
    for want in ("dev tap0", "dev-type tap", "tun-mtu 1370", "ifconfig 198.19.3.1 255.255.255.0"):
        assert want in tap
    with pytest.raises(ValueError):
        p2p_config(tls_role="tls-client", local="", remote="", ifconfig_local="", ifconfig_remote="",
                   ipv6_local="", ipv6_remote="", cert=tmp_path, key=tmp_path, peer_fingerprint="", ifname="t",
                   dev_type="tup")


def _key() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    k = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    priv = k.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = k.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(priv).decode(), base64.b64encode(pub).decode()


def test_pyvpn_configs_parse_with_pyvpn() -> None:
    config = pytest.importorskip("vpn.config")
    from benchmarks.paths.pyvpn import client_config, server_config

    (spriv, spub), (cpriv, cpub) = _key(), _key()
    s = config.parse_config(server_config(private_key=spriv, address=["198.19.5.2/24", "fd00:5::2/64"],
                                          client_public=cpub, client_ips=["198.19.5.1/32", "fd00:5::1/128"]))
    assert s.interface.listen_port == 51820 and len(s.interface.addresses) == 2
    assert base64.b64encode(s.peers[0].public_key).decode() == cpub
    c = config.parse_config(client_config(private_key=cpriv, address=["198.19.5.1/24"], server_public=spub,
                                          server_nets=["198.19.5.0/24"], endpoint="198.18.5.2:51820"))
    assert c.peers[0].endpoint == ("198.18.5.2", 51820) and c.peers[0].persistent_keepalive == 25


def test_pyvpn_l2_configs_parse_with_pyvpn() -> None:
    config = pytest.importorskip("vpn.config")
    l2 = pytest.importorskip("vpn.l2")
    from benchmarks.paths.pyvpn import L2_TAP_MTU, L2_VNI, PYVPN_MTU, client_config, server_config
    from tunnel.encap.vxlan import mtu_for_tap
    from vpn.testlab.configs import segment

    assert L2_TAP_MTU == mtu_for_tap(PYVPN_MTU, False) == 1370  # the benchmark's expectation is pyvpn's rule
    (spriv, spub), (cpriv, cpub) = _key(), _key()
    s = config.parse_config(server_config(
        private_key=spriv, address=["198.19.5.2/24", "fd00:5::2/64"], client_public=cpub,
        client_ips=["198.19.5.1/32", "fd00:5::1/128"], client_vtep="198.19.5.1",
        segments=[segment(L2_VNI, "nblaaaaaat")]))
    c = config.parse_config(client_config(
        private_key=cpriv, address=["198.19.5.1/24", "fd00:5::1/64"], server_public=spub,
        server_nets=["198.19.5.0/24", "fd00:5::/64"], endpoint="198.18.5.2:51820", server_vtep="198.19.5.2",
        segments=[segment(L2_VNI, "nblbbbbbbt")]))
    assert s.peers[0].vtep == "198.19.5.1" and c.peers[0].vtep == "198.19.5.2"
    assert c.peers[0].endpoint == ("198.18.5.2", 51820) and s.interface.listen_port == 51820
    for cfg, role, tap in ((s, "server", "nblaaaaaat"), (c, "client", "nblbbbbbbt")):
        (seg,) = cfg.segments
        assert (seg.vni, seg.tap, seg.mtu, seg.mode) == (L2_VNI, tap, None, "tunnel")
        (plan,) = l2.plan_segments(cfg, role=role, tunnel_mtu=PYVPN_MTU)
        assert plan.name == tap and plan.mtu == L2_TAP_MTU  # IPv4 VTEPs: tunnel MTU - 50
    plain = config.parse_config(server_config(private_key=spriv, address=["198.19.5.2/24"], client_public=cpub,
                                              client_ips=["198.19.5.1/32"]))
    assert plain.segments == () and plain.peers[0].vtep is None  # the L3 configs are unchanged


def test_ratio_table_with_l2() -> None:
    report = make_report()
    report.records[-1] = netbench.PathRecord("pyvpn-l2", "pyvpn L2", True,
                                             rounds=[make_round(i, gbps=0.2, cpu=2.0) for i in (1, 2, 3)])
    report.records.insert(1, netbench.PathRecord("vxlan", "kernel vxlan", False,
                                                 rounds=[make_round(i, gbps=4.0, cpu=None) for i in (1, 2, 3)]))
    report.records.insert(2, netbench.PathRecord("wireguard-go-trixie", "wireguard-go (trixie)", True,
                                                 rounds=[make_round(i, gbps=0.8, cpu=0.5) for i in (1, 2, 3)]))
    rows = {(r["num"], r["den"]): r["ratios"] for r in report.ratio_rows()}
    assert math.isclose(rows[("pyvpn-l2", "pyvpn")]["tcp1_gbps"] or 0.0, 0.2 / 0.42)
    assert math.isclose(rows[("pyvpn-l2", "vxlan")]["tcp1_gbps"] or 0.0, 0.2 / 4.0)
    assert rows[("pyvpn-l2", "vxlan")]["tcp1_cpu_s_per_gb"] is None  # kernel path: no daemon CPU
    assert math.isclose(rows[("pyvpn-l2", "wireguard-go-trixie")]["tcp1_gbps"] or 0.0, 0.2 / 0.8)
    assert ("pyvpn-l2", "openvpn") not in rows and ("pyvpn-l2", "wireguard-go") not in rows
    text = render(netbench.ratio_table(report))
    for label in ("pyvpn L2 ÷ raw veth", "pyvpn L2 ÷ pyvpn L3", "pyvpn L2 ÷ kernel vxlan",
                  "pyvpn L2 ÷ wireguard-go (trixie)", "pyvpn L3 ÷ wireguard-go (trixie)"):
        assert label in text
    assert text.index("pyvpn L2 ÷ pyvpn L3") < text.index("pyvpn L2 ÷ kernel vxlan")
    lines = {line.split("│")[1].strip(): line for line in render(netbench.results_table(report)).splitlines()
             if line.count("│") > 2}
    assert "0.20" in lines["pyvpn L2"] and "not available" not in lines["pyvpn L2"]


# -- /proc accounting ----------------------------------------------------------------------------------------
def test_cpu_accounting_helpers() -> None:
    assert cpu_delta({1: 1.0, 2: 5.0}, {1: 1.5, 3: 0.25}) == 0.75  # new pid from zero, gone pid dropped
    assert cpu_delta({1: 2.0}, {1: 1.0}) == 0.0  # never negative (pid reuse)
    sample = tree_cpu_seconds([os.getpid()])
    assert os.getpid() in sample and sample[os.getpid()] >= 0.0
    assert process_cpu_seconds(2**22 + 7) == 0.0  # no such pid
    assert system_busy_seconds() > 0.0


# -- trixie's wireguard-go: sources parsing and the private apt set-up -----------------------------------------
SOURCES_LIST = """# comment
deb-src http://deb.example.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example.net/debian/ bookworm main contrib
deb http://security.example.net/debian-security bookworm-security main
"""
DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
"""


def test_trixie_parse_sources() -> None:
    from benchmarks.paths.trixie import AptSource, parse_deb822, parse_one_line

    assert parse_one_line(SOURCES_LIST) == [
        AptSource("http://mirror.example.net/debian", ("bookworm",), ("main", "contrib"), "/usr/share/keyrings/k.gpg"),
        AptSource("http://security.example.net/debian-security", ("bookworm-security",), ("main",), None)]
    assert parse_one_line("deb http://x\n\x00garbage\ndeb\n") == []  # too short or malformed: skipped
    assert parse_deb822(DEB822) == [
        AptSource("http://deb.debian.org/debian", ("bookworm", "bookworm-updates"), ("main",),
                  "/usr/share/keyrings/debian-archive-keyring.gpg"),
        AptSource("http://deb.debian.org/debian-security", ("bookworm-security",), ("main",), None)]


def test_trixie_mirror_and_private_apt(tmp_path: Path) -> None:
    from benchmarks.paths.trixie import (
        FetchError,
        apt_options,
        find_mirror,
        parse_deb822,
        parse_one_line,
        private_sources,
    )

    # the machine's own bookworm mirror, never -security or -updates, whichever comes first
    sources = parse_one_line(SOURCES_LIST)[::-1] + parse_deb822(DEB822)
    m = find_mirror(sources, "bookworm")
    assert m.uri == "http://mirror.example.net/debian"
    assert private_sources(m, suite="trixie", arch="amd64") == (
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example.net/debian trixie main\n")
    assert find_mirror(parse_deb822(DEB822), "bookworm").uri == "http://deb.debian.org/debian"
    with pytest.raises(FetchError, match="suite 'trixie'"):
        find_mirror(sources, "trixie")
    with pytest.raises(FetchError):
        find_mirror(parse_one_line("deb http://m/debian bookworm contrib\n"), "bookworm")  # no main
    opts = apt_options(tmp_path)
    values = dict(o.split("=", 1) for o in opts[1::2])
    for key in ("Dir::State", "Dir::State::status", "Dir::Cache", "Dir::Etc::SourceList", "Dir::Etc::SourceParts"):
        assert values[key].startswith(str(tmp_path)), key  # nothing of the machine's apt state is used or written
    assert opts[0::2] == ["-o"] * len(values)


def test_trixie_machine_sources_and_codename(tmp_path: Path) -> None:
    from benchmarks.paths.trixie import FetchError, machine_sources, os_codename

    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(DEB822)
    (etc / "sources.list.d" / "other.list").write_text("deb http://other.example/debian bookworm main\n")
    (etc / "sources.list.d" / "x.sources.disabled-by-farm").write_text(DEB822.replace("deb.debian", "nope"))
    uris = [s.uri for s in machine_sources(etc)]
    assert uris == ["http://deb.debian.org/debian", "http://deb.debian.org/debian-security",
                    "http://other.example/debian"]  # no sources.list: only the parts, in name order
    (etc / "sources.list").write_text(SOURCES_LIST)
    assert machine_sources(etc)[0].uri == "http://mirror.example.net/debian"
    osr = tmp_path / "os-release"
    osr.write_text('NAME="Debian GNU/Linux"\nVERSION_CODENAME=bookworm\n')
    assert os_codename(osr) == "bookworm"
    osr.write_text("NAME=x\n")
    with pytest.raises(FetchError):
        os_codename(osr)


def test_trixie_this_machine_has_a_mirror() -> None:
    """The real sources of this machine name a mirror for its own codename (what setup.sh relies on)."""
    from benchmarks.paths.trixie import FetchError, find_mirror, machine_sources, os_codename

    if not Path("/etc/apt").is_dir():
        pytest.skip("no apt on this machine")
    try:
        codename = os_codename()
    except (OSError, FetchError) as e:
        pytest.skip(f"no codename: {e}")
    m = find_mirror(machine_sources(), codename)
    assert m.uri.startswith(("http://", "https://", "file:", "mirror"))


def test_trixie_path_unavailable_is_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.paths.base
    import benchmarks.paths.trixie as tx

    monkeypatch.setattr(tx, "ROOT_DIR", tmp_path / "root")
    monkeypatch.setattr(tx, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(benchmarks.paths.base, "have", lambda tool: True)
    path = make_path("wireguard-go-trixie")
    assert "not fetched" in (path.unavailable() or "") and path.binary() is None
    binary = tmp_path / "root" / "usr" / "bin" / "wireguard-go"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 3\n")
    binary.chmod(0o755)
    assert "does not run" in (path.unavailable() or "")  # present but broken
    binary.write_text("#!/bin/sh\necho wireguard-go v0.0.20230223\n")
    assert path.unavailable() is None and path.binary() == str(binary)
    monkeypatch.setattr(benchmarks.paths.base, "have", lambda tool: tool != "wg")
    assert path.unavailable() == "not installed: wg (run benchmarks/setup.sh)"
    assert tx.package_version() is None
    (tmp_path / tx.VERSION_FILE).write_text("0.0.20231211-1+b9\n")
    assert tx.package_version() == "0.0.20231211-1+b9"
    assert "trixie package 0.0.20231211-1+b9" in path.version() and "v0.0.20230223" in path.version()


# -- fastd and tinc configs ----------------------------------------------------------------------------------
FASTD_KEYS = """2026-12-06 23:06:30 +0000 --- Info: Reading 32 bytes from /dev/random...
Secret: e07e8a45353762311b041a0515c8ac2f38e48cfcecca9d6e9a598717bc6ec362
Public: 59a8f018d4609c644aefbbd4be008986924c2f329ed55ff88c12c62f579f5abf
"""


def test_fastd_key_parsing() -> None:
    from benchmarks.paths.fastd import parse_generated_key

    secret, public = parse_generated_key(FASTD_KEYS)
    assert secret.startswith("e07e8a45") and public.endswith("579f5abf")
    for bad in ("", FASTD_KEYS.replace("Public", "Publik"), FASTD_KEYS.replace("e07e8a45", "xyz")):
        with pytest.raises(ValueError):
            parse_generated_key(bad)


def test_fastd_config(tmp_path: Path) -> None:
    from benchmarks.paths.fastd import fastd_config, parse_generated_key

    secret, public = parse_generated_key(FASTD_KEYS)
    text = fastd_config(ifname="fd0", bind="198.18.4.1", secret=secret, peer_key=public, peer_remote="198.18.4.2")
    lines = [line.strip() for line in text.splitlines()]
    for want in ("mode tun;", 'interface "fd0";', 'method "salsa2012+umac";', "bind 198.18.4.1:10000;",
                 f'secret "{secret}";', "mtu 1420;", f'key "{public}";', "remote 198.18.4.2:10000;"):
        assert want in lines
    assert text.count("{") == text.count("}") == 1
    with pytest.raises(ValueError):
        fastd_config(ifname='fd0"; evil', bind="198.18.4.1", secret=secret, peer_key=public, peer_remote="x")
    import shutil

    if shutil.which("fastd") is None:
        return
    conf = tmp_path / "fastd.conf"
    conf.write_text(text)
    r = subprocess.run(["fastd", "--verify-config", "--config", str(conf)], capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 0, r.stderr + r.stdout  # fastd itself accepts what the benchmark writes


def test_tinc_config(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from benchmarks.paths.tinc import host_file, rsa_keypair, tinc_conf, write_node

    private, public = rsa_keypair(1024)
    assert private.startswith("-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1, what tinc 1.0 reads
    assert public.startswith("-----BEGIN RSA PUBLIC KEY-----")
    key = serialization.load_pem_private_key(private.encode(), None)
    assert key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.PKCS1).decode() == public
    conf = tinc_conf(name="client", bind="198.18.7.1", connect_to="server").splitlines()
    for want in ("Name = client", "Mode = router", "DeviceType = tun", "Interface = tnc0",
                 "BindToAddress = 198.18.7.1 655", "ConnectTo = server", "AddressFamily = ipv4"):
        assert want in conf
    assert not any(line.startswith("ConnectTo") for line in tinc_conf(name="server", bind="x", connect_to=None)
                   .splitlines())
    host = host_file(address="198.18.7.2", subnets=["198.19.7.2/32", "fd00:7::2/128"], public_pem=public)
    lines = host.splitlines()
    for want in ("Address = 198.18.7.2", "Port = 655", "Subnet = 198.19.7.2/32", "Subnet = fd00:7::2/128",
                 "Cipher = aes-256-cbc", "Digest = sha256"):
        assert want in lines
    assert public.strip() in host
    with pytest.raises(ValueError):
        host_file(address="x", subnets=[], public_pem="-----BEGIN PUBLIC KEY-----")
    with pytest.raises(ValueError):
        tinc_conf(name="my-node", bind="x", connect_to=None)  # tinc names: letters, digits, _
    node = tmp_path / "node"
    write_node(node, name="client", bind="198.18.7.1", connect_to="server", private_pem=private,
               hosts={"client": host, "server": host})
    assert (node / "rsa_key.priv").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (node / "hosts").iterdir()) == ["client", "server"]
    assert "Name = client" in (node / "tinc.conf").read_text()


def test_paths_unavailable_without_their_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.paths.base

    monkeypatch.setattr(benchmarks.paths.base, "have", lambda tool: False)
    for key, tools in (("fastd", "fastd"), ("tinc", "tincd"), ("openvpn", "openvpn"),
                       ("wireguard-go", "wireguard-go, wg")):
        assert make_path(key).unavailable() == f"not installed: {tools} (run benchmarks/setup.sh)"
    assert make_path("veth").unavailable() is None  # kernel paths need only what preflight checks
    monkeypatch.setattr(benchmarks.paths.base, "have", lambda tool: tool in ("fastd", "tincd"))
    assert make_path("fastd").unavailable() is None and make_path("tinc").unavailable() is None


# -- pinned mode ---------------------------------------------------------------------------------------------
def test_pin_cpus_and_argv() -> None:
    from benchmarks.paths.lab import pin_cpus
    from vpn.testlab.netns import netns_argv

    assert pin_cpus({3, 1, 0, 2}) == (0, 1)
    assert pin_cpus([5, 7]) == (5, 7)  # the two lowest this process may use, not literally 0 and 1
    for bad in ([], [0], [2, 2]):
        with pytest.raises(ValueError, match="two usable CPUs"):
            pin_cpus(bad)
    assert netns_argv("n1", ["iperf3", "-s"]) == ["ip", "netns", "exec", "n1", "iperf3", "-s"]
    assert netns_argv("n1", ["iperf3", "-s"], 1) == ["taskset", "-c", "1", "ip", "netns", "exec", "n1", "iperf3", "-s"]


def test_pinned_lab_puts_each_end_on_its_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command of the client namespace (daemon, iperf3 client, ping) runs on the first CPU, every one of
    the server namespace on the second; shared mode pins nothing.  Rootless: ``sh`` is recorded, not run."""
    import benchmarks.paths.lab as lab_mod
    import vpn.testlab.netns as netns_mod

    calls: list[list[str]] = []

    def fake_sh(argv: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, "", "")

    monkeypatch.setattr(netns_mod, "sh", fake_sh)
    for pin, want in (((0, 1), {"a": ["taskset", "-c", "0"], "b": ["taskset", "-c", "1"]}), (None, {"a": [], "b": []})):
        calls.clear()
        lab = lab_mod.Lab(pin=pin)
        try:
            pair, _ = lab.pair(3, veth_gso=True)
            assert (pair.client.cpu, pair.server.cpu) == (pin or (None, None))
            pair.client.run(["iperf3", "-c", "198.19.3.2"])
            pair.server.run(["iperf3", "-s"])
            in_ns = [c for c in calls if "exec" in c]
            assert in_ns, calls
            for c in in_ns:
                side = c[c.index("exec") + 1][-1]  # pvb-<pid>-3a / -3b
                assert c[:c.index("ip")] == want[side], c
            argv = netns_mod.netns_argv(pair.server.name, ["wireguard-go", "-f", "x"], pair.server.cpu)
            assert pair.server.argv(["wireguard-go", "-f", "x"]) == argv  # popen uses the same prefix
        finally:
            lab.close()


def test_pin_option_mode_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    o = netbench.parse_options(["--pin", "--paths", "veth"])
    assert o.pin and o.mode == "pinned" and netbench.parse_options([]).mode == "shared"
    report = make_report()
    assert netbench.report_json(report)["mode"] == "shared" and netbench.report_json(report)["pin_cpus"] is None
    report.options = netbench.Options(paths=report.options.paths, rounds=3, seconds=2, pin=True)
    report.pin = (0, 1)
    report.records[1].daemon_cpus = [[0], [1]]
    doc = netbench.report_json(report)
    assert doc["mode"] == doc["options"]["mode"] == "pinned" and doc["pin_cpus"] == [0, 1]
    assert doc["paths"]["wireguard-go"]["daemon_cpus"] == [[0], [1]]
    assert "pinned: client end CPU 0, server end CPU 1" in render(netbench.results_table(report))
    assert any("daemons' CPUs (in start order): 0, 1" in n for n in netbench.notes_lines(report))
    # pinned mode refuses to start on one CPU (or without taskset), before anything is built
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netbench, "have", lambda tool: True)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert "two usable CPUs" in (netbench.preflight(pin=True) or "")
    assert netbench.preflight(pin=False) is None
    monkeypatch.setattr(netbench, "have", lambda tool: tool != "taskset")
    assert "taskset" in (netbench.preflight(pin=True) or "")


def test_daemon_affinities() -> None:
    assert netbench.daemon_affinities([os.getpid()]) == [sorted(os.sched_getaffinity(0))]
    assert netbench.daemon_affinities([2**22 + 7]) == [[]]  # gone: empty, no exception


# -- both modes: one table and one chart from a shared and a pinned run ---------------------------------------
def _mode_docs() -> tuple[dict[str, Any], dict[str, Any]]:
    shared = make_report()
    pinned = make_report()
    pinned.options = netbench.Options(paths=pinned.options.paths, rounds=3, seconds=2, pin=True)
    pinned.pin = (0, 1)
    pinned.records[1] = netbench.PathRecord("wireguard-go", "wireguard-go (bookworm)", True,
                                            rounds=[make_round(i, gbps=0.3, cpu=1.0) for i in (1, 2, 3)])
    del pinned.records[3]  # pyvpn L3 not in the pinned run
    return netbench.report_json(shared), netbench.report_json(pinned)


def test_modes_markdown() -> None:
    from benchmarks import modes

    shared, pinned = _mode_docs()
    text = modes.markdown([pinned, shared])  # order of the files does not matter
    lines = text.splitlines()
    assert lines[0].startswith("Machine: test, 2 CPUs, Linux 6.18") and "pinned" in lines[0] and "CPUs 0/1" in lines[0]
    assert lines[2] == ("| path (shared / pinned) | TCP 1 Gbit/s | TCP 4 Gbit/s | UDP 64B kpps | RTT ms "
                        "| CPU TCP 1 s/GB |")
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in lines if line.startswith("| ")}
    assert rows["raw veth"][0].strip() == "8.00 (8.00–8.00) / 8.00 (8.00–8.00)"
    assert rows["raw veth"][4].strip() == "kernel / kernel"
    assert rows["wireguard-go"][0].strip() == "0.22 (0.21–0.23) / 0.30 (0.30–0.30)"
    assert rows["OpenVPN"][0].strip() == "failed / failed"
    assert rows["pyvpn L3"][0].strip().endswith("/ pending")  # not in the pinned run
    assert rows["pyvpn L2"][0].strip() == "not available / not available"
    ratio = rows["pyvpn L3 ÷ wireguard-go"]
    assert ratio[0].strip() == f"{0.42 / 0.22:.2f}× / pending"
    assert modes.markdown([shared]).count("/ pending") >= 5  # a shared run alone: the pinned half is pending


def test_modes_rejects(tmp_path: Path) -> None:
    from benchmarks import modes

    shared, _ = _mode_docs()
    with pytest.raises(modes.ModesError, match="two shared"):
        modes.by_mode([shared, shared])
    bad = tmp_path / "x.json"
    bad.write_text('{"schema": "other"}')
    with pytest.raises(modes.ModesError, match="not a pyvpn-netbench/1"):
        modes.load(bad)
    bad.write_text("{")
    with pytest.raises(modes.ModesError):
        modes.load(bad)
    old = dict(shared)
    del old["mode"]  # runs from before --pin: shared
    assert modes.doc_mode(old) == "shared"


def test_combine_from_files(tmp_path: Path) -> None:
    shared, pinned = _mode_docs()
    a, b = tmp_path / "s.json", tmp_path / "p.json"
    a.write_text(json.dumps(shared))
    b.write_text(json.dumps(pinned))
    out = tmp_path / "out"
    assert netbench.main(["--combine", str(a), str(b), "--out", str(out), "--no-chart"]) == 0
    (md,) = out.glob("netbench-modes-*.md")
    assert "| wireguard-go | 0.22 (0.21–0.23) / 0.30 (0.30–0.30) |" in md.read_text()
    assert netbench.main(["--combine", str(a), str(a), "--out", str(out)]) == 2  # two shared runs


def test_combined_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks import modes

    assert modes.write_chart(list(_mode_docs()), tmp_path / "m.png") is None
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_both_modes_runs_shared_then_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def fake_run(options: netbench.Options, progress: Any = None) -> netbench.Report:
        seen.append(options.pin)
        report = make_report()
        report.options = options
        report.pin = (0, 1) if options.pin else None
        return report

    monkeypatch.setattr(netbench, "run", fake_run)
    out = tmp_path / "out"
    assert netbench.main(["--both-modes", "--paths", "veth,pyvpn", "--out", str(out), "--no-chart"]) == 0
    assert seen == [False, True]
    docs = sorted(json.loads(p.read_text())["mode"] for p in out.glob("netbench-*-*.json"))
    assert docs == ["pinned", "shared"]
    assert len(list(out.glob("netbench-modes-*.md"))) == 1
    with pytest.raises(SystemExit):
        netbench.main(["--both-modes", "--pin"])


def test_pyvpn_bench_runs_the_imported_package(tmp_path: Path) -> None:
    """``pyvpn bench ARGS`` is ``benchmarks.netbench.main(ARGS)``, imported as a package (no file path)."""
    from typer.testing import CliRunner

    from vpn.cli import app

    missing = tmp_path / "missing.json"
    r = CliRunner().invoke(app, ["bench", "--combine", str(missing), str(missing)])
    assert r.exit_code != 0 and f"netbench: {missing}" in r.output, r.output
    assert sys.modules["benchmarks.netbench"] is netbench
