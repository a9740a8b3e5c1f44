"""The Prometheus endpoint of a running server and client, scraped from inside their namespaces.

The server gets ``#pyvpn Metrics = 127.0.0.1:PORT`` in its file, the client ``--metrics`` on the
command line.  Scrapes before and after a counted ping must show the peer counters moving by at
least the ping's packets and bytes, a handshake, the peer's name and key as labels, and a
device-level ``no_route`` drop for a ping to a pool address no client holds.  After SIGTERM the
daemon exits cleanly and nothing listens on the port any more.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from crypto.keys import encode_key
from vpn.config import load_config
from vpn.metrics import SNAPSHOT_MIN_INTERVAL
from vpn.testlab.commands import run_pyvpn
from vpn.testlab.netns import Netns, veth
from vpn.testlab.pyvpn import Fleet, Pyvpn, unique_ifname
from vpn.testlab.traffic import wait_ping

pytestmark = pytest.mark.root

SERVER_PORT, CLIENT_PORT = 9586, 9587
SERVER4 = "100.64.8.1"
PINGS = 25

_SCRAPE = ("import sys, urllib.request; "
           "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(ns: Netns, port: int) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    text = ns.run([sys.executable, "-c", _SCRAPE, f"http://127.0.0.1:{port}/metrics"], timeout=15).stdout
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def one(samples: Samples, metric: str, /, **labels: str) -> float:
    found = [v for (n, ls), v in samples.items() if n == metric and labels.items() <= dict(ls).items()]
    assert len(found) == 1, (metric, labels, sorted(k for k in samples if k[0] == metric))
    return found[0]


def _ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def test_metrics_follow_traffic(netns_factory) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("prometheus_client")
    srv, cli = netns_factory("msrv"), netns_factory("mcli")
    veth(srv, "eth0", cli, "eth0")
    srv.run("ip addr add 198.18.3.1/24 dev eth0")
    cli.run("ip addr add 198.18.3.2/24 dev eth0")
    with Fleet() as fleet:
        ifname = unique_ifname("pvs")
        conf = fleet.workdir / f"{ifname}.conf"
        _ok(run_pyvpn("server", "init", "--config", str(conf), "--pool4", "100.64.8.0/24", "--pool6", "none",
                      "--endpoint", "198.18.3.1"))
        cli_if = unique_ifname("pvc")
        cli_conf = fleet.workdir / f"{cli_if}.conf"
        _ok(run_pyvpn("server", "add-client", "alice", "--config", str(conf), "--out", str(cli_conf)))
        text = conf.read_text().replace("[Interface]\n", f"[Interface]\n#pyvpn Metrics = 127.0.0.1:{SERVER_PORT}\n")
        server = Pyvpn(srv, "server", text, ifname=ifname, workdir=fleet.workdir)
        client = Pyvpn(cli, "client", cli_conf.read_text(), ifname=cli_if, workdir=fleet.workdir,
                          args=("--metrics", f"127.0.0.1:{CLIENT_PORT}"))
        fleet.daemons += [server, client]
        server.start()
        client.start()
        assert wait_ping(cli, SERVER4, 10) is not None, fleet.logs()

        alice = encode_key(load_config(conf).peers[0].public_key)
        labels = {"interface": ifname, "public_key": alice, "name": "alice"}
        before = scrape(srv, SERVER_PORT)
        cli.run(["ping", "-n", "-q", "-c", str(PINGS), "-i", "0.02", "-s", "200", SERVER4], timeout=30)
        srv.run(["ping", "-n", "-q", "-c", "2", "-i", "0.05", "-W", "0.2", "100.64.8.99"], check=False)
        time.sleep(SNAPSHOT_MIN_INTERVAL + 0.1)  # scrapes closer together share one snapshot
        after = scrape(srv, SERVER_PORT)

        for name in ("pyvpn_peer_receive_packets_total", "pyvpn_peer_transmit_packets_total"):
            assert one(after, name, **labels) - one(before, name, **labels) >= PINGS
        for name in ("pyvpn_peer_receive_bytes_total", "pyvpn_peer_transmit_bytes_total"):
            assert one(after, name, **labels) - one(before, name, **labels) >= PINGS * 228  # IPv4 + ICMP + 200
        assert one(after, "pyvpn_peer_handshakes_total", **labels) >= 1
        assert abs(one(after, "pyvpn_peer_latest_handshake_seconds", **labels) - time.time()) < 120
        assert one(after, "pyvpn_drops_total", interface=ifname, reason="no_route") >= 2
        assert one(after, "pyvpn_peers", interface=ifname) == 1
        assert one(after, "pyvpn_info", interface=ifname, listen_port="51820") == 1
        assert one(after, "process_cpu_seconds_total") > 0

        mine = scrape(cli, CLIENT_PORT)  # the command-line flag works too; the server peer has no name
        assert one(mine, "pyvpn_peer_transmit_packets_total", interface=cli_if, name="") >= PINGS

        assert server.terminate() == 0, server.log_tail()
        port_open = srv.run(["ss", "-Hltn", f"sport = :{SERVER_PORT}"]).stdout.strip()
        assert port_open == ""
        assert "Traceback" not in server.log() and "Traceback" not in Path(client.logfile).read_text()
