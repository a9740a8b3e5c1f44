"""SIGHUP reloads (vpn/reload.py) and host-name endpoints (vpn/endpoints.py) on Devices over in-memory fakes.

No root: a reload's kernel part (routes) goes to a recording stand-in for :class:`vpn.interface.Interface`.
The namespace tests in tests/netns/test_l3_faults.py run the same through real daemons.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from crypto.keys import encode_key, private_from_random, public_from_private
from tunnel.testing import MemoryNetwork, MemoryTun
from vpn import endpoints
from vpn.config import load_config
from vpn.device import Device
from vpn.endpoints import EndpointResolver, handshake_failing, is_address, pick
from vpn.interface import Interface
from vpn.reload import Reloader, restart_needed, sync_request


def keypair() -> tuple[bytes, bytes]:
    priv = private_from_random(os.urandom(32))
    return priv, public_from_private(priv)


class Routes:
    """Records what a reload would do to the kernel's routes."""

    fwmark = 0
    plain_routes = staticmethod(Interface.plain_routes)

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def update_routes(self, old: list[str], new: list[str], table: str | None) -> None:
        self.calls.append(([n for n in old if n not in new], [n for n in new if n not in old]))


def conf(priv: bytes, peers: list[tuple[bytes, str, str | None, int]], extra: str = "") -> str:
    out = f"[Interface]\nPrivateKey = {encode_key(priv)}\nAddress = 100.64.0.1/24\n{extra}"
    for pub, allowed, ep, keepalive in peers:
        out += f"\n[Peer]\nPublicKey = {encode_key(pub)}\nAllowedIPs = {allowed}\n"
        if ep:
            out += f"Endpoint = {ep}\n"
        if keepalive:
            out += f"PersistentKeepalive = {keepalive}\n"
    return out


def device(net: MemoryNetwork, priv: bytes, host: str, name: str) -> Device:
    return Device(tun=MemoryTun(name), udp=net.endpoint(host, 51820), private_key=priv)


def add_from(dev: Device, path: Path) -> Any:
    """What the daemon does at start-up (the endpoints here are IP literals)."""
    cfg = load_config(path)
    for p in cfg.peers:
        peer = dev.add_peer(p.public_key, allowed_ips=[str(n) for n in p.allowed_ips], endpoint=p.endpoint,
                            persistent_keepalive=p.persistent_keepalive, preshared_key=p.preshared_key)
        peer.config_endpoint = p.endpoint
    return cfg


async def hub_and_client(net: MemoryNetwork, path: Path, spriv: bytes, cpriv: bytes) -> tuple[Device, Device, Any]:
    """A hub started from ``path`` and a client of it (keepalive 1 s), once the hub holds a session with
    it: ``(hub, client, the hub's config)``.  The caller closes both."""
    spub, cpub = public_from_private(spriv), public_from_private(cpriv)
    hub = device(net, spriv, "198.18.0.1", "h0")
    cli = device(net, cpriv, "198.18.0.2", "c0")
    cfg = add_from(hub, path)
    cli.add_peer(spub, allowed_ips=["100.64.0.0/24"], endpoint=("198.18.0.1", 51820), persistent_keepalive=1)
    hub.start()
    cli.start()
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while hub.peers[cpub].tunnel.current is None and loop.time() < end:
        await asyncio.sleep(0.01)
    assert hub.peers[cpub].tunnel.current is not None
    return hub, cli, cfg


def test_sync_request_holds_only_what_changed(tmp_path: Path) -> None:
    (spriv, _), (_, a), (_, b), (_, c) = keypair(), keypair(), keypair(), keypair()
    path = tmp_path / "hub.conf"
    path.write_text(conf(spriv, [(a, "100.64.0.2/32", "198.18.0.2:51820", 0), (b, "100.64.0.3/32", None, 0)]))
    dev = device(MemoryNetwork(), spriv, "198.18.0.1", "h0")
    try:
        cfg = add_from(dev, path)
        assert sync_request(dev, cfg, {}).peers == ()  # the same file: nothing to do
        path.write_text(conf(spriv, [(a, "100.64.0.2/32", "198.18.0.2:51820", 25), (c, "100.64.0.4/32", None, 0)]))
        req = sync_request(dev, load_config(path), {})
        by_key = {p.public_key: p for p in req.peers}
        assert by_key[b].remove
        assert by_key[c].allowed_ips == ("100.64.0.4/32",) and not by_key[c].update_only
        assert by_key[a].update_only and by_key[a].persistent_keepalive == 25
        assert by_key[a].endpoint is None and not by_key[a].replace_allowed_ips and by_key[a].preshared_key is None
        assert req.private_key is None and req.listen_port is None and req.fwmark is None
    finally:
        dev.close()


