"""Deployment shapes: the tunnel inside a "container" namespace, and a daemon that dropped root.

1. Container: ``srv`` and ``host`` are joined by a veth; ``ctr`` holds only ``lo``.  The client
   runs in ``host`` with ``#pyvpn Namespace = ctr`` (the ``--netns`` flag feeds the same
   setting): its tun is moved into ``ctr`` while its UDP socket stays in ``host``.  ``ctr`` then
   has exactly ``lo`` and the tunnel, no UDP socket, and reaches the server (and is reached
   back) by ping; when the daemon stops the tunnel is gone from ``ctr``.
2. Privileges: the server runs with ``--user nobody``.  After start-up its uid, gid and groups
   are nobody's and it has no capabilities; a client still connects, traffic flows, ``pyvpn
   show`` answers, and ``add-client`` still reaches the running server through the control socket.
"""

from __future__ import annotations

import json
import pwd
import subprocess
from pathlib import Path

import pytest

from vpn.testlab.commands import run_pyvpn
from vpn.testlab.configs import PeerSpec, conf_text
from vpn.testlab.keys import Keys
from vpn.testlab.netns import Netns, veth, wait_for
from vpn.testlab.pyvpn import Fleet, Pyvpn, unique_ifname
from vpn.testlab.traffic import ping, ping_ok, wait_ping

pytestmark = pytest.mark.root


def _ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def _links(ns: Netns) -> list[str]:
    out = ns.run(["ip", "-o", "link", "show"]).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def _enroll(fleet: Fleet, pool4: str, endpoint: str) -> tuple[str, str]:
    """A server file and one client ("alice") file; their interface names."""
    ifname, cli_if = unique_ifname("pvs"), unique_ifname("pvc")
    conf = fleet.workdir / f"{ifname}.conf"
    _ok(run_pyvpn("server", "init", "--config", str(conf), "--pool4", pool4, "--pool6", "none",
                  "--endpoint", endpoint))
    _ok(run_pyvpn("server", "add-client", "alice", "--config", str(conf), "--out",
                  str(fleet.workdir / f"{cli_if}.conf")))
    return ifname, cli_if


def test_tunnel_in_a_container_namespace(netns_factory) -> None:  # type: ignore[no-untyped-def]
    srv, host, ctr = netns_factory("csrv"), netns_factory("chost"), netns_factory("cctr")
    veth(srv, "eth0", host, "eth0")
    srv.run("ip addr add 198.18.4.1/24 dev eth0")
    host.run("ip addr add 198.18.4.2/24 dev eth0")
    with Fleet() as fleet:
        ifname, cli_if = _enroll(fleet, "100.64.9.0/24", "198.18.4.1")
        server = Pyvpn(srv, "server", (fleet.workdir / f"{ifname}.conf").read_text(), ifname=ifname,
                       workdir=fleet.workdir)
        text = (fleet.workdir / f"{cli_if}.conf").read_text().replace(
            "[Interface]\n", f"[Interface]\n#pyvpn Namespace = {ctr.name}\n")
        client = Pyvpn(host, "client", text, ifname=cli_if, workdir=fleet.workdir)
        fleet.daemons += [server, client]
        server.start()
        client.start()

        assert _links(ctr) == sorted(["lo", cli_if])
        assert cli_if not in _links(host)
        assert wait_ping(ctr, "100.64.9.1", 10) is not None, fleet.logs()
        assert ping_ok(srv, "100.64.9.2")  # and back into the container
        port = client.query()["listen_port"]  # type: ignore[index]
        assert host.run(["ss", "-Huan", f"sport = :{port}"]).stdout.strip()  # the socket stayed in host
        assert ctr.run(["ss", "-Huan"]).stdout.strip() == ""
        assert ping(host, "100.64.9.1", count=1, wait=0.5).returncode != 0  # host itself has no tunnel

        assert client.terminate() == 0, client.log_tail()
        assert _links(ctr) == ["lo"]


