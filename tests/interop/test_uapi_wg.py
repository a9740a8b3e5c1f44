"""vpn.uapi against the real ``wg`` tool: a tiny threaded UNIX-socket server in this file answers ``get=1``
with a fixed :class:`DeviceState` (formatted by :func:`format_get`) and records every ``set=1`` (split by
:func:`read_request`, parsed by :func:`parse_set`), at ``/var/run/wireguard/<unique ifname>.sock``.

``wg`` talks to that socket because no kernel interface of that name exists (checked first).  No traffic
is sent anywhere; the socket is removed afterwards even on failure.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crypto.keys import public_from_private
from vpn.config import load_config, parse_config
from vpn.testlab.configs import WgPeer, wg_conf_text
from vpn.uapi import (
    IPC_ERROR_PORT_IN_USE,
    DeviceState,
    PeerSet,
    PeerState,
    SetRequest,
    UapiError,
    format_errno,
    format_get,
    parse_set,
    read_request,
)

pytestmark = [pytest.mark.root, pytest.mark.interop]

WG_RUN_DIR = Path("/var/run/wireguard")
CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.conf"))

PRIV = bytes.fromhex("a0" + "11" * 30 + "4f")
PUB_A = bytes(range(32, 64))
PUB_B = bytes(range(64, 96))
PSK = bytes([0x5C]) * 32
HANDSHAKE = int(time.time()) - 7200


def b64(k: bytes) -> str:
    return base64.b64encode(k).decode()


STATE = DeviceState(
    private_key=PRIV, listen_port=51820, fwmark=0x10,
    peers=[
        PeerState(public_key=PUB_A, preshared_key=PSK, endpoint=("198.18.0.2", 51820), persistent_keepalive=25,
                  allowed_ips=["198.19.0.2/32", "fd00:19::2/128"], last_handshake_time_sec=HANDSHAKE,
                  last_handshake_time_nsec=5, rx_bytes=1000, tx_bytes=2 * 1024 * 1024),
        PeerState(public_key=PUB_B, endpoint=("fd00::3", 51821, 0, 0)),
    ])


@dataclass
class FakeUapi:
    """A UAPI socket server: fixed get reply, recorded set requests, optional failure for the next set."""

    name: str
    state: DeviceState
    sets: list[tuple[str, SetRequest | UapiError]] = field(default_factory=list)
    fail_next_set: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def path(self) -> Path:
        return WG_RUN_DIR / f"{self.name}.sock"

    def serve(self, listener: socket.socket) -> None:
        listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5.0)
                with contextlib.suppress(OSError):
                    self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        f = conn.makefile("rwb")
        while True:
            op = f.readline(4096)
            if not op:  # wg's liveness probe connects and closes
                return
            if op == b"get=1\n":
                if f.readline(4096) != b"\n":
                    return
                f.write(format_get(self.state).encode())
            elif op == b"set=1\n":
                body = []
                while True:
                    line = f.readline(65536)
                    body.append(line)
                    if line in (b"\n", b""):
                        break
                text = (op + b"".join(body)).decode()
                try:
                    result: SetRequest | UapiError = parse_set(read_request(text)[1])
                except UapiError as e:
                    result = e
                with self._lock:
                    self.sets.append((text, result))
                    code, self.fail_next_set = self.fail_next_set, 0
                f.write(format_errno(result.errno if isinstance(result, UapiError) else code).encode())
            else:
                return  # as wireguard-go: an unknown operation closes the connection
            f.flush()

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def fake() -> Iterator[FakeUapi]:
    if shutil.which("wg") is None:
        pytest.skip("wg (wireguard-tools) is not installed")
    WG_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    for _ in range(20):
        name = f"pvu{secrets.token_hex(3)}"
        path = WG_RUN_DIR / f"{name}.sock"
        link = subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, timeout=10, check=False)
        if link.returncode != 0 and not path.exists():
            break
    else:
        pytest.fail("no free interface name")
    srv = FakeUapi(name, STATE)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    thread: threading.Thread | None = None
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(8)
        thread = threading.Thread(target=srv.serve, args=(listener,), daemon=True)
        thread.start()
        yield srv
    finally:
        srv.stop()
        if thread is not None:
            thread.join(timeout=5)
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def wg(*args: str, input: str | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["wg", *args], capture_output=True, text=True, timeout=15, input=input, check=False)
    if ok:
        assert proc.returncode == 0, f"wg {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_wg_lists_the_userspace_interface(fake: FakeUapi) -> None:
    assert fake.name in wg("show", "interfaces").stdout.split()


def test_wg_show(fake: FakeUapi) -> None:
    out = wg("show", fake.name).stdout
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    assert lines[0] == f"interface: {fake.name}"
    assert f"public key: {b64(public_from_private(PRIV))}" in lines
    assert "private key: (hidden)" in lines and "listening port: 51820" in lines and "fwmark: 0x10" in lines
    assert f"peer: {b64(PUB_A)}" in lines and f"peer: {b64(PUB_B)}" in lines
    assert "preshared key: (hidden)" in lines
    assert "endpoint: 198.18.0.2:51820" in lines and "endpoint: [fd00::3]:51821" in lines
    assert "allowed ips: 198.19.0.2/32, fd00:19::2/128" in lines and "allowed ips: (none)" in lines
    assert any(line.startswith("latest handshake: ") and line.endswith(" ago") for line in lines)
    assert "transfer: 1000 B received, 2.00 MiB sent" in lines
    assert "persistent keepalive: every 25 seconds" in lines
    assert fake.sets == []  # show never writes


def test_wg_show_dump(fake: FakeUapi) -> None:
    rows = [line.split("\t") for line in wg("show", fake.name, "dump").stdout.splitlines()]
    assert rows == [
        [b64(PRIV), b64(public_from_private(PRIV)), "51820", "0x10"],
        [b64(PUB_A), b64(PSK), "198.18.0.2:51820", "198.19.0.2/32,fd00:19::2/128", str(HANDSHAKE), "1000",
         str(2 * 1024 * 1024), "25"],
        [b64(PUB_B), "(none)", "[fd00::3]:51821", "(none)", "0", "0", "0", "off"],
    ]


def test_wg_showconf_parses_back(fake: FakeUapi) -> None:
    c = parse_config(wg("showconf", fake.name).stdout, f"{fake.name}.conf")
    assert c.interface.private_key == PRIV and c.interface.listen_port == 51820 and c.interface.fwmark == 0x10
    a, b = c.peers
    assert (a.public_key, a.preshared_key, a.endpoint, a.persistent_keepalive) == (
        PUB_A, PSK, ("198.18.0.2", 51820), 25)
    assert [str(n) for n in a.allowed_ips] == ["198.19.0.2/32", "fd00:19::2/128"]
    assert (b.public_key, b.preshared_key, b.endpoint, b.allowed_ips) == (PUB_B, None, ("fd00::3", 51821), ())


def test_wg_set_allowed_ips(fake: FakeUapi) -> None:
    wg("set", fake.name, "peer", b64(PUB_A), "allowed-ips", "198.19.0.2/32")
    [(text, req)] = fake.sets
    assert text == f"set=1\npublic_key={PUB_A.hex()}\nreplace_allowed_ips=true\nallowed_ip=198.19.0.2/32\n\n"
    assert req == SetRequest(peers=(PeerSet(public_key=PUB_A, replace_allowed_ips=True,
                                            allowed_ips=("198.19.0.2/32",)),))


def test_wg_set_everything(fake: FakeUapi, tmp_path: Path) -> None:
    key_file, psk_file = tmp_path / "key", tmp_path / "psk"
    new_priv = bytes([0x48]) * 32
    key_file.write_text(b64(new_priv) + "\n")
    psk_file.write_text(b64(PSK) + "\n")
    wg("set", fake.name, "listen-port", "51999", "fwmark", "0x20", "private-key", str(key_file),
       "peer", b64(PUB_B), "endpoint", "[fd00::9]:51821", "persistent-keepalive", "30",
       "preshared-key", str(psk_file), "allowed-ips", "fd00:19::/64,198.19.1.0/24",
       "peer", b64(PUB_A), "remove")
    wg("set", fake.name, "fwmark", "off", "peer", b64(PUB_B), "persistent-keepalive", "off", "allowed-ips", "")
    (_, first), (_, second) = fake.sets
    assert first == SetRequest(
        private_key=new_priv, listen_port=51999, fwmark=0x20,
        peers=(PeerSet(public_key=PUB_B, preshared_key=PSK, endpoint=("fd00::9", 51821), persistent_keepalive=30,
                       replace_allowed_ips=True, allowed_ips=("fd00:19::/64", "198.19.1.0/24")),
               PeerSet(public_key=PUB_A, remove=True)))
    assert second == SetRequest(fwmark=0, peers=(PeerSet(public_key=PUB_B, persistent_keepalive=0,
                                                         replace_allowed_ips=True),))


def test_wg_reports_our_errno(fake: FakeUapi) -> None:
    fake.fail_next_set = IPC_ERROR_PORT_IN_USE
    proc = wg("set", fake.name, "listen-port", "51820", ok=False)
    assert proc.returncode != 0 and "Address already in use" in proc.stderr
    assert len(fake.sets) == 1 and fake.sets[0][1] == SetRequest(listen_port=51820)
    wg("set", fake.name, "listen-port", "51820")  # the failure was for one request only


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_wg_setconf_of_each_example(fake: FakeUapi, path: Path, tmp_path: Path) -> None:
    """wg's own parser and ours read each example the same way; the request wg sends parses to it."""
    if shutil.which("wg-quick") is None:
        pytest.skip("wg-quick is not installed")
    f = tmp_path / "wg0.conf"
    f.write_text(path.read_text())
    f.chmod(0o600)
    stripped = tmp_path / "stripped.conf"
    stripped.write_text(subprocess.run(["wg-quick", "strip", str(f)], capture_output=True, text=True, timeout=30,
                                       check=True).stdout)
    wg("setconf", fake.name, str(stripped))
    [(_, req)] = fake.sets
    assert isinstance(req, SetRequest), req
    c = load_config(path)
    i = c.interface
    assert req.replace_peers and req.private_key == i.private_key
    # setconf replaces the whole configuration: an absent ListenPort/FwMark is sent as 0.
    assert req.listen_port == (i.listen_port or 0) and req.fwmark == (i.fwmark or 0)
    assert len(req.peers) == len(c.peers)
    for got, want in zip(req.peers, c.peers, strict=True):
        assert got.public_key == want.public_key and got.preshared_key == want.preshared_key
        assert got.replace_allowed_ips and got.allowed_ips == tuple(str(n) for n in want.allowed_ips)
        assert got.endpoint == (None if want.endpoint is None else
                                (str(ipaddress.ip_address(want.endpoint[0])), want.endpoint[1]))
        assert (got.persistent_keepalive or 0) == want.persistent_keepalive
        assert not got.remove and not got.update_only


def test_wg_syncconf_removes_missing_peers(fake: FakeUapi, tmp_path: Path) -> None:
    conf = tmp_path / "sync.conf"
    conf.write_text(wg_conf_text(private_key=b64(PRIV), listen_port=51820,
                                 peers=[WgPeer(b64(PUB_A), allowed_ips=["198.19.0.2/32"])]))
    wg("syncconf", fake.name, str(conf))
    [(_, req)] = fake.sets
    assert isinstance(req, SetRequest) and not req.replace_peers
    by_key = {p.public_key: p for p in req.peers}
    assert by_key[PUB_B].remove
    assert by_key[PUB_A].allowed_ips == ("198.19.0.2/32",) and by_key[PUB_A].replace_allowed_ips