def test_restart_needed_names_what_a_reload_does_not_apply(tmp_path: Path) -> None:
    (spriv, _), (_, a) = keypair(), keypair()
    p1, p2 = tmp_path / "a.conf", tmp_path / "b.conf"
    p1.write_text(conf(spriv, [(a, "100.64.0.2/32", None, 0)]))
    p2.write_text(conf(spriv, [(a, "0.0.0.0/0", None, 0)], extra="MTU = 1380\nListenPort = 5555\n"))
    assert restart_needed(load_config(p1), load_config(p2)) == ("mtu", "AllowedIPs /0 (policy routing)")


def test_reload_keeps_unchanged_sessions_and_refuses_a_broken_file(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        net = MemoryNetwork()
        (spriv, _), (cpriv, cpub), (_, gone), (_, new) = keypair(), keypair(), keypair(), keypair()
        path = tmp_path / "hub.conf"
        path.write_text(conf(spriv, [(cpub, "100.64.0.2/32", None, 0), (gone, "100.64.0.3/32", None, 0)]))
        hub, cli, cfg = await hub_and_client(net, path, spriv, cpriv)
        try:
            session = hub.peers[cpub].tunnel.current
            assert session is not None
            routes = Routes()
            reloader = Reloader(hub, cfg, routes)  # type: ignore[arg-type]
            path.write_text(conf(spriv, [(cpub, "100.64.0.2/32", None, 0), (new, "100.64.1.0/24", None, 0)]))
            summary = await reloader.reload()
            assert summary is not None and (summary.added, summary.removed, summary.changed) == (1, 1, 0)
            assert set(hub.peers) == {cpub, new}
            assert hub.peers[cpub].tunnel.current is session  # untouched
            assert hub.allowed.lookup(socket.inet_aton("100.64.1.7")) is hub.peers[new].tunnel
            assert hub.allowed.lookup(socket.inet_aton("100.64.0.3")) is None
            assert routes.calls == [([], ["100.64.1.0/24"])]  # a route for the prefix outside Address
            assert reloader.cfg.path == str(path) and len(reloader.cfg.peers) == 2

            good = path.read_text()
            path.write_text(good.replace("100.64.1.0/24", "100.64.1.0/33"))
            with caplog.at_level(logging.ERROR, logger="pyvpn"):
                assert await reloader.reload() is None
            lines = [r.getMessage() for r in caplog.records if "reload failed" in r.getMessage()]
            assert len(lines) == 1 and f"{path}:" in lines[0] and "AllowedIPs" in lines[0], lines
            assert set(hub.peers) == {cpub, new} and hub.peers[cpub].tunnel.current is session
        finally:
            hub.close()
            cli.close()

    asyncio.run(main())



def test_reload_applies_per_client_policy(tmp_path: Path) -> None:
    """A reload applies each peer's policy (vpn/policy.py): a client disabled in the file loses its session,
    a new peer starts with its own policy, and a peer whose file section did not change keeps its session."""

    async def main() -> None:
        net = MemoryNetwork()
        (spriv, _), (cpriv, cpub), (_, other), (_, new) = keypair(), keypair(), keypair(), keypair()
        path = tmp_path / "hub.conf"
        path.write_text(conf(spriv, [(cpub, "100.64.0.2/32", None, 0), (other, "100.64.0.3/32", None, 0)]))
        hub, cli, cfg = await hub_and_client(net, path, spriv, cpriv)
        try:
            reloader = Reloader(hub, cfg, Routes())  # type: ignore[arg-type]
            text = conf(spriv, [(cpub, "100.64.0.2/32", None, 0), (other, "100.64.0.3/32", None, 0),
                                (new, "100.64.0.4/32", None, 0)])
            text = text.replace(f"PublicKey = {encode_key(cpub)}\n",
                                f"PublicKey = {encode_key(cpub)}\n#pyvpn Disabled = true\n")
            text += "#pyvpn RateLimit = 10mbit\n#pyvpn Deny = 100.64.0.2/32\n"  # the new peer's section
            path.write_text(text)
            summary = await reloader.reload()
            assert summary is not None and (summary.added, summary.removed, summary.changed) == (1, 0, 1)
            assert summary.unchanged == 1
            c = hub.peers[cpub]
            assert c.policy.disabled and c.tunnel.refused and c.tunnel.current is None
            n = hub.peers[new]
            assert n.policy.rate_limit == 10_000_000 and n.bucket_in is not None and n.access is not None
            assert not hub.peers[other].policed
            path.write_text(text.replace("#pyvpn Disabled = true\n", ""))
            summary = await reloader.reload()
            assert summary is not None and summary.changed == 1 and not hub.peers[cpub].tunnel.refused
        finally:
            hub.close()
            cli.close()

    asyncio.run(main())

# -- host-name endpoints --------------------------------------------------------------------------------
def test_pick_and_is_address() -> None:
    v4 = (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("198.18.0.5", 1))
    v6 = (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("fd00::5", 1, 0, 0))
    other = (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("198.18.0.6", 1))
    assert pick([v6, v4]) == "198.18.0.5"  # IPv4 first, like wg
    assert pick([v6]) == "fd00::5"
    assert pick([v4, other], current="198.18.0.6") == "198.18.0.6"  # still one of the answers: kept
    with pytest.raises(endpoints.ResolveError):
        pick([])
    assert is_address("198.18.0.1") and is_address("fe80::1%eth0") and not is_address("vpn.example.org")


def test_resolve_literals_and_hosts_file() -> None:
    async def main() -> None:
        assert await endpoints.resolve("198.18.0.1", 51820) == ("198.18.0.1", 51820)
        assert await endpoints.resolve("localhost", 51820) in (("127.0.0.1", 51820), ("::1", 51820))

    asyncio.run(main())


def test_resolver_looks_up_only_failing_named_peers_and_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"srv.example.invalid": "198.18.0.9"}
    asked: list[str] = []

    async def fake_resolve(host: str, port: int, *, current: str | None = None, timeout: float = 5.0
                           ) -> tuple[str, int]:
        asked.append(host)
        if host not in answers:
            raise endpoints.ResolveError(f"cannot resolve {host}: unknown")
        return answers[host], port

    monkeypatch.setattr(endpoints, "resolve", fake_resolve)

    async def main() -> None:
        (priv, _), (_, named), (_, literal), (_, unknown) = keypair(), keypair(), keypair(), keypair()
        dev = device(MemoryNetwork(), priv, "198.18.0.2", "c0")
        peers = {}
        for pub, ep in ((named, ("srv.example.invalid", 51820)), (literal, ("198.18.0.1", 51820)),
                        (unknown, ("gone.example.invalid", 51820))):
            peers[pub] = dev.add_peer(pub, allowed_ips=[], endpoint=("198.18.0.1", 51820))
            peers[pub].config_endpoint = ep
        dev.start()
        resolver = EndpointResolver(dev, interval=15.0)
        try:
            resolver.check()
            assert resolver.lookups == 0  # nobody is failing yet
            for p in peers.values():  # an initiation out, retransmitted twice, no answer
                t = p.tunnel
                t.initiate(now=asyncio.get_running_loop().time())
                t.handshake_attempts = endpoints.RERESOLVE_AFTER_RETRIES
                assert handshake_failing(t)
            resolver.check()
            await asyncio.sleep(0.05)
            assert sorted(asked) == ["gone.example.invalid", "srv.example.invalid"]  # never the literal
            assert peers[named].tunnel.endpoint == ("198.18.0.9", 51820)
            assert peers[unknown].tunnel.endpoint == ("198.18.0.1", 51820)  # kept
            assert peers[literal].tunnel.endpoint == ("198.18.0.1", 51820)
            resolver.check()
            await asyncio.sleep(0.05)
            assert resolver.lookups == 2  # not again within the interval
        finally:
            resolver.close()
            dev.close()

    asyncio.run(main())
