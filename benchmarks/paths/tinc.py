"""tinc 1.0 (Debian's package) at both ends: router mode on a tun device, two nodes, AES-256-CBC + SHA-256.

1. Each node (``client``, ``server``) gets a fresh RSA-2048 key pair, generated here with the
   ``cryptography`` package in the PKCS#1 PEM forms tinc 1.0 reads (``RSA PRIVATE KEY`` in
   ``rsa_key.priv``, ``RSA PUBLIC KEY`` in its host file).
2. Each node's directory holds ``tinc.conf`` (:func:`tinc_conf`: ``Mode = router``, ``DeviceType = tun``,
   ``BindToAddress`` on its veth address, the client ``ConnectTo = server``) and both host files
   (:func:`host_file`: ``Address``, ``Port``, the node's tunnel ``Subnet``s, ``Cipher``/``Digest`` and the
   public key).  tinc 1.0's default cipher is Blowfish (64-bit blocks, limited by its Sweet32
   mitigations); AES-256-CBC with SHA-256 MACs is what a current set-up would choose.
3. ``tincd -c DIR -D`` runs in the foreground with its pid file in the benchmark's directory (never
   ``/var/run``); it makes the tun device ``tnc0`` and the benchmark adds the addresses once it exists.
   The meta connection is TCP; data goes over UDP once tinc has probed it.  Ready when a ping crosses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vpn.testlab.files import write_private

from .base import BenchPath, Endpoints, address_link, first_line, wait_links
from .lab import Lab

TINC_PORT = 655
TINC_MTU = 1420
TINC_CIPHER = "aes-256-cbc"
TINC_DIGEST = "sha256"
TINC_IFNAME = "tnc0"
RSA_BITS = 2048
START_TIMEOUT = 30.0  # RSA meta handshake, then UDP probing


def rsa_keypair(bits: int = RSA_BITS) -> tuple[str, str]:
    """``(private_pem, public_pem)`` in PKCS#1 (``RSA PRIVATE KEY`` / ``RSA PUBLIC KEY``), as tinc 1.0 reads."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    return private, public


def _check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c == "_" for c in name):
        raise ValueError(f"tinc node names are letters, digits and _ only, not {name!r}")
    return name


def tinc_conf(*, name: str, bind: str, connect_to: str | None, ifname: str = TINC_IFNAME,
              port: int = TINC_PORT) -> str:
    """``tinc.conf`` of node ``name``: router mode, tun device ``ifname``, IPv4 bound to ``bind``."""
    return "\n".join([
        f"Name = {_check_name(name)}", "Mode = router", "DeviceType = tun", f"Interface = {ifname}",
        "AddressFamily = ipv4", f"BindToAddress = {bind} {port}",
        *([f"ConnectTo = {_check_name(connect_to)}"] if connect_to else []), "",
    ])


def host_file(*, address: str, subnets: Sequence[str], public_pem: str, port: int = TINC_PORT,
              cipher: str = TINC_CIPHER, digest: str = TINC_DIGEST) -> str:
    """A node's host file (``hosts/<name>``): where it is, which tunnel addresses it owns, its key."""
    if "BEGIN RSA PUBLIC KEY" not in public_pem:
        raise ValueError("tinc 1.0 host files take a PKCS#1 'RSA PUBLIC KEY' PEM block")
    return "\n".join([
        f"Address = {address}", f"Port = {port}", *(f"Subnet = {s}" for s in subnets),
        f"Cipher = {cipher}", f"Digest = {digest}", "", public_pem.strip(), "",
    ])


def write_node(confdir: Path, *, name: str, bind: str, connect_to: str | None, private_pem: str,
               hosts: dict[str, str]) -> None:
    """Write one node's directory: ``tinc.conf``, ``rsa_key.priv`` (0600) and ``hosts/<name>`` for each host."""
    (confdir / "hosts").mkdir(parents=True, exist_ok=True)
    (confdir / "tinc.conf").write_text(tinc_conf(name=name, bind=bind, connect_to=connect_to))
    write_private(confdir / "rsa_key.priv", private_pem)
    for host, text in hosts.items():
        (confdir / "hosts" / _check_name(host)).write_text(text)


class TincPath(BenchPath):
    key = "tinc"
    title = "tinc"
    requires = ("tincd",)


    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        pair, offloads = lab.pair(slot, veth_gso=veth_gso)
        keys = {"client": rsa_keypair(), "server": rsa_keypair()}
        where = {"client": (pair.client, pair.client_ip, 1), "server": (pair.server, pair.server_ip, 2)}
        hosts = {name: host_file(address=ip, subnets=[f"198.19.{slot}.{host}/32", f"fd00:{slot:x}::{host}/128"],
                                 public_pem=keys[name][1])
                 for name, (_ns, ip, host) in where.items()}
        for name in ("server", "client"):  # the server listens before the client connects
            ns, ip, host = where[name]
            confdir = lab.dir / f"tinc-{slot}-{name}"
            write_node(confdir, name=name, bind=ip, connect_to="server" if name == "client" else None,
                       private_pem=keys[name][0], hosts=hosts)
            log = lab.dir / f"tinc-{slot}-{name}.log"
            self.procs.append(lab.popen(ns, ["tincd", "-c", str(confdir), "-D", "-d0",
                                             f"--pidfile={confdir / 'tinc.pid'}"], log=log))
            self.logs.append(log)
            wait_links(self, ns, [TINC_IFNAME], timeout=START_TIMEOUT, what="tincd")
            address_link(ns, TINC_IFNAME, slot=slot, host=host, mtu=TINC_MTU)
        server_addr = f"198.19.{slot}.2"
        self.wait_ready(pair.client, server_addr, timeout=START_TIMEOUT, what="tinc")
        return Endpoints(pair.client, pair.server, server_addr, TINC_MTU, offloads,
                         f"tinc router mode (tun), {TINC_CIPHER} + {TINC_DIGEST}, RSA-{RSA_BITS}, "
                         f"port {TINC_PORT}, mtu {TINC_MTU}")

    def version(self) -> str:
        return first_line(["tincd", "--version"])