def test_server_runs_as_nobody_after_start_up(netns_factory) -> None:  # type: ignore[no-untyped-def]
    nobody = pwd.getpwnam("nobody")
    srv, cli = netns_factory("psrv"), netns_factory("pcli")
    veth(srv, "eth0", cli, "eth0")
    srv.run("ip addr add 198.18.5.1/24 dev eth0")
    cli.run("ip addr add 198.18.5.2/24 dev eth0")
    with Fleet() as fleet:
        ifname, cli_if = _enroll(fleet, "100.64.10.0/24", "198.18.5.1")
        conf = fleet.workdir / f"{ifname}.conf"
        server = Pyvpn(srv, "server", conf.read_text(), ifname=ifname, workdir=fleet.workdir,
                          args=("--user", "nobody"))
        client = Pyvpn(cli, "client", (fleet.workdir / f"{cli_if}.conf").read_text(), ifname=cli_if,
                       workdir=fleet.workdir)
        fleet.daemons += [server, client]
        server.start()
        assert wait_for(lambda: "dropped privileges to user nobody" in server.log(), 10), server.log_tail()

        status = dict(line.split(":", 1) for line in
                      Path(f"/proc/{server.pid}/status").read_text().splitlines() if ":" in line)
        assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"].strip() == "1"

        client.start()
        assert wait_ping(cli, "100.64.10.1", 10) is not None, fleet.logs()
        r = cli.run(["ping", "-n", "-q", "-c", "30", "-i", "0.02", "100.64.10.1"], check=False, timeout=30)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
        snap = json.loads(_ok(run_pyvpn("show", ifname, "--json")).stdout)
        assert snap["peers"][0]["rx_packets"] >= 30

        r = _ok(run_pyvpn("server", "add-client", "bob", "--config", str(conf), "--out",
                          str(fleet.workdir / "bob.conf")))
        assert f"running server {ifname} updated" in r.stderr
        assert len(server.query()["peers"]) == 2  # type: ignore[index]
        assert ping_ok(cli, "100.64.10.1")
        log_before = server.log()
        assert "Traceback" not in log_before and "\nERROR " not in "\n" + log_before, log_before  # vpn/logs.py
        srv.run(["ip", "link", "del", ifname])  # as wg-quick down does: noticed without privileges too
        assert server.proc is not None and server.proc.wait(10) == 0, server.log_tail()
        assert "shutting down" in server.log()  # (the watch, or the tun read failing, noticed it)
        assert "Traceback" not in server.log(), server.log_tail()


def _rules_and_tables(ns: Netns, ifname: str) -> tuple[str, str]:
    rules = ns.run(["ip", "-4", "rule", "show"]).stdout
    tables = ns.run(["nft", "list", "tables"]).stdout
    return ("51820" if "51820" in rules else ""), ("pyvpn-" + ifname if f"pyvpn-{ifname}" in tables else "")


@pytest.mark.parametrize("ending", ["sigterm", "sigkill"])
def test_cleanup_after_dropping_privileges(netns_factory, ending: str) -> None:  # type: ignore[no-untyped-def]
    """Issue 13: after ``--user nobody`` the exit still runs PreDown and PostDown as root (they write into a
    root-only directory here), and removes wg-quick's /0 policy rules and nft table: a root helper kept for
    it does that (and says so in the log), also when the daemon itself is killed."""
    ns, peer = netns_factory("pdrop"), netns_factory("ppeer")
    veth(ns, "eth0", peer, "eth0")  # the endpoint's underlay (nothing answers there)
    ns.run("ip addr add 198.18.6.1/24 dev eth0")
    with Fleet() as fleet:  # its workdir is root's, mode 0700: nobody cannot write there
        marks = fleet.workdir / "marks"
        marks.mkdir(mode=0o700)
        ifname = unique_ifname("pvc")
        text = conf_text(ifname=ifname, private_key=Keys.new().private, addresses=["100.64.11.2/32"],
                         peers=[PeerSpec(Keys.new().public, ["0.0.0.0/0"], endpoint="198.18.6.2:51820")],
                         extra=[f"PreDown = touch {marks}/pre-%i", f"PostDown = touch {marks}/post-%i"])
        client = Pyvpn(ns, "client", text, ifname=ifname, workdir=fleet.workdir, args=("--user", "nobody"))
        fleet.daemons.append(client)
        client.start()
        assert wait_for(lambda: "dropped privileges to user nobody" in client.log(), 10), client.log_tail()
        assert _rules_and_tables(ns, ifname) == ("51820", f"pyvpn-{ifname}")
        if ending == "sigterm":
            assert client.terminate() == 0, client.log_tail()
            assert (marks / f"pre-{ifname}").exists(), client.log_tail()
        else:
            client.kill()  # the daemon dies; the helper notices and cleans up (no PreDown: it is too late)
        assert wait_for(lambda: (marks / f"post-{ifname}").exists(), 10), client.log_tail()
        assert wait_for(lambda: _rules_and_tables(ns, ifname) == ("", ""), 10), client.log_tail()
        assert wait_for(lambda: not ns.pids(), 10), ns.pids()  # the helper is gone too
        assert "Traceback" not in client.log(), client.log_tail()
        assert "root helper process" in client.log(), client.log_tail()  # the log says what stays root
