"""OpenVPN 2.6 (Debian) point-to-point over UDP, TLS with self-signed certificates, AES-256-GCM, no DCO.

Why TLS and not a static key: OpenVPN 2.6 deprecates ``--secret`` and static-key mode cannot use AEAD
ciphers, so AES-256-GCM needs TLS.  Each end gets a self-signed EC P-256 certificate made here with the
``cryptography`` package, and accepts the other one by ``--peer-fingerprint`` (an OpenVPN 2.6 feature),
so no CA is needed.  ``dh none`` selects ECDHE.  ``--disable-dco`` keeps the data path in the userspace
process, which is what this benchmark compares.  The tun MTU is 1420 like WireGuard's, so the outer
datagrams (1420 + 20 IP + 8 UDP + 24 OpenVPN/GCM) stay below the veth's 1500 and never fragment.
:class:`OpenVpnTapPath` runs the same in tap mode (``dev-type tap``, MTU 1370 like pyvpn L2's taps).
"""

from __future__ import annotations

import datetime
from pathlib import Path

from vpn.testlab.files import write_private
from vpn.testlab.netns import LabError, wait_for

from .base import BenchPath, Endpoints, first_line
from .lab import Lab

OVPN_PORT = 1194
OVPN_MTU = 1420
OVPN_TAP_MTU = 1370  # pyvpn L2's default tap MTU (tunnel 1420 - 50 bytes of VXLAN headroom)
CIPHER = "AES-256-GCM"
START_TIMEOUT = 20.0


def self_signed(common_name: str) -> tuple[str, str, str]:
    """A self-signed EC P-256 certificate: ``(cert_pem, key_pem, sha256_fingerprint)``.

    The fingerprint is the SHA-256 of the DER certificate as colon-separated upper-case hex, the form
    ``--peer-fingerprint`` takes.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    fingerprint = ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
    return cert_pem, key_pem, fingerprint


def p2p_config(*, tls_role: str, local: str, remote: str, ifconfig_local: str, ifconfig_remote: str,
               ipv6_local: str, ipv6_remote: str, cert: Path, key: Path, peer_fingerprint: str, ifname: str,
               dev_type: str = "tun", mtu: int = OVPN_MTU) -> str:
    """The text of one end's OpenVPN 2.6 p2p config (TLS, AES-256-GCM only, no DCO).

    :param dev_type: ``tun`` (L3) or ``tap`` (Ethernet frames; ``ifconfig`` then takes a /24 netmask).
    :param mtu: ``tun-mtu``: the tun's MTU, or the tap's (IP MTU of its frames).
    """
    if tls_role not in ("tls-server", "tls-client"):
        raise ValueError(f"tls_role must be tls-server or tls-client, not {tls_role!r}")
    if dev_type not in ("tun", "tap"):
        raise ValueError(f"dev_type must be tun or tap, not {dev_type!r}")
    ifconfig = f"{ifconfig_local} {ifconfig_remote}" if dev_type == "tun" else f"{ifconfig_local} 255.255.255.0"
    return "\n".join([
        f"dev {ifname}", f"dev-type {dev_type}", "proto udp", f"local {local}", f"lport {OVPN_PORT}",
        f"remote {remote}", f"rport {OVPN_PORT}", "float",
        f"ifconfig {ifconfig}",
        f"ifconfig-ipv6 {ipv6_local}/64 {ipv6_remote}",
        f"tun-mtu {mtu}", tls_role, "dh none", f"cert {cert}", f"key {key}",
        f"peer-fingerprint {peer_fingerprint}", f"data-ciphers {CIPHER}", "disable-dco",
        "ping 10", "ping-restart 60", "verb 3", "",
    ])


class OpenVpnPath(BenchPath):
    key = "openvpn"
    title = "OpenVPN"
    requires = ("openvpn",)
    dev_type = "tun"
    mtu = OVPN_MTU


    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        pair, offloads = lab.pair(slot, veth_gso=veth_gso)
        creds = [self_signed("netbench-client"), self_signed("netbench-server")]
        ends = [(pair.client, "tls-client", pair.client_ip, pair.server_ip, 1, 2),
                (pair.server, "tls-server", pair.server_ip, pair.client_ip, 2, 1)]
        for i, (ns, role, local, remote, me, other) in enumerate(ends):
            cert, key = lab.dir / f"ovpn-{slot}-{me}.crt", lab.dir / f"ovpn-{slot}-{me}.key"
            cert.write_text(creds[i][0])
            write_private(key, creds[i][1])
            conf = lab.dir / f"ovpn-{slot}-{me}.conf"
            write_private(conf, p2p_config(
                tls_role=role, local=local, remote=remote, ifconfig_local=f"198.19.{slot}.{me}",
                ifconfig_remote=f"198.19.{slot}.{other}", ipv6_local=f"fd00:{slot:x}::{me}",
                ipv6_remote=f"fd00:{slot:x}::{other}", cert=cert, key=key,
                peer_fingerprint=creds[1 - i][2], ifname=f"{self.dev_type}0", dev_type=self.dev_type,
                mtu=self.mtu))
            log = lab.dir / f"openvpn-{slot}-{me}.log"
            proc = lab.popen(ns, ["openvpn", "--config", str(conf)], log=log)
            self.procs.append(proc)
            self.logs.append(log)
        server_addr = f"198.19.{slot}.2"

        def up() -> bool:
            if self.alive() is not None:
                return True
            return all("Initialization Sequence Completed" in p.read_text(errors="replace") for p in self.logs)

        wait_for(up, START_TIMEOUT, interval=0.1)
        if (dead := self.alive()) is not None:
            raise LabError(f"openvpn: {dead}")
        self.wait_ready(pair.client, server_addr, timeout=START_TIMEOUT, what="OpenVPN")
        return Endpoints(pair.client, pair.server, server_addr, self.mtu, offloads,
                         f"p2p udp {OVPN_PORT}, TLS (self-signed, peer-fingerprint), {CIPHER}, no DCO, "
                         f"dev-type {self.dev_type}, tun-mtu {self.mtu}")

    def version(self) -> str:
        return first_line(["openvpn", "--version"])


class OpenVpnTapPath(OpenVpnPath):
    """The same OpenVPN in tap mode (Ethernet frames over the tunnel): where pyvpn L2 users compare, since
    OpenVPN's kernel offload (DCO) has no tap mode.  The tap MTU is pyvpn L2's default (1370), so both carry
    the same inner packets."""

    key = "openvpn-tap"
    title = "OpenVPN tap"
    dev_type = "tap"
    mtu = OVPN_TAP_MTU
