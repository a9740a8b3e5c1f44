"""``pyvpn server`` / ``pyvpn client`` under faults: roaming, crashes and restarts, bad configs, SIGHUP
reloads, state left by a killed run, a server whose address changes behind its name.

Topology as in test_l3_pyvpn: ``srv`` and ``cli`` joined by a veth (198.18.0.1/.2), tunnel
198.19.0.0/24.  Every wait is bounded; the restart bounds follow WireGuard's timers (a responder
that lost its session is noticed by the initiator after KEEPALIVE + REKEY_TIMEOUT ≈ 15 s).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from vpn.control import socket_path
from vpn.testlab.commands import pyvpn_argv
from vpn.testlab.configs import PeerSpec, conf_text, endpoint
from vpn.testlab.files import write_private
from vpn.testlab.keys import Keys
from vpn.testlab.netns import Netns, namespaces, veth, wait_for
from vpn.testlab.pyvpn import Fleet, Pyvpn, unique_ifname
from vpn.testlab.traffic import Transfer, ping_ok, wait_ping
from vpn.uapi_server import uapi_path
from vpn.util import socket_is_live

pytestmark = pytest.mark.root

PORT = 51820
SRV, CLI = "198.19.0.1", "198.19.0.2"


@dataclass
class Pair:
    srv_ns: Netns
    cli_ns: Netns
    server: Pyvpn
    client: Pyvpn
    fleet: Fleet

    @property
    def server_key(self) -> str:
        assert self.server.keys is not None
        return self.server.keys.public

    @property
    def client_key(self) -> str:
        assert self.client.keys is not None
        return self.client.keys.public


@contextmanager
def pair(*, keepalive: int = 0, client_allowed: tuple[str, ...] = ("198.19.0.0/24",)) -> Iterator[Pair]:
    with namespaces("srv", "cli") as (srv_ns, cli_ns), Fleet() as fleet:
        veth(srv_ns, "eth0", cli_ns, "eth0")
        srv_ns.run("ip addr add 198.18.0.1/24 dev eth0")
        cli_ns.run("ip addr add 198.18.0.2/24 dev eth0")
        sk, ck = Keys.new(), Keys.new()
        server = fleet.add(srv_ns, "server", keys=sk, listen_port=PORT, addresses=[f"{SRV}/24"],
                           peers=[PeerSpec(ck.public, [f"{CLI}/32"])], start=False)
        to_server = PeerSpec(sk.public, client_allowed, endpoint=endpoint("198.18.0.1", PORT),
                             persistent_keepalive=keepalive)
        client = fleet.add(cli_ns, "client", keys=ck, addresses=[f"{CLI}/24"], peers=[to_server], start=False)
        server.start()  # first: a client's first initiation to a closed port would cost a 5 s retry
        client.start()
        try:
            yield Pair(srv_ns, cli_ns, server, client, fleet)
        except BaseException:
            print(fleet.logs())
            raise


# -- 4. roaming -------------------------------------------------------------------------------------------
def test_client_roams_mid_transfer() -> None:
    with pair() as p:
        assert ping_ok(p.cli_ns, SRV)
        speer = p.server.peer(p.client_key)
        assert speer is not None and speer["endpoint"].startswith("198.18.0.2:")
        # Data both ways while the client moves: the server must follow the client's new address
        # (the client→server bytes come from it; the server→client bytes must go to it).
        p.cli_ns.run("sysctl -qw net.ipv4.conf.eth0.promote_secondaries=1")
        up = Transfer(p.cli_ns, p.srv_ns, SRV, 3 << 20, port=5001, duration=2.5).start()
        down = Transfer(p.srv_ns, p.cli_ns, CLI, 3 << 20, port=5002, duration=2.5).start()
        time.sleep(0.8)
        assert up.progress() and down.progress(), "the transfers ended before the move"
        p.cli_ns.run("ip addr add 198.18.0.3/24 dev eth0")
        p.cli_ns.run("ip addr del 198.18.0.2/24 dev eth0")
        assert "198.18.0.2" not in p.cli_ns.run("ip -4 addr show dev eth0").stdout
        for t in (up, down):
            r = t.wait(timeout=40)
            assert r.ok and r.received_bytes == 3 << 20, r
        speer = p.server.show_json()["peers"][0]
        assert speer["endpoint"].startswith("198.18.0.3:"), speer
        assert "endpoint is now 198.18.0.3" in p.server.log()
        assert ping_ok(p.srv_ns, CLI)


# -- 5. restarts ------------------------------------------------------------------------------------------
def test_restart_client_mid_transfer_then_server() -> None:
    with pair() as p:
        assert ping_ok(p.cli_ns, SRV)
        hs1 = p.server.wait_handshake(p.client_key)["latest_handshake"]

        # kill -9 the client while it sends; start it again; the same TCP connection finishes.
        t = Transfer(p.cli_ns, p.srv_ns, SRV, 3 << 20, port=5003, duration=2.0, timeout=40).start()
        time.sleep(0.7)
        assert t.progress()
        p.client.kill()
        assert p.cli_ns.run(["ip", "link", "show", p.client.ifname], check=False).returncode != 0
        time.sleep(0.3)
        p.client.start()  # a stale control/UAPI socket file from the crash must not stop it
        r = t.wait(timeout=45)
        assert r.ok and r.received_bytes == 3 << 20, r
        hs2 = p.server.wait_handshake(p.client_key, after=hs1, timeout=5)["latest_handshake"]
        assert hs2 > hs1

        # kill -9 the server (the responder).  The client still holds the old session and notices
        # only by its timers (no reply for KEEPALIVE + REKEY_TIMEOUT), then handshakes again.
        p.server.kill()
        time.sleep(0.3)
        p.server.start()
        took = wait_ping(p.cli_ns, SRV, timeout=30.0)
        assert took is not None, "no traffic within 30 s of the server's restart"
        assert p.server.wait_handshake(p.client_key, timeout=5)["latest_handshake"] > 0
        assert ping_ok(p.srv_ns, CLI)
        assert "Traceback" not in p.server.log() + p.client.log()


# -- 6. bad configs, permissions, secrets in logs -------------------------------------------------------
def _bad_config_cases(keys: Keys, peer: Keys, ifname: str) -> list[tuple[str, str, str]]:
    """(case, config text, the ``Key`` the message must name)."""
    base = conf_text(ifname=ifname, private_key=keys.private, addresses=["198.19.0.1/24"], listen_port=PORT,
                     peers=[PeerSpec(peer.public, ["198.19.0.2/32"])])
    return [  # the parser's every error is unit-tested (tests/unit/test_config.py); here, the CLI's edge
        ("short private key", base.replace(keys.private, keys.private[:40]), "PrivateKey"),
        ("bad public key", base.replace(peer.public, peer.public[:20]), "PublicKey"),
        ("bad CIDR", base.replace("198.19.0.2/32", "198.19.0.300/32"), "AllowedIPs"),
        ("unknown key", base.replace("[Peer]\n", "[Peer]\nKeepAliveEvery = 5\n"), "KeepAliveEvery"),
        ("private key pasted without 'PrivateKey ='",
         base.replace(f"PrivateKey = {keys.private}", f"PrivateKey {keys.private}"), ""),
    ]


def test_bad_configs_fail_cleanly_and_never_print_keys(tmp_path: Path) -> None:
    keys, peer = Keys.new(), Keys.new()
    with namespaces("bad") as (ns,):
        procs: list[tuple[str, str, Path, subprocess.Popen[str]]] = []
        for i, (case, text, key) in enumerate(_bad_config_cases(keys, peer, unique_ifname("pvb"))):
            path = write_private(tmp_path / f"bad{i}.conf", text)
            procs.append((case, key, path, subprocess.Popen(ns.argv([*pyvpn_argv(), "server", str(path)]),
                                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                           text=True)))
        missing = tmp_path / "missing.conf"
        procs.append(("missing file", "", missing,
                      subprocess.Popen(ns.argv([*pyvpn_argv(), "client", str(missing)]),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        for case, key, path, proc in procs:
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                pytest.fail(f"{case}: pyvpn did not exit")
            assert proc.returncode not in (0, None), f"{case}: exit {proc.returncode}"
            assert "Traceback" not in err + out, f"{case}:\n{err}"
            if key:
                assert re.search(rf"{re.escape(str(path))}:\d+: {key}: ", err), f"{case}: {err!r}"
            else:
                assert str(path) in err, f"{case}: {err!r}"
            raw_hex = base64.b64decode(keys.private).hex()
            for secret in (keys.private, keys.private[:40], keys.private[:20], raw_hex):
                assert secret not in err + out, f"{case}: the private key is in the output: {err!r}"
            # Nothing was left behind.
            assert "pvb" not in ns.run("ip -o link").stdout


def test_world_readable_config_warns_and_debug_logs_hold_no_keys() -> None:
    with pair(keepalive=1) as p:
        assert p.server.keys is not None and p.client.keys is not None
        p.client.wait_handshake(p.server_key, timeout=10)
        assert ping_ok(p.cli_ns, SRV)
        # Restart the client from a file that others can read: it runs, with a warning.
        assert p.client.terminate() == 0
        os.chmod(p.client.config, 0o644)
        assert stat.S_IMODE(os.stat(p.client.config).st_mode) == 0o644
        p.client.start()
        assert wait_for(lambda: "accessible by group or others" in p.client.log(), 5.0)
        assert ping_ok(p.cli_ns, SRV)
        # The same interface name started in another namespace: refused (the UAPI and control sockets
        # are global), and the running daemon keeps its sockets.
        dup = p.srv_ns.run([*pyvpn_argv(), "client", str(p.client.config)], check=False, timeout=30)
        assert dup.returncode != 0 and "in use" in dup.stderr and "Traceback" not in dup.stderr, dup.stderr
        assert p.client.query() is not None and ping_ok(p.cli_ns, SRV)
        assert p.client.ifname not in p.srv_ns.run("ip -o link").stdout
        # `pyvpn show` (table and JSON) and the debug logs never carry a private key.
        for d in (p.server, p.client):
            texts = [d.log(), d.show_table(), str(d.show_json())]
            for k in (p.server.keys, p.client.keys):
                raw = base64.b64decode(k.private)
                for text in texts:
                    assert k.private not in text and raw.hex() not in text and k.private[:20] not in text


# -- 7. SIGHUP reloads the peers; a run killed without cleanup leaves nothing that stops the next ------------
def _ping_summary(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_sighup_reloads_peers_without_disturbing_unchanged_ones(tmp_path: Path) -> None:
    """SIGHUP with an edited file adds peer C and removes peer B while A's ping (20 per second) loses
    nothing; a broken file is refused with one line and changes nothing; SIGTERM afterwards still
    cleans up (PostDown runs, the interface and both sockets go)."""
    marker = tmp_path / "postdown-ran"
    with namespaces("srv", "a", "b", "c") as (srv_ns, *cli_ns), Fleet() as fleet:
        for i, ns in enumerate(cli_ns):
            veth(srv_ns, f"eth{i}", ns, "eth0")
            srv_ns.run(f"ip addr add 198.18.{i}.1/24 dev eth{i}")
            ns.run(f"ip addr add 198.18.{i}.2/24 dev eth0")
        sk = Keys.new()
        ck = [Keys.new() for _ in cli_ns]
        tun = [f"198.19.0.{11 + i}" for i in range(len(cli_ns))]
        spec = [PeerSpec(k.public, [f"{tun[i]}/32"], name=f"c{i}") for i, k in enumerate(ck)]
        extra = [f"PostDown = touch {marker}"]
        server = fleet.add(srv_ns, "server", keys=sk, listen_port=PORT, addresses=[f"{SRV}/24"],
                           peers=spec[:2], extra=extra)
        for i, ns in enumerate(cli_ns):
            fleet.add(ns, "client", keys=ck[i], addresses=[f"{tun[i]}/24"],
                      peers=[PeerSpec(sk.public, ["198.19.0.0/24"], endpoint=endpoint(f"198.18.{i}.1", PORT),
                                      persistent_keepalive=1)])
        a_ns, b_ns, c_ns = cli_ns
        try:
            assert ping_ok(a_ns, SRV) and ping_ok(b_ns, SRV)
            assert not ping_ok(c_ns, SRV, attempts=1, count=1, wait=1.0)  # not a peer yet
            hs_a = server.wait_handshake(ck[0].public)["latest_handshake"]
            pid = server.pid

            # A pings all the way through the reload; B goes, C comes.
            pinger = a_ns.popen(["ping", "-n", "-q", "-c", "100", "-i", "0.05", "-W", "2", SRV])
            time.sleep(1.0)
            new_text = conf_text(ifname=server.ifname, private_key=sk.private, addresses=[f"{SRV}/24"],
                                 listen_port=PORT, peers=[spec[0], spec[2]], extra=extra)
            line = server.reload(new_text)
            assert "1 peer(s) added, 1 removed, 0 changed, 1 unchanged" in line, line
            out = pinger.communicate(timeout=30)[0].decode()
            sent, got = _ping_summary(out)
            assert sent == 100 and got == sent, f"the unchanged peer lost pings during the reload:\n{out}"
            assert server.running() and server.pid == pid
            assert wait_for(lambda: ping_ok(c_ns, SRV, attempts=1), 15.0), "the added peer gets no session"
            assert not ping_ok(b_ns, SRV, attempts=2, count=1, wait=1.0), "the removed peer still gets through"
            keys = {p["public_key"] for p in server.show_json()["peers"]}
            assert keys == {ck[0].public, ck[2].public}, keys
            assert server.peer(ck[0].public)["latest_handshake"] == hs_a  # type: ignore[index]  # same session
            assert "c2" in server.show_table()

            # A file that does not parse: one clear line, the running peers stay.
            bad = new_text.replace(f"{tun[2]}/32", "198.19.0.300/32")
            line = server.reload(bad)
            assert re.search(rf"reload failed, keeping the running configuration: {re.escape(str(server.config))}"
                             r":\d+: AllowedIPs: ", line), line
            assert "Traceback" not in server.log()
            assert {p["public_key"] for p in server.show_json()["peers"]} == keys
            assert ping_ok(a_ns, SRV) and ping_ok(c_ns, SRV)

            # SIGTERM still cleans everything up.
            assert server.terminate() == 0
            assert marker.exists(), "PostDown did not run"
            assert server.ifname not in srv_ns.run("ip -o link").stdout
            assert not socket_path(server.ifname).exists() and not uapi_path(server.ifname).exists()
        except BaseException:
            print(fleet.logs())
            raise


def _policy_rules(ns: Netns) -> list[str]:
    return [ln for fam in ("-4", "-6") for ln in ns.run(["ip", fam, "rule", "show"]).stdout.splitlines()]


def test_restart_after_kill9_of_a_default_route_client_clears_stale_state() -> None:
    """kill -9 of a client with AllowedIPs = 0.0.0.0/0, ::/0 leaves its policy rules, nft tables and
    socket files; the next start removes them (and says so), adds its own without a 'File exists'
    warning, so there is exactly one set of rules, and works; SIGTERM then removes all of it."""
    with pair(client_allowed=("0.0.0.0/0", "::/0")) as p:
        cli_ns, client = p.cli_ns, p.client
        assert ping_ok(cli_ns, SRV)
        running = _policy_rules(cli_ns)
        ours = [r for r in running if "lookup 51820" in r or "suppress_prefixlength 0" in r]
        assert len(ours) == 4, running  # two rules per family
        tables = cli_ns.run("nft list tables").stdout
        assert tables.count(f"pyvpn-{client.ifname}") == 2, tables

        client.kill()
        assert _policy_rules(cli_ns) == running  # left behind by the crash
        assert socket_path(client.ifname).exists() and uapi_path(client.ifname).exists()
        assert not socket_is_live(socket_path(client.ifname))

        client.start()
        second = client.log().split("--- start 2", 1)[1]
        assert "File exists" not in second, second
        for what in ("stale socket", "stale nft table", "stale policy rule"):
            assert what in second, f"{what!r} not logged:\n{second}"
        assert sorted(_policy_rules(cli_ns)) == sorted(running)  # exactly one set of rules
        assert cli_ns.run("nft list tables").stdout.count(f"pyvpn-{client.ifname}") == 2
        assert socket_is_live(socket_path(client.ifname)) and socket_is_live(uapi_path(client.ifname))
        assert ping_ok(cli_ns, SRV)

        assert client.terminate() == 0
        assert sorted(_policy_rules(cli_ns)) == sorted(r for r in running if r not in ours)
        assert "pyvpn-" not in cli_ns.run("nft list tables").stdout
        assert p.server.running()


# -- 8. a server whose address changes: its name is looked up again ----------------------------------------
@contextmanager
def netns_hosts(ns: Netns, text: str) -> Iterator[Path]:
    """``/etc/netns/NS/hosts``: ``ip netns exec NS`` bind-mounts it over /etc/hosts for what it starts, so
    the machine's own /etc/hosts is never touched.  Edit the yielded file in place (same inode)."""
    d = Path("/etc/netns") / ns.name
    d.mkdir(parents=True, exist_ok=False)
    try:
        hosts = d / "hosts"
        hosts.write_text(text)
        yield hosts
    finally:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
        with contextlib.suppress(OSError):
            d.parent.rmdir()  # only if nothing else is in /etc/netns


