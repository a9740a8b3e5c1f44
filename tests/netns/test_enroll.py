"""Enrolling a client into a running server, while an existing client's traffic keeps flowing.

Topology: ``srv`` has one veth to ``c1`` (198.18.1.0/24) and one to ``c2`` (198.18.2.0/24).

1. ``pyvpn server init`` writes the server file; ``add-client alice`` (server not running yet)
   writes alice's file; ``pyvpn server FILE`` runs in ``srv``, ``pyvpn client`` with alice's file
   in ``c1``.
2. alice pings the server without pause; meanwhile ``add-client bob --endpoint 198.18.2.1 --png``
   adds bob to the file and to the running server through the control socket.
3. bob's file runs on wireguard-go in ``c2``: ``wg-quick strip`` then ``wg setconf`` (and ``ip``
   for the addresses).  bob reaches the server and, through the hub's kernel (``ip_forward=1``; no
   ``Forward = on``, as with WireGuard), alice.
4. alice's ping lost nothing and her session was not re-keyed; ``list-clients`` shows both with
   handshakes; the PNG decodes to bob's file.  ``remove-client bob`` cuts him off at once.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from crypto.keys import encode_key
from vpn.config import load_config
from vpn.testlab.commands import run_pyvpn
from vpn.testlab.netns import Netns, veth, wait_for
from vpn.testlab.pyvpn import Fleet, Pyvpn, unique_ifname
from vpn.testlab.traffic import ping, ping_ok, wait_ping
from vpn.testlab.wggo import WireguardGo

pytestmark = [pytest.mark.root, pytest.mark.interop]

POOL4, POOL6 = "100.64.7.0/24", "fd00:64:7::/64"
SERVER4, SERVER6 = "100.64.7.1", "fd00:64:7::1"


def _underlay(srv: Netns, c1: Netns, c2: Netns) -> None:
    veth(srv, "eth1", c1, "eth0")
    veth(srv, "eth2", c2, "eth0")
    srv.run("ip addr add 198.18.1.1/24 dev eth1")
    srv.run("ip addr add 198.18.2.1/24 dev eth2")
    c1.run("ip addr add 198.18.1.2/24 dev eth0")
    c2.run("ip addr add 198.18.2.2/24 dev eth0")


def _ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def _server_with_alice(fleet: Fleet, srv: Netns, c1: Netns) -> tuple[Path, Pyvpn, str]:
    """``server init``, ``add-client alice`` (not running yet), then the server in ``srv`` and alice's
    client in ``c1``, pinging: ``(server config, server, its interface name)``."""
    ifname = unique_ifname("pvs")
    conf = fleet.workdir / f"{ifname}.conf"
    _ok(run_pyvpn("server", "init", "--config", str(conf), "--port", "51820", "--pool4", POOL4,
                  "--pool6", POOL6, "--endpoint", "198.18.1.1"))
    alice_if = unique_ifname("pvc")
    alice_conf = fleet.workdir / f"{alice_if}.conf"
    r = _ok(run_pyvpn("server", "add-client", "alice", "--config", str(conf), "--out", str(alice_conf)))
    assert "the server is not running" in r.stderr
    server = Pyvpn(srv, "server", conf.read_text(), ifname=ifname, workdir=fleet.workdir)
    fleet.daemons.append(server)
    server.start()
    alice = Pyvpn(c1, "client", alice_conf.read_text(), ifname=alice_if, workdir=fleet.workdir)
    fleet.daemons.append(alice)
    alice.start()
    assert wait_ping(c1, SERVER4, 10) is not None, fleet.logs()
    return conf, server, ifname


def test_enroll_into_running_server_without_disturbing_others(netns_factory) -> None:  # type: ignore[no-untyped-def]
    srv, c1, c2 = netns_factory("esrv"), netns_factory("ec1"), netns_factory("ec2")
    _underlay(srv, c1, c2)
    with Fleet() as fleet:
        conf, server, ifname = _server_with_alice(fleet, srv, c1)
        alice_pub = encode_key(load_config(conf).peers[0].public_key)
        handshakes_before = server.peer(alice_pub)["handshakes"]  # type: ignore[index]

        # alice's steady traffic across the whole enrollment (8 s; each echo must come back)
        pinger = c1.popen(["ping", "-n", "-q", "-c", "80", "-i", "0.1", "-W", "2", SERVER4],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        bob_conf = fleet.workdir / "bob.conf"
        png = fleet.workdir / "bob.png"
        r = _ok(run_pyvpn("server", "add-client", "bob", "--config", str(conf), "--out", str(bob_conf),
                          "--endpoint", "198.18.2.1", "--png", str(png)))
        assert f"running server {ifname} updated" in r.stderr
        bob_cfg = load_config(bob_conf)
        bob_pub = encode_key(load_config(conf).peers[1].public_key)
        assert server.peer(bob_pub) is not None  # in the running server, no restart
        assert server.running() and server.starts == 1

        # bob's file on wireguard-go: the wg keys through `wg setconf`, the rest (Address) through ip
        stripped = fleet.workdir / "bob-wg.conf"
        stripped.write_text(_ok(subprocess.run(["wg-quick", "strip", str(bob_conf)], check=False, capture_output=True,
                                               text=True, timeout=10)).stdout)
        wg = WireguardGo(c2, private_key=encode_key(bob_cfg.interface.private_key),
                         address=[str(a) for a in bob_cfg.interface.addresses])
        try:
            c2.run(["wg", "setconf", wg.ifname, str(stripped)])
            for net in bob_cfg.peers[0].allowed_ips:
                c2.run(["ip", "route", "add", str(net), "dev", wg.ifname])
            assert wait_ping(c2, SERVER4, 10) is not None, fleet.logs()
            assert ping_ok(c2, SERVER6)
            assert ping(c2, "100.64.7.2", count=1, wait=1.0).returncode != 0  # ip_forward=0: the hub's kernel says no
            srv.run("sysctl -qw net.ipv4.ip_forward=1")
            assert ping_ok(c2, "100.64.7.2")  # alice, through the hub's kernel
            assert pinger.poll() is None, "alice's ping ended before bob was connected: nothing was overlapped"
            out = pinger.communicate(timeout=30)[0].decode()
            assert pinger.returncode == 0 and "80 received" in out and " 0% packet loss" in out, out
            assert server.peer(alice_pub)["handshakes"] == handshakes_before  # type: ignore[index]

            listing = json.loads(_ok(run_pyvpn("server", "list-clients", "--config", str(conf), "--json")).stdout)
            by_name = {c["name"]: c for c in listing}
            assert set(by_name) == {"alice", "bob"}
            assert by_name["bob"]["addresses"] == ["100.64.7.3/32", "fd00:64:7::3/128"]
            assert by_name["alice"]["latest_handshake"] > 0 and by_name["bob"]["latest_handshake"] > 0
            assert "bob" in _ok(run_pyvpn("server", "list-clients", "--config", str(conf))).stdout

            if shutil.which("zbarimg"):
                decoded = subprocess.run(["zbarimg", "--raw", "-q", "-Sbinary", str(png)], check=False,
                                         capture_output=True,
                                         timeout=30).stdout.decode()
                assert decoded.rstrip("\n") == bob_conf.read_text().rstrip("\n")
            else:
                assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

            r = _ok(run_pyvpn("server", "remove-client", "bob", "--config", str(conf)))
            assert f"running server {ifname} updated" in r.stderr
            assert server.peer(bob_pub) is None
            assert [p.name for p in load_config(conf).peers] == ["alice"]
            assert ping(c2, SERVER4, count=2, wait=1).returncode != 0
            assert ping_ok(c1, SERVER4)
            assert base64.b64decode(alice_pub) == load_config(conf).peers[0].public_key
        finally:
            wg.close()


def _clients(conf: Path) -> dict[str, dict[str, object]]:
    listing = json.loads(_ok(run_pyvpn("server", "list-clients", "--config", str(conf), "--json")).stdout)
    return {c["name"]: c for c in listing}


def test_expiry_disable_enable_on_a_running_server(netns_factory) -> None:  # type: ignore[no-untyped-def]
    """``add-client --expires`` on a running server: the client works, then is refused when the time
    passes (its session dropped, a new handshake refused); ``disable-client`` cuts a client off at once
    and ``enable-client`` takes it back; ``set-client --expires`` revives the expired one; the other
    client is untouched and ``list-clients`` shows each state."""
    srv, c1, c2 = netns_factory("psrv"), netns_factory("pc1"), netns_factory("pc2")
    _underlay(srv, c1, c2)
    with Fleet() as fleet:
        conf, server, ifname = _server_with_alice(fleet, srv, c1)

        # carol, enrolled live with an expiry a few seconds ahead
        carol_if = unique_ifname("pvc")
        carol_conf = fleet.workdir / f"{carol_if}.conf"
        r = _ok(run_pyvpn("server", "add-client", "carol", "--config", str(conf), "--out", str(carol_conf),
                          "--endpoint", "198.18.2.1", "--expires", "20s", "--rate-limit", "100mbit"))
        assert f"running server {ifname} updated" in r.stderr
        assert "#pyvpn Expires = " in conf.read_text() and "#pyvpn RateLimit = 100mbit" in conf.read_text()
        carol = Pyvpn(c2, "client", carol_conf.read_text(), ifname=carol_if, workdir=fleet.workdir)
        fleet.daemons.append(carol)
        carol.start()
        assert wait_ping(c2, SERVER4, 8) is not None, fleet.logs()
        listing = _clients(conf)
        assert listing["carol"]["state"] == "active" and listing["carol"]["expires"].endswith("Z")
        assert listing["carol"]["rate_limit"] == 100_000_000

        # the expiry passes: carol's session is dropped by the server's housekeeping timer
        carol_pub = encode_key(load_config(conf).peers[1].public_key)
        assert wait_for(lambda: (server.peer(carol_pub) or {}).get("policy", {}).get("state") == "expired", 30.0)
        assert ping(c2, SERVER4, count=2, wait=1).returncode != 0
        assert _clients(conf)["carol"]["state"] == "expired"
        # a fresh handshake (carol restarted) is refused
        carol.terminate()
        carol.start()
        assert wait_for(lambda: (server.peer(carol_pub) or {}).get("refused_handshakes", 0) >= 1, 10.0), fleet.logs()
        assert ping(c2, SERVER4, count=2, wait=1).returncode != 0
        assert ping_ok(c1, SERVER4)  # alice is untouched

        # disable alice: cut off at once; the file says so; enable: back without a restart
        alice_pub = encode_key(load_config(conf).peers[0].public_key)
        r = _ok(run_pyvpn("server", "disable-client", "alice", "--config", str(conf)))
        assert f"running server {ifname} updated" in r.stderr
        assert ping(c1, SERVER4, count=2, wait=1).returncode != 0
        assert "#pyvpn Disabled = true" in conf.read_text()
        assert _clients(conf)["alice"]["state"] == "disabled"
        assert server.peer(alice_pub)["policy"]["state"] == "disabled"  # type: ignore[index]
        assert "disabled" in _ok(run_pyvpn("server", "list-clients", "--config", str(conf))).stdout
        _ok(run_pyvpn("server", "enable-client", "alice", "--config", str(conf)))
        assert "Disabled" not in conf.read_text()
        assert wait_ping(c1, SERVER4, 10) is not None, fleet.logs()
        assert _clients(conf)["alice"]["state"] == "active"

        # carol gets another hour: her retries are accepted again
        _ok(run_pyvpn("server", "set-client", "carol", "--config", str(conf), "--expires", "1h"))
        assert _clients(conf)["carol"]["state"] == "active"
        assert wait_ping(c2, SERVER4, 15) is not None, fleet.logs()
        assert server.running() and server.starts == 1
        assert [p.name for p in load_config(conf).peers] == ["alice", "carol"]
