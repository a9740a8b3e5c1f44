"""The sans-IO core against Debian's wireguard-go, nobody here having written either side's peer.

wireguard-go runs in one namespace, configured with ``wg``; the core is driven from a plain UDP
socket in another (tests/interop/core_driver.py).  Both roles: the core initiates and pings
wireguard-go's tunnel address, and wireguard-go initiates and pings the core, which answers.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from vpn.testlab.configs import WgPeer
from vpn.testlab.keys import Keys, genpsk
from vpn.testlab.netns import namespaces, veth
from vpn.testlab.wggo import WireguardGo

pytestmark = [pytest.mark.root, pytest.mark.interop]

DRIVER = os.path.join(os.path.dirname(__file__), "core_driver.py")


def _driver(ns, *args: str):  # type: ignore[no-untyped-def]
    return ns.popen([sys.executable, DRIVER, *args])


def _topology(stack):  # type: ignore[no-untyped-def]
    a, b = stack
    veth(a, "eth0", b, "eth0")
    a.run("ip addr add 198.18.0.1/24 dev eth0")
    b.run("ip addr add 198.18.0.2/24 dev eth0")


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
def test_core_initiates_to_wireguard_go(psk: bool) -> None:
    wg_priv, wg_pub = Keys.new()
    my_priv, my_pub = Keys.new()
    key = genpsk() if psk else None
    with namespaces("wg", "core") as (a, b):
        _topology((a, b))
        with WireguardGo(a, private_key=wg_priv, listen_port=51820, address=["198.19.0.1/24"],
                         peers=[WgPeer(my_pub, allowed_ips=["198.19.0.2/32"], preshared_key=key)]) as wg:
            args = ["--role", "initiator", "--private", my_priv, "--peer", wg_pub,
                    "--peer-endpoint", "198.18.0.1:51820", "--local-ip", "198.19.0.2",
                    "--peer-ip", "198.19.0.1", "--timeout", "10", "--count", "3"]
            if key:
                args += ["--psk", key]
            proc = _driver(b, *args)
            out, _ = proc.communicate(timeout=20)
            result = json.loads(out.decode().strip().splitlines()[-1])
            assert result["handshakes"] == 1, result
            assert result["replies"] == 3, result  # decrypted ICMP echo replies carrying our marker
            assert result["drops"] == {}, result
            st = wg.show().peer(my_pub)
            assert st.latest_handshake > 0
            assert st.rx_bytes > 0 and st.tx_bytes > 0
            assert st.endpoint is not None and st.endpoint.startswith("198.18.0.2:")


def test_wireguard_go_initiates_to_core() -> None:
    wg_priv, wg_pub = Keys.new()
    my_priv, my_pub = Keys.new()
    key = genpsk()
    with namespaces("wg", "core") as (a, b):
        _topology((a, b))
        with WireguardGo(a, private_key=wg_priv, listen_port=51820, address=["198.19.0.1/24"],
                         peers=[WgPeer(my_pub, endpoint="198.18.0.2:40000", allowed_ips=["198.19.0.2/32"],
                                       preshared_key=key)]) as wg:
            proc = _driver(b, "--role", "responder", "--private", my_priv, "--peer", wg_pub, "--psk", key,
                           "--listen", "40000", "--local-ip", "198.19.0.2", "--peer-ip", "198.19.0.1",
                           "--timeout", "10", "--count", "3")
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"READY"
            # wireguard-go initiates because it has a packet to send: the kernel's ping.
            r = a.run("ping -n -c 3 -i 0.3 -W 3 198.19.0.2", check=False, timeout=20)
            assert r.returncode == 0, r.stdout
            out, _ = proc.communicate(timeout=20)
            result = json.loads(out.decode().strip().splitlines()[-1])
            assert result["handshakes"] == 1, result
            assert result["answered"] == 3, result
            st = wg.show().peer(my_pub)
            assert st.latest_handshake > 0 and st.rx_bytes > 0 and st.tx_bytes > 0


def test_wireguard_go_takes_the_cores_cookie_under_load() -> None:
    """Our cookie replies (nonce: a random prefix per secret and a counter) are taken by
    wireguard-go: under load the core answers its first initiation with a cookie, wireguard-go
    retries after REKEY_TIMEOUT with mac2, and the handshake and pings go through."""
    wg_priv, wg_pub = Keys.new()
    my_priv, my_pub = Keys.new()
    with namespaces("wg", "core") as (a, b):
        _topology((a, b))
        with WireguardGo(a, private_key=wg_priv, listen_port=51820, address=["198.19.0.1/24"],
                         peers=[WgPeer(my_pub, endpoint="198.18.0.2:40000", allowed_ips=["198.19.0.2/32"])]) as wg:
            proc = _driver(b, "--role", "responder", "--private", my_priv, "--peer", wg_pub, "--under-load",
                           "--listen", "40000", "--local-ip", "198.19.0.2", "--peer-ip", "198.19.0.1",
                           "--timeout", "20", "--count", "2")
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"READY"
            r = a.run("ping -n -c 2 -W 12 198.19.0.2", check=False, timeout=30)
            assert r.returncode == 0, r.stdout
            out, _ = proc.communicate(timeout=30)
            result = json.loads(out.decode().strip().splitlines()[-1])
            assert result["handshakes"] == 1 and result["answered"] == 2, result
            assert result["drops"].get("cookie_reply_sent", 0) >= 1, result
            assert wg.show().peer(my_pub).latest_handshake > 0