@pytest.mark.slow
def test_client_follows_a_server_whose_name_resolves_elsewhere() -> None:
    """A client whose Endpoint is a host name: the server comes back at another address and the name's
    entry in the client's /etc/hosts follows; the client looks the name up again once its handshakes
    fail and reaches the server at the new address, without a restart."""
    name = f"pyvpn-test-{secrets.token_hex(4)}.invalid"
    with namespaces("srv", "cli") as (srv_ns, cli_ns), Fleet() as fleet, \
            netns_hosts(cli_ns, f"198.18.0.1 {name}\n") as hosts:
        veth(srv_ns, "eth0", cli_ns, "eth0")
        srv_ns.run("ip addr add 198.18.0.1/24 dev eth0")
        cli_ns.run("ip addr add 198.18.0.2/24 dev eth0")
        assert name in cli_ns.run(["getent", "hosts", name]).stdout
        sk, ck = Keys.new(), Keys.new()
        server = fleet.add(srv_ns, "server", keys=sk, listen_port=PORT, addresses=[f"{SRV}/24"],
                           peers=[PeerSpec(ck.public, [f"{CLI}/32"])])
        client = fleet.add(cli_ns, "client", keys=ck, addresses=[f"{CLI}/24"],
                           peers=[PeerSpec(sk.public, ["198.19.0.0/24"], endpoint=f"{name}:{PORT}")])
        try:
            assert ping_ok(cli_ns, SRV)
            assert client.peer(sk.public)["endpoint"] == f"198.18.0.1:{PORT}"  # type: ignore[index]
            pid = client.pid
            # The server moves to .5 (a new run there, which does not know where the client is, so only
            # the client can start the next handshake) and the name follows; the client still has its
            # session to .1.
            assert server.terminate() == 0
            srv_ns.run("ip addr del 198.18.0.1/24 dev eth0")
            srv_ns.run("ip addr add 198.18.0.5/24 dev eth0")
            server.start()
            with open(hosts, "r+") as f:  # in place: the bind mount holds this inode
                f.truncate(0)
                f.write(f"198.18.0.5 {name}\n")
            assert "198.18.0.5" in cli_ns.run(["getent", "hosts", name]).stdout
            took = wait_ping(cli_ns, SRV, timeout=70.0)
            assert took is not None, "the client did not follow the server to its new address"
            assert client.running() and client.pid == pid and client.starts == 1
            assert client.peer(sk.public)["endpoint"] == f"198.18.0.5:{PORT}"  # type: ignore[index]
            assert f"{name} now resolves to 198.18.0.5:{PORT}" in client.log()
            assert "Traceback" not in client.log()
        except BaseException:
            print(fleet.logs())
            raise
