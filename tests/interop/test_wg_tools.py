"""``wg`` (wireguard-tools) against a running ``pyvpn server``, through its UAPI socket.

``/var/run/wireguard/IFACE.sock`` speaks the cross-platform UAPI, so ``wg show``, ``wg showconf``,
``wg set``, ``wg setconf`` and ``wg syncconf`` work on pyvpn as on wireguard-go.  Checked here:
what they report (keys, endpoint, allowed IPs, handshake, bytes), and that what they change takes
effect in pyvpn at once (``pyvpn show --json`` and real traffic): allowed IPs, removing a peer,
adding one while another keeps pinging, whole configurations, the listen port, and a persistent
keepalive that starts a handshake at once.

Topology: a hub namespace running ``pyvpn server`` (198.19.0.1/24, fd00:19::1/64) with one veth per
client namespace (198.18.N.1/24 - 198.18.N.2/24); each client is wireguard-go (198.19.0.(N+1)).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vpn.config import format_peer
from vpn.testlab.configs import WgPeer, wg_conf_text, wg_quick_file
from vpn.testlab.keys import Keys
from vpn.testlab.netns import Netns, namespaces, veth, wait_for
from vpn.testlab.pyvpn import SRV4, SRV6, PyvpnFile, workdir
from vpn.testlab.traffic import parse_ping, ping_ok
from vpn.testlab.wggo import WireguardGo, unique_ifname

pytestmark = [pytest.mark.root, pytest.mark.interop]

PORT = 51820
# Binds UDP port argv[1] on every IPv4 address, says "ok" and holds it for 30 s.
HOLD_PORT = ("import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "s.bind(('0.0.0.0', int(sys.argv[1]))); print('ok', flush=True); time.sleep(30)")


@dataclass
class Client:
    ns: Netns
    n: int
    private_key: str
    public_key: str
    wg: WireguardGo | None = None

    @property
    def underlay(self) -> str:
        return f"198.18.{self.n}.2"

    @property
    def addr4(self) -> str:
        return f"198.19.0.{self.n + 1}"

    @property
    def addr6(self) -> str:
        return f"fd00:19::{self.n + 1}"

    def allowed(self) -> list[str]:
        return [f"{self.addr4}/32", f"{self.addr6}/128"]

    def start(self, server_pub: str, *, extra_addresses: tuple[str, ...] = ()) -> WireguardGo:
        """Run wireguard-go here with the hub as its only peer."""
        self.wg = WireguardGo(self.ns, private_key=self.private_key,
                              address=[f"{self.addr4}/24", f"{self.addr6}/64", *extra_addresses],
                              peers=[WgPeer(server_pub, endpoint=f"198.18.{self.n}.1:{PORT}",
                                            allowed_ips=["198.19.0.0/24", "fd00:19::/64"])])
        return self.wg


@dataclass
class Hub:
    ns: Netns
    server: PyvpnFile
    private_key: str
    public_key: str
    clients: list[Client]
    dir: Path


@contextlib.contextmanager
def hub(n_clients: int, *, in_config: int = 1) -> Iterator[Hub]:
    """A pyvpn server and ``n_clients`` client namespaces; the first ``in_config`` clients are in the server's
    file and started (wireguard-go); the others are only created (keys and namespace)."""
    ks, ps = Keys.new()
    with workdir() as d, namespaces("hub", *[f"c{i}" for i in range(1, n_clients + 1)]) as nss, \
            contextlib.ExitStack() as stack:
        hub_ns, client_nss = nss[0], nss[1:]
        clients = []
        for i, ns in enumerate(client_nss, start=1):
            veth(hub_ns, f"eth{i}", ns, "eth0")
            hub_ns.run(f"ip addr add 198.18.{i}.1/24 dev eth{i}")
            ns.run(f"ip addr add 198.18.{i}.2/24 dev eth0")
            clients.append(Client(ns, i, *Keys.new()))
        # Client to client goes through the hub's kernel, as with WireGuard (pyvpn's default; no Forward = on).
        hub_ns.run("sysctl -qw net.ipv4.ip_forward=1")
        conf = d / f"{unique_ifname('pvs')}.conf"
        wg_quick_file(conf, private_key=ks, listen_port=PORT, address=[f"{SRV4}/24", f"{SRV6}/64"],
                      peers=[WgPeer(c.public_key, allowed_ips=c.allowed()) for c in clients[:in_config]])
        server = stack.enter_context(PyvpnFile(hub_ns, "server", conf))
        for c in clients[:in_config]:
            stack.enter_context(c.start(ps))
        yield Hub(hub_ns, server, ks, ps, clients, d)


# -- reading ------------------------------------------------------------------------------------------------
def test_show_dump_showconf() -> None:
    with hub(1) as h:
        c = h.clients[0]
        assert ping_ok(c.ns, SRV4, count=3) and ping_ok(h.ns, c.addr6, count=3)
        assert c.wg is not None
        wg_port = c.wg.listen_port
        name = h.server.ifname

        d = h.server.dump()
        assert d.private_key == h.private_key and d.public_key == h.public_key
        assert d.listen_port == PORT and d.fwmark is None
        (p,) = d.peers
        assert p.public_key == c.public_key and p.preshared_key is None
        assert p.endpoint == f"{c.underlay}:{wg_port}"
        assert p.allowed_ips == tuple(c.allowed())
        assert p.latest_handshake > 0 and p.rx_bytes > 0 and p.tx_bytes > 0
        assert p.persistent_keepalive is None
        theirs = c.wg.show().peer(h.public_key)
        assert abs(theirs.latest_handshake - p.latest_handshake) <= 2  # one handshake, seen by both

        text = h.server.wg("show", name)
        assert f"interface: {name}" in text and f"public key: {h.public_key}" in text
        assert "private key: (hidden)" in text and f"listening port: {PORT}" in text
        assert f"peer: {c.public_key}" in text and f"endpoint: {c.underlay}:{wg_port}" in text
        assert f"allowed ips: {c.addr4}/32, {c.addr6}/128" in text
        assert re.search(r"latest handshake: (Now|\d+ seconds? ago)", text), text
        assert re.search(r"transfer: [\d.]+ \w+ received, [\d.]+ \w+ sent", text), text
        assert h.server.wg("show", name, "peers").split() == [c.public_key]
        assert h.server.wg("show", name, "listen-port").strip() == str(PORT)
        assert h.server.wg("show", name, "public-key").strip() == h.public_key

        conf = h.server.wg("showconf", name)
        assert f"PrivateKey = {h.private_key}" in conf and f"ListenPort = {PORT}" in conf
        assert f"PublicKey = {c.public_key}" in conf
        assert f"AllowedIPs = {c.addr4}/32, {c.addr6}/128" in conf
        assert f"Endpoint = {c.underlay}:{wg_port}" in conf
        # ... and what showconf prints is a file `wg setconf` takes back unchanged.
        saved = h.dir / "showconf.conf"
        saved.write_text(conf)
        h.server.wg("setconf", name, str(saved))
        assert h.server.wg("showconf", name) == conf
        # setconf replaced the peer, and with it the session (as with wireguard-go); the saved Endpoint
        # lets the hub start a new one.
        assert h.server.dump().peers[0].latest_handshake == 0
        assert ping_ok(h.ns, c.addr4, count=2) and ping_ok(c.ns, SRV4, count=2)


# -- changing -----------------------------------------------------------------------------------------------
def test_set_allowed_ips_changes_routing() -> None:
    with hub(1) as h:
        c = h.clients[0]
        assert c.wg is not None
        c.ns.run(f"ip addr add 198.19.0.12/32 dev {c.wg.ifname}")  # a second address, not yet allowed
        assert ping_ok(c.ns, SRV4, count=2) and ping_ok(h.ns, c.addr4, count=2)
        h.server.wg("set", h.server.ifname, "peer", c.public_key, "allowed-ips", "198.19.0.12/32,fd00:19::2/128")
        (entry,) = h.server.show_cli()["peers"]  # `pyvpn show --json` itself
        assert entry["allowed_ips"] == ["198.19.0.12/32", "fd00:19::2/128"]
        assert h.server.dump().peers[0].allowed_ips == ("198.19.0.12/32", "fd00:19::2/128")
        drops0 = h.server.show()["drops"].get("no_route", 0)
        assert not ping_ok(h.ns, c.addr4, count=1, wait=0.5, attempts=1)  # no longer routed to this peer
        assert h.server.show()["drops"].get("no_route", 0) > drops0
        assert ping_ok(h.ns, "198.19.0.12", count=2)  # the new prefix is
        assert ping_ok(h.ns, c.addr6, count=2)
        # Traffic from the old address is now refused by the ACL on the way in.
        spoofed0 = h.server.show()["drops"].get("spoofed_source", 0)
        assert not ping_ok(c.ns, SRV4, count=1, wait=0.5, attempts=1)
        assert h.server.show()["drops"].get("spoofed_source", 0) > spoofed0
        # `wg set ... allowed-ips` replaces the list: the old one back restores both directions.
        h.server.wg("set", h.server.ifname, "peer", c.public_key, "allowed-ips", ",".join(c.allowed()))
        assert ping_ok(h.ns, c.addr4, count=2) and ping_ok(c.ns, SRV4, count=2)


def test_remove_peer_stops_access_at_once() -> None:
    with hub(2, in_config=2) as h:
        c1, c2 = h.clients
        assert ping_ok(c1.ns, SRV4, count=2) and ping_ok(c2.ns, SRV4, count=2)
        h.server.wg("set", h.server.ifname, "peer", c1.public_key, "remove")
        assert h.server.peer(c1.public_key) is None
        assert [p.public_key for p in h.server.dump().peers] == [c2.public_key]
        assert not ping_ok(c1.ns, SRV4, count=3, wait=0.5, attempts=1)  # the very next packets fail
        assert not ping_ok(h.ns, c1.addr4, count=1, wait=0.5, attempts=1)
        assert ping_ok(c2.ns, SRV4, count=2)  # the other client is unaffected


def test_add_peer_at_run_time_does_not_disturb_others() -> None:
    count = 60
    with hub(2, in_config=1) as h:
        c1, c2 = h.clients
        assert ping_ok(c1.ns, SRV4, count=2)
        before = h.server.peer(c1.public_key)
        assert before is not None
        # c1 pings continuously (3 s) while c2 is added with `wg set` and connects.
        pinger = c1.ns.popen(["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "1", SRV4],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: False, 0.3)
            h.server.wg("set", h.server.ifname, "peer", c2.public_key, "allowed-ips", ",".join(c2.allowed()))
            with c2.start(h.public_key):
                assert ping_ok(c2.ns, SRV4, count=2) and ping_ok(c2.ns, c1.addr4, count=2)  # via the hub's kernel
                out, _ = pinger.communicate(timeout=count * 0.05 + 10)
                sent, received = parse_ping(out.decode())
                assert sent == received == count, out.decode()
        finally:
            if pinger.poll() is None:
                pinger.kill()
                pinger.wait(5)
        after = h.server.peer(c1.public_key)
        assert after is not None and after["handshakes"] == before["handshakes"]  # c1's session untouched
        assert after["latest_handshake"] == before["latest_handshake"]


def test_setconf_and_syncconf() -> None:
    with hub(2, in_config=1) as h:
        c1, c2 = h.clients
        name = h.server.ifname
        assert ping_ok(c1.ns, SRV4, count=2)
        hs1 = h.server.peer(c1.public_key)["latest_handshake"]  # type: ignore[index]

        # syncconf from the wg-quick file itself, through `wg-quick strip`: c2 added, c1 kept as is.
        conf = h.server.config
        conf.write_text(conf.read_text() + "\n" + format_peer(WgPeer(c2.public_key, allowed_ips=c2.allowed()).config()))
        r = h.ns.run(["bash", "-c", f"wg syncconf {name} <(wg-quick strip {conf})"], check=False)
        assert r.returncode == 0, r.stderr
        assert {p.public_key for p in h.server.dump().peers} == {c1.public_key, c2.public_key}
        with c2.start(h.public_key) as wg2:
            assert ping_ok(c2.ns, SRV4, count=2)
            assert h.server.peer(c1.public_key)["latest_handshake"] == hs1  # type: ignore[index]
            assert ping_ok(c1.ns, SRV4, count=2)

            # syncconf with c1 only: c2 removed, c1's session kept.
            only1 = h.dir / "only1.conf"
            only1.write_text(wg_conf_text(private_key=h.private_key, listen_port=51820,
                                          peers=[WgPeer(c1.public_key, allowed_ips=c1.allowed())]))
            h.server.wg("syncconf", name, str(only1))
            assert [p.public_key for p in h.server.dump().peers] == [c1.public_key]
            assert not ping_ok(c2.ns, SRV4, count=1, wait=0.5, attempts=1)
            assert ping_ok(c1.ns, SRV4, count=2)
            assert h.server.peer(c1.public_key)["latest_handshake"] == hs1  # type: ignore[index]

            # setconf with c2 only: replaces every peer (sessions too, as with wireguard-go: the Endpoint
            # lets the hub start a new one with c2).
            only2 = h.dir / "only2.conf"
            only2.write_text(wg_conf_text(private_key=h.private_key, listen_port=51820,
                                          peers=[WgPeer(c2.public_key, endpoint=f"{c2.underlay}:{wg2.listen_port}",
                                                        allowed_ips=c2.allowed())]))
            h.server.wg("setconf", name, str(only2))
            assert [p["public_key"] for p in h.server.show()["peers"]] == [c2.public_key]
            assert not ping_ok(c1.ns, SRV4, count=1, wait=0.5, attempts=1)
            assert ping_ok(h.ns, c2.addr4, count=2) and ping_ok(c2.ns, SRV4, count=2)


def test_listen_port_rebinds() -> None:
    with hub(1) as h:
        c = h.clients[0]
        assert c.wg is not None
        assert ping_ok(c.ns, SRV4, count=2)
        h.server.wg("set", h.server.ifname, "listen-port", "51999")
        assert h.server.dump().listen_port == 51999 and h.server.show()["listen_port"] == 51999
        listening = h.ns.run(["ss", "-Hlun"]).stdout
        assert ":51999" in listening and f":{PORT} " not in listening, listening
        c.wg.set_peer(h.public_key, endpoint="198.18.1.1:51999")
        assert ping_ok(c.ns, SRV4, count=2) and ping_ok(h.ns, c.addr4, count=2)
        # A port in use is refused, and the old one keeps working.
        blocker = h.ns.popen([sys.executable, "-c", HOLD_PORT, "52000"], stdout=subprocess.PIPE)
        try:
            assert blocker.stdout is not None and blocker.stdout.readline().strip() == b"ok"
            r = h.ns.run(["wg", "set", h.server.ifname, "listen-port", "52000"], check=False)
            assert r.returncode != 0
            assert h.server.dump().listen_port == 51999
            assert ping_ok(c.ns, SRV4, count=2)
        finally:
            blocker.kill()
            blocker.wait(5)


def test_persistent_keepalive_handshakes_at_once() -> None:
    with hub(1, in_config=0) as h:
        c = h.clients[0]
        # wireguard-go knows the hub but has no endpoint for it, so only the hub can start a session.
        with WireguardGo(c.ns, private_key=c.private_key, listen_port=51821,
                         address=[f"{c.addr4}/24", f"{c.addr6}/64"],
                         peers=[WgPeer(h.public_key, allowed_ips=["198.19.0.0/24", "fd00:19::/64"])]) as wg:
            h.server.wg("set", h.server.ifname, "peer", c.public_key, "allowed-ips", ",".join(c.allowed()),
                        "endpoint", f"{c.underlay}:51821")
            assert h.server.dump().peers[0].latest_handshake == 0  # nothing to send yet
            h.server.wg("set", h.server.ifname, "peer", c.public_key, "persistent-keepalive", "25")
            # At once, not after 25 s.
            st = wg.wait_handshake(h.public_key, timeout=5.0)
            assert st.endpoint == f"198.18.1.1:{PORT}"
            p = h.server.dump().peers[0]
            assert p.latest_handshake > 0 and p.persistent_keepalive == 25
            assert ping_ok(c.ns, SRV4, count=2)
