"""Operator features without root: enrollment (pools, allocation, file edits, client files, QR codes,
the CLI), the systemd units, and the pure parts of metrics and privileges.

The running-server halves (control socket, traffic, scrapes, privilege drop) are in
tests/netns/test_enroll.py, test_metrics.py and test_container.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crypto.keys import encode_key, private_from_random, public_from_private
from vpn import cli, enroll
from vpn.cleanup import CleanupHelper
from vpn.config import Config, ConfigError, format_config, load_config, parse_config
from vpn.enroll import EnrollError
from vpn.metrics import DeviceCollector, MetricsError, families, parse_listen
from vpn.privileges import PrivilegeError, lookup_user
from vpn.util import write_private

# qrcode, pillow and prometheus-client are runtime dependencies of these features; their tests skip
# (rather than fail) on an install that lacks them.
ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "configs" / "systemd"


def key(n: int) -> bytes:
    return private_from_random(bytes([n]) * 32)


def server(pool4: str | None = "100.64.0.0/24", pool6: str | None = "fd00:64::/64",
           endpoint: tuple[str, int] | None = ("198.18.0.1", 51820)) -> Config:
    return enroll.new_server_config("wg0.conf", private_key=key(1), port=51820,
                                    pool4=enroll.parse_pool(pool4, 4), pool6=enroll.parse_pool(pool6, 6),
                                    endpoint=endpoint)


def add(cfg: Config, name: str, n: int, **kw: Any) -> enroll.Enrollment:
    return enroll.enroll(cfg, name, private_key=key(n), preshared_key=bytes([n]) * 32, **kw)


def roundtrip(cfg: Config) -> Config:
    return parse_config(format_config(cfg), cfg.path)


# -- server config -------------------------------------------------------------------------------
def test_new_server_config_round_trips_with_pools_and_endpoint() -> None:
    cfg = server()
    i = cfg.interface
    assert [str(a) for a in i.addresses] == ["100.64.0.1/24", "fd00:64::1/64"]
    assert i.listen_port == 51820
    text = format_config(cfg)
    for line in ("#pyvpn Pool4 = 100.64.0.0/24", "#pyvpn Pool6 = fd00:64::/64",
                 "#pyvpn PublicEndpoint = 198.18.0.1:51820"):
        assert line in text.splitlines()
    assert roundtrip(cfg) == cfg
    v6 = server(endpoint=("fd00::1", 443))
    assert "#pyvpn PublicEndpoint = [fd00::1]:443" in format_config(v6)
    assert roundtrip(v6) == v6


@pytest.mark.parametrize("text, message", [
    ("#pyvpn Pool4 = fd00::/64", "not an IPv4 network"),
    ("#pyvpn Pool6 = 100.64.0.0/24", "not an IPv6 network"),
    ("#pyvpn Pool4 = banana", "not a valid IP network"),
    ("#pyvpn PublicEndpoint = vpn.example.com", "host:port"),
])
def test_pool_and_endpoint_keys_are_validated(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(f"[Interface]\nPrivateKey = {encode_key(key(1))}\n{text}\n")


def test_server_needs_a_pool() -> None:
    with pytest.raises(EnrollError, match="at least one address pool"):
        server(pool4=None, pool6=None)


@pytest.mark.parametrize("value, expected", [
    ("vpn.example.com", ("vpn.example.com", 51820)),
    ("vpn.example.com:443", ("vpn.example.com", 443)),
    ("198.18.0.1", ("198.18.0.1", 51820)),
    ("198.18.0.1:1", ("198.18.0.1", 1)),
    ("fd00::1", ("fd00::1", 51820)),
    ("[fd00::1]", ("fd00::1", 51820)),
    ("[fd00::1]:9", ("fd00::1", 9)),
])
def test_parse_public_endpoint(value: str, expected: tuple[str, int]) -> None:
    assert enroll.parse_public_endpoint(value, 51820) == expected


@pytest.mark.parametrize("value", ["", "host:0", "host:65536", "host:x", "[nope]:1", "a b", "fd00::zz"])
def test_parse_public_endpoint_rejects(value: str) -> None:
    with pytest.raises(EnrollError):
        enroll.parse_public_endpoint(value, 51820)


@pytest.mark.parametrize("value, version", [("100.64.0.0/31", 4), ("fd00::/127", 6), ("x", 4), ("fd00::/64", 4)])
def test_parse_pool_rejects(value: str, version: int) -> None:
    with pytest.raises(EnrollError):
        enroll.parse_pool(value, version)


# -- allocation ----------------------------------------------------------------------------------
def test_clients_get_the_next_free_addresses_and_gaps_are_reused() -> None:
    cfg = server()
    names = ["a", "b", "c"]
    for n, name in enumerate(names, 10):
        cfg = add(cfg, name, n).server
    got = {p.name: [str(x) for x in p.allowed_ips] for p in cfg.peers}
    assert got == {"a": ["100.64.0.2/32", "fd00:64::2/128"], "b": ["100.64.0.3/32", "fd00:64::3/128"],
                   "c": ["100.64.0.4/32", "fd00:64::4/128"]}
    cfg, removed = enroll.unenroll(cfg, "b")
    assert removed.name == "b"
    cfg = add(cfg, "d", 20).server
    assert [str(x) for x in cfg.peers[-1].allowed_ips] == ["100.64.0.3/32", "fd00:64::3/128"]


def test_a_full_pool_is_refused_and_the_broadcast_address_never_given() -> None:
    cfg = server(pool4="100.64.0.0/29", pool6=None)  # hosts .1-.6; .1 is the server
    for n in range(5):
        cfg = add(cfg, f"c{n}", 10 + n).server
    assert str(cfg.peers[-1].allowed_ips[0]) == "100.64.0.6/32"
    with pytest.raises(EnrollError, match="pool 100.64.0.0/29 is full"):
        add(cfg, "one-too-many", 30)


def test_addresses_held_by_routed_subnets_are_skipped() -> None:
    cfg = server(pool6=None)
    text = format_config(cfg) + (f"\n[Peer]\nPublicKey = {encode_key(public_from_private(key(9)))}\n"
                                 "AllowedIPs = 100.64.0.0/25, 10.0.0.0/8\n")
    cfg = parse_config(text, "wg0.conf")
    assert str(add(cfg, "x", 10).peer.allowed_ips[0]) == "100.64.0.128/32"
    big = parse_config(format_config(server(pool4="100.64.0.0/16", pool6=None)) + (
        f"\n[Peer]\nPublicKey = {encode_key(public_from_private(key(9)))}\nAllowedIPs = 100.64.0.0/20\n"), "wg0.conf")
    assert str(add(big, "y", 10).peer.allowed_ips[0]) == "100.64.16.0/32"


def test_single_stack_pools() -> None:
    v6 = add(server(pool4=None), "six", 10)
    assert [str(a) for a in v6.client.interface.addresses] == ["fd00:64::2/128"]
    assert [str(n) for n in v6.client.peers[0].allowed_ips] == ["fd00:64::/64"]
    v4 = add(server(pool6=None), "four", 11)
    assert [str(a) for a in v4.client.interface.addresses] == ["100.64.0.2/32"]


def test_pools_fall_back_to_the_server_addresses() -> None:
    cfg = parse_config(f"[Interface]\nPrivateKey = {encode_key(key(1))}\nAddress = 198.19.7.1/24\n", "x.conf")
    e = add(cfg, "legacy", 10, endpoint=("198.18.0.1", 51820))
    assert str(e.peer.allowed_ips[0]) == "198.19.7.2/32"
    bare = parse_config(f"[Interface]\nPrivateKey = {encode_key(key(1))}\n", "x.conf")
    with pytest.raises(EnrollError, match="no address pool"):
        add(bare, "nothing", 10, endpoint=("198.18.0.1", 51820))


# -- names and endpoints ---------------------------------------------------------------------------
def test_duplicate_and_bad_names_are_refused() -> None:
    cfg = add(server(), "alice", 10).server
    with pytest.raises(EnrollError, match="'alice' already exists"):
        add(cfg, "alice", 11)
    for bad in ("", "-x", "a b", "a/b", "x" * 64, "é"):
        with pytest.raises(EnrollError, match="not valid"):
            add(cfg, bad, 12)


def test_an_endpoint_is_required() -> None:
    cfg = server(endpoint=None)
    with pytest.raises(EnrollError, match="no public endpoint"):
        add(cfg, "x", 10)
    e = add(cfg, "x", 10, endpoint=("vpn.example.com", 4500))
    assert e.client.peers[0].endpoint == ("vpn.example.com", 4500)


# -- the client file ----------------------------------------------------------------------------
def test_client_file_is_wg_quick_and_matches_the_server_peer() -> None:
    cfg = server()
    e = add(cfg, "phone", 10, dns=["100.64.0.1"])
    text = enroll.client_config_text(e.client, server_name="wg0")
    client = parse_config(text, "phone.conf")
    ci = client.interface
    assert ci.private_key == key(10)
    assert [str(a) for a in ci.addresses] == ["100.64.0.2/32", "fd00:64::2/128"]
    assert ci.dns == ("100.64.0.1",)
    (sp,) = client.peers
    assert sp.public_key == public_from_private(cfg.interface.private_key)
    assert sp.preshared_key == e.peer.preshared_key == bytes([10]) * 32
    assert [str(n) for n in sp.allowed_ips] == ["100.64.0.0/24", "fd00:64::/64"]
    assert sp.endpoint == ("198.18.0.1", 51820)
    assert sp.persistent_keepalive == 25
    assert e.peer.public_key == public_from_private(key(10))
    assert e.peer.name == "phone"
    assert "pyvpn" not in "".join(ln for ln in text.splitlines() if not ln.startswith("# "))  # no pyvpn-only keys
    assert "DNS = 100.64.0.1" in text


def test_append_keeps_comments_and_cut_removes_only_the_section() -> None:
    base = format_config(server())
    text = "# the VPN for the office\n" + base + "\n# alice's laptop\n"
    e1 = add(parse_config(text, "wg0.conf"), "alice", 10)
    t1 = enroll.edited_text(text, e1.server, enroll.append_peer_text(text, e1.peer))
    assert t1.startswith("# the VPN for the office\n") and "# alice's laptop" in t1
    e2 = add(parse_config(t1, "wg0.conf"), "bob", 11)
    t2 = enroll.edited_text(t1, e2.server, enroll.append_peer_text(t1, e2.peer)) + "# end\n"
    cfg2 = parse_config(t2, "wg0.conf")
    assert [p.name for p in cfg2.peers] == ["alice", "bob"]
    new, peer = enroll.unenroll(cfg2, "alice")
    t3 = enroll.edited_text(t2, new, enroll.cut_peer_text(t2, peer))
    assert [p.name for p in parse_config(t3, "wg0.conf").peers] == ["bob"]
    assert "# the VPN for the office" in t3 and "# end" in t3
    assert encode_key(peer.public_key) not in t3
    assert "\n\n\n" not in t3
    new, peer = enroll.unenroll(parse_config(t3, "wg0.conf"), encode_key(e2.peer.public_key))  # by key
    t4 = enroll.edited_text(t3, new, enroll.cut_peer_text(t3, peer))
    assert parse_config(t4, "wg0.conf").peers == ()
    with pytest.raises(EnrollError, match="no client named 'nobody'"):
        enroll.unenroll(new, "nobody")


def test_an_edit_that_does_not_parse_back_falls_back_to_a_rewrite() -> None:
    cfg = add(server(), "alice", 10).server
    assert enroll.edited_text("ignored", cfg, "[Interface]\ngarbage\n") == format_config(cfg)
    assert parse_config(enroll.edited_text("", cfg, format_config(server())), "x").peers == cfg.peers


# -- files and locking ----------------------------------------------------------------------------
def test_init_add_remove_list_on_disk(tmp_path: Path) -> None:
    path = str(tmp_path / "etc" / "pvtest0.conf")
    cfg = enroll.init_server(path, port=51999, endpoint="198.18.0.1")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "etc").st_mode) == 0o700
    assert load_config(path).interface.public_endpoint == ("198.18.0.1", 51999)
    assert load_config(path).interface.forward is False  # as WireGuard; the header says how to change it
    assert Path(path).read_text().startswith(enroll.SERVER_HEADER) and "Forward = on" in enroll.SERVER_HEADER
    with pytest.raises(EnrollError, match="already exists"):
        enroll.init_server(path)
    r = enroll.add_client(path, "alice", dns=["100.64.0.1"])
    assert r.running is None and r.error is None  # no daemon called pvtest0
    assert [p.name for p in load_config(path).peers] == ["alice"]
    assert Path(path).read_text().startswith(enroll.SERVER_HEADER)  # edits keep the comment
    assert parse_config(r.client_text).interface.private_key != cfg.interface.private_key
    enroll.add_client(path, "bob", psk=False)
    bob = load_config(path).peers[1]
    assert bob.preshared_key is None
    _, rows, running = enroll.list_clients(path)
    assert not running
    assert [(r.name, r.addresses, r.latest_handshake) for r in rows] == [
        ("alice", ("100.64.0.2/32", "fd00:64::2/128"), None), ("bob", ("100.64.0.3/32", "fd00:64::3/128"), None)]
    peer, running_iface, error = enroll.remove_client(path, "alice")
    assert peer.name == "alice" and running_iface is None and error is None
    assert [p.name for p in load_config(path).peers] == ["bob"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    enroll.init_server(path, force=True)
    assert load_config(path).peers == ()
    assert not [p for p in (tmp_path / "etc").iterdir() if p.name.startswith(".")]  # no temp files left


def test_concurrent_add_clients_get_distinct_addresses(tmp_path: Path) -> None:
    path = str(tmp_path / "pvtest1.conf")
    enroll.init_server(path, endpoint="198.18.0.1", pool6="none")

    async def many() -> None:
        await asyncio.gather(*(asyncio.to_thread(enroll.add_client, path, f"c{i}", live=False) for i in range(8)))

    asyncio.run(many())
    cfg = load_config(path)
    addrs = [str(p.allowed_ips[0]) for p in cfg.peers]
    assert len(cfg.peers) == 8 and len(set(addrs)) == 8


# -- QR codes ------------------------------------------------------------------------------------
def _matrix_from_terminal(text: str) -> list[list[bool]]:
    top = {" ": False, "\u2580": True, "\u2584": False, "\u2588": True}
    bottom = {" ": False, "\u2580": False, "\u2584": True, "\u2588": True}
    rows: list[list[bool]] = []
    for line in text.splitlines():
        rows.append([top[c] for c in line])
        rows.append([bottom[c] for c in line])
    return rows


def test_terminal_qr_code_is_the_qr_matrix() -> None:
    pytest.importorskip("qrcode")
    import qrcode
    from qrcode.constants import ERROR_CORRECT_L

    data = enroll.client_config_text(add(server(), "phone", 10).client)
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_L, border=2)
    qr.add_data(data.encode())
    qr.make(fit=True)
    want = [list(r) for r in qr.get_matrix()]
    got = _matrix_from_terminal(enroll.qr_terminal(data, color=False))
    assert got[:len(want)] == want
    assert all(not any(r) for r in got[len(want):])
    colored = enroll.qr_terminal(data, color=True)
    assert all(ln.startswith("\x1b[30;47m") and ln.endswith("\x1b[0m") for ln in colored.splitlines())


def test_png_qr_code_decodes_to_the_client_file(tmp_path: Path) -> None:
    pytest.importorskip("qrcode")
    pytest.importorskip("PIL")
    data = enroll.client_config_text(add(server(), "phone", 10).client, server_name="wg0")
    png = tmp_path / "phone.png"
    write_private(png, enroll.qr_png(data))
    raw = png.read_bytes()
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    assert stat.S_IMODE(os.stat(png).st_mode) == 0o600
    from PIL import Image

    with Image.open(png) as img:
        assert img.size[0] == img.size[1] > 100
    if shutil.which("zbarimg") is None:
        pytest.skip("zbarimg (apt zbar-tools) not installed: PNG checked, not decoded")
    out = subprocess.run(["zbarimg", "--raw", "-q", "-Sbinary", str(png)], check=False, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().rstrip("\n") == data.rstrip("\n")


# -- the CLI --------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_server_subcommands(tmp_path: Path) -> None:
    pytest.importorskip("qrcode")
    pytest.importorskip("PIL")
    conf = tmp_path / "pvtest2.conf"
    r = runner.invoke(cli.app, ["server", "init", "--config", str(conf), "--port", "51821", "--endpoint",
                                "[fd00::1]", "--pool4", "100.64.9.0/24", "--pool6", "none"])
    assert r.exit_code == 0, r.output
    assert load_config(conf).interface.public_endpoint == ("fd00::1", 51821)
    out = tmp_path / "alice.conf"
    png = tmp_path / "alice.png"
    r = runner.invoke(cli.app, ["server", "add-client", "alice", "-c", str(conf), "--out", str(out), "--qr",
                                "--png", str(png), "--dns", "100.64.9.1"])
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600 and png.read_bytes().startswith(b"\x89PNG")
    assert "\u2588" in r.stdout
    client = load_config(out)
    assert client.peers[0].endpoint == ("fd00::1", 51821) and client.interface.dns == ("100.64.9.1",)
    r = runner.invoke(cli.app, ["server", "add-client", "bob", "-c", str(conf)])
    assert r.exit_code == 0 and "[Interface]" in r.stdout  # no --out: the file on stdout
    r = runner.invoke(cli.app, ["server", "add-client", "bob", "-c", str(conf)])
    assert r.exit_code == 1 and "already exists" in r.output
    r = runner.invoke(cli.app, ["server", "list-clients", "-c", str(conf), "--json"])
    assert r.exit_code == 0 and '"alice"' in r.stdout and '"bob"' in r.stdout
    r = runner.invoke(cli.app, ["server", "list-clients", "-c", str(conf)])
    assert r.exit_code == 0 and "alice" in r.stdout and "not running" in r.stdout
    r = runner.invoke(cli.app, ["server", "remove-client", "alice", "-c", str(conf)])
    assert r.exit_code == 0
    r = runner.invoke(cli.app, ["server", "remove-client", "alice", "-c", str(conf)])
    assert r.exit_code == 1 and "no client named 'alice'" in r.output
    r = runner.invoke(cli.app, ["server", "add-client", "x", "-c", str(tmp_path / "missing.conf")])
    assert r.exit_code == 1 and "no such file" in r.output


def test_cli_server_config_still_runs_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(cli, "_run", lambda *a: calls.append(a))
    for argv in (["server", "/etc/pyvpn/wg0.conf"], ["server", "/etc/pyvpn/wg0.conf", "-l", "debug"],
                 ["server", "--metrics", "127.0.0.1:9586", "/etc/pyvpn/wg0.conf"],
                 ["server", "run", "/etc/pyvpn/wg0.conf", "--user", "nobody", "--netns", "ctr"]):
        r = runner.invoke(cli.app, argv)
        assert r.exit_code == 0, (argv, r.output)
    assert [(str(c[0]), c[1]) for c in calls] == [("/etc/pyvpn/wg0.conf", "server")] * 4
    assert calls[1][2] == "debug" and calls[2][4] == "127.0.0.1:9586"
    assert calls[3][3] == "ctr" and calls[3][5] == "nobody"
    r = runner.invoke(cli.app, ["server", "--help"])
    assert r.exit_code == 0
    for sub in ("init", "add-client", "remove-client", "list-clients"):
        assert sub in r.stdout
    r = runner.invoke(cli.app, ["server"])
    assert "CONFIG" in r.output


# -- systemd units --------------------------------------------------------------------------------
def _unit(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys


@pytest.mark.parametrize("unit, role", [("pyvpn@.service", "server"), ("pyvpn-client@.service", "client")])
def test_systemd_units_run_existing_cli_commands(unit: str, role: str, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    path = UNITS / unit
    keys = _unit(path)
    (exec_start,) = keys["ExecStart"]
    argv = shlex.split(exec_start.replace("%i", "wg0"))
    assert Path(argv[0]).name == "pyvpn"
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(cli, "_run", lambda *a: calls.append(a))
    r = runner.invoke(cli.app, argv[1:])
    assert r.exit_code == 0, r.output
    assert [(str(c[0]), c[1]) for c in calls] == [("/etc/pyvpn/wg0.conf", role)]
    env = dict(e.split("=", 1) for v in keys.get("Environment", []) for e in shlex.split(v))
    assert set(env) <= {"PYVPN_LOG_LEVEL", "PYVPN_RUN_DIR"}
    caps = keys["CapabilityBoundingSet"][0].split()
    assert {"CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID"} <= set(caps) and "CAP_SYS_ADMIN" not in caps
    assert keys["NoNewPrivileges"] == ["yes"] and keys["ProtectSystem"] == ["strict"]
    assert "/dev/net/tun rw" in keys["DeviceAllow"]
    if shutil.which("systemd-analyze") is None:
        return
    # `systemd-analyze verify` checks every directive; the bare command name is swapped for an existing
    # binary (verify looks executables up in systemd's own PATH, where a pip install may not be).
    copy = tmp_path / unit
    copy.write_text(path.read_text().replace("ExecStart=pyvpn ", "ExecStart=/bin/echo "))
    instance = tmp_path / unit.replace("@.", "@wg0.")
    instance.symlink_to(copy)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(instance)], check=False, capture_output=True,
                         text=True,
                         timeout=60, cwd=tmp_path)
    complaints = [ln for ln in (out.stdout + out.stderr).splitlines() if str(tmp_path) in ln]
    assert out.returncode == 0 and not complaints, out.stdout + out.stderr


# -- metrics (pure parts) ---------------------------------------------------------------------------
SNAP = {
    "interface": "wg0", "public_key": b"\x01" * 32, "listen_port": 51820, "under_load": False,
    "drops": {"no_route": 3, "bad_mac1": 2},
    "peers": [
        {"public_key": b"\x02" * 32, "name": "alice", "rx_bytes": 1000, "tx_bytes": 2000, "rx_packets": 10,
         "tx_packets": 20, "handshakes": 2, "latest_handshake": 1700000000.5, "drops": {"spoofed_source": 1}},
        {"public_key": b"\x03" * 32, "name": None, "rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0,
         "tx_packets": 0, "handshakes": 0, "latest_handshake": 0, "drops": {}},
    ],
}


def _samples(fams: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams for s in f.samples}


def test_metric_families_from_a_snapshot() -> None:
    pytest.importorskip("prometheus_client")
    s = _samples(families(SNAP))
    alice = (("interface", "wg0"), ("name", "alice"), ("public_key", encode_key(b"\x02" * 32)))
    anon = (("interface", "wg0"), ("name", ""), ("public_key", encode_key(b"\x03" * 32)))
    assert s[("pyvpn_peer_receive_bytes_total", alice)] == 1000
    assert s[("pyvpn_peer_transmit_bytes_total", alice)] == 2000
    assert s[("pyvpn_peer_receive_packets_total", alice)] == 10
    assert s[("pyvpn_peer_transmit_packets_total", alice)] == 20
    assert s[("pyvpn_peer_handshakes_total", alice)] == 2
    assert s[("pyvpn_peer_latest_handshake_seconds", alice)] == 1700000000.5
    assert s[("pyvpn_peer_latest_handshake_seconds", anon)] == 0
    assert s[("pyvpn_peer_drops_total", tuple(sorted((*alice, ("reason", "spoofed_source")))))] == 1
    assert s[("pyvpn_drops_total", (("interface", "wg0"), ("reason", "no_route")))] == 3
    assert s[("pyvpn_peers", (("interface", "wg0"),))] == 2


def test_exposition_text_parses() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    reg = CollectorRegistry(auto_describe=False)
    reg.register(DeviceCollector(lambda: SNAP))
    names = {f.name for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert {"pyvpn_peer_receive_bytes", "pyvpn_drops", "pyvpn_info", "pyvpn_peer_latest_handshake_seconds"} <= names


def test_collector_takes_the_snapshot_on_the_loop_thread() -> None:
    pytest.importorskip("prometheus_client")
    import threading

    seen: list[threading.Thread] = []

    def snap() -> dict[str, Any]:
        seen.append(threading.current_thread())
        return SNAP

    async def main() -> list[Any]:
        c = DeviceCollector(snap, asyncio.get_running_loop())
        return await asyncio.to_thread(lambda: list(c.collect()))

    fams = asyncio.run(main())
    assert seen == [threading.main_thread()] and len(fams) > 5

    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    assert list(DeviceCollector(broken).collect()) == []  # a failing snapshot is an empty scrape


@pytest.mark.parametrize("value, expected", [("127.0.0.1:9586", ("127.0.0.1", 9586)), ("[::1]:1", ("::1", 1)),
                                             (":9586", ("127.0.0.1", 9586)), ("0.0.0.0:9586", ("0.0.0.0", 9586)),
                                             ("[::]:9586", ("::", 9586))])
def test_metrics_listen_address(value: str, expected: tuple[str, int]) -> None:
    """Issue 13: ``:PORT`` is loopback; all addresses only when written out."""
    assert parse_listen(value) == expected


def test_metrics_warns_when_reachable_from_other_hosts(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("prometheus_client")
    from vpn.metrics import MetricsServer, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("198.18.0.1")

    class Dev:
        name = "wg0"

        def snapshot(self) -> dict[str, Any]:
            return SNAP

    async def start_stop(address: str) -> None:
        m = MetricsServer(Dev(), address)
        await m.start()
        await m.close()

    caplog.set_level("INFO", logger="pyvpn.metrics")
    asyncio.run(start_stop(":0"))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    asyncio.run(start_stop("0.0.0.0:0"))
    (w,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "without authentication" in w.getMessage() and "0.0.0.0" in w.getMessage()


def test_scrapes_share_bounded_snapshots() -> None:
    """Issue 13: however often (and however many at once) scrapes come, the data path's thread takes at most
    one snapshot at a time and one per interval."""
    pytest.importorskip("prometheus_client")
    from concurrent.futures import ThreadPoolExecutor

    taken: list[float] = []
    now = [100.0]

    def snap() -> dict[str, Any]:
        taken.append(now[0])
        return SNAP

    async def main() -> None:
        c = DeviceCollector(snap, asyncio.get_running_loop(), min_interval=1.0, clock=lambda: now[0])

        def scrape_many() -> None:
            with ThreadPoolExecutor(8) as pool:
                assert all(len(list(f)) > 5 for f in pool.map(lambda _: list(c.collect()), range(40)))

        await asyncio.to_thread(scrape_many)
        assert len(taken) == 1
        now[0] += 0.5
        await asyncio.to_thread(scrape_many)
        assert len(taken) == 1
        now[0] += 0.6
        await asyncio.to_thread(scrape_many)
        assert taken == [100.0, 101.1]

    asyncio.run(main())


@pytest.mark.parametrize("value", ["9586", "host", "127.0.0.1:0x", "127.0.0.1:70000"])
def test_metrics_listen_address_rejects(value: str) -> None:
    with pytest.raises(MetricsError):
        parse_listen(value)


def test_metrics_server_serves_and_closes() -> None:
    pytest.importorskip("prometheus_client")
    import urllib.request

    from vpn.metrics import MetricsServer

    class Dev:
        name = "wg0"

        def snapshot(self) -> dict[str, Any]:
            return SNAP

    async def main() -> tuple[str, int]:
        m = MetricsServer(Dev(), "127.0.0.1:0")
        await m.start()
        port = m.bound_port
        try:
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
        finally:
            await m.close()
        return body, port

    body, port = asyncio.run(main())
    assert 'pyvpn_peer_receive_bytes_total{interface="wg0",name="alice"' in body
    assert "process_cpu_seconds_total" in body
    import socket

    with socket.socket() as s:  # closed: nothing listens on the port any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the scrape's TIME_WAIT may remain
        s.bind(("127.0.0.1", port))
        s.listen()


# -- privileges (pure parts) ----------------------------------------------------------------------
def test_lookup_user() -> None:
    root = lookup_user("root")
    assert (root.uid, root.gid) == (0, 0)
    assert lookup_user("0").name == "root"
    n = lookup_user("4000000")  # a uid without a passwd entry: nogroup, not a gid equal to the uid
    import grp

    nogroup = grp.getgrnam("nogroup").gr_gid  # Debian; 65534
    assert (n.uid, n.gid, n.groups) == (4000000, nogroup, (nogroup,))
    with pytest.raises(PrivilegeError, match="no such user"):
        lookup_user("no-such-user-pyvpn")


def test_cleanup_helper_starts_from_any_directory_without_pythonpath(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The root helper is ``python -m vpn.cleanup`` with the daemon's own interpreter: the installed package
    is found from any working directory and with no PYTHONPATH.  A plan without an interface makes the
    helper's ``main`` answer 2 (an import failure would be 1), so no root is needed here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    helper = CleanupHelper.start({})
    try:
        assert helper.proc.wait(30) == 2
        assert not helper.step("teardown", timeout=1)  # nothing to ask once it has exited
    finally:
        helper.close(timeout=1)


def test_interface_names_from_file_stems_are_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: the interface is named after the file, and the name reaches the shell (``%i`` in hooks) and
    nft scripts, so a stem wg-quick would refuse (``a$(id)``) stops everything before any hook runs."""
    from vpn import daemon, wgcompat

    out = tmp_path / "hook-ran"
    text = f"[Interface]\nPrivateKey = {encode_key(key(1))}\nPreUp = echo %i > {out}\n"
    for stem in ("a$(id)", "a;id", "a b", "`id`", "ab\u00e9", "0123456789abcdef", "x" * 16):
        f = tmp_path / f"{stem}.conf"
        f.write_text(text)
        f.chmod(0o600)
        cfg = load_config(f)
        with pytest.raises(ConfigError, match="not a valid interface name"):
            _ = cfg.interface_name
        with pytest.raises(daemon.DaemonError, match="not a valid interface name"):
            daemon.run_daemon(cfg, role="server")
        with pytest.raises(ConfigError):
            enroll.interface_name(cfg)
        assert not out.exists()
    good = tmp_path / "wg_0.a-b=c+d.conf"
    good.write_text(text)
    assert load_config(good).interface_name == "wg_0.a-b=c+d"
    # pyvpn-wg takes the name from its argument: refused before any device is opened
    opened: list[str] = []
    monkeypatch.setattr(wgcompat, "open_tun", lambda name, **kw: opened.append(name))
    assert wgcompat.main(["a$(id)"]) == 1 and opened == []


def test_private_files_ignore_planted_temporary_names(tmp_path: Path) -> None:
    """Issue 13: the temporary file of an atomic write has no guessable name and is opened with O_EXCL and
    O_NOFOLLOW, so a symlink planted at the old name (``.NAME.tmpPID``) neither receives the key nor
    becomes the file; text (configs) and bytes (QR PNGs) alike."""
    from vpn.enroll import files as enroll_files
    from vpn.util import write_private

    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    for i, (writer, data) in enumerate([(write_private, "PrivateKey = secret\n"),
                                        (enroll_files.write_private, "PrivateKey = secret\n"),
                                        (enroll_files.write_private, b"\x89PNG secret")]):
        target = tmp_path / f"client{i}.conf"
        planted = tmp_path / f".{target.name}.tmp{os.getpid()}"
        planted.symlink_to(victim)
        writer(target, data)
        assert victim.read_text() == "untouched\n"
        assert not target.is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o600
        assert target.read_bytes() == (data.encode() if isinstance(data, str) else data)
        assert planted.is_symlink()  # left alone
        # a symlink at the target itself is replaced, not written through
        target.unlink()
        target.symlink_to(victim)
        writer(target, data)
        assert victim.read_text() == "untouched\n" and not target.is_symlink()
        planted.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client0.conf", "client1.conf", "client2.conf", "victim"]


def test_ipaddress_sanity() -> None:  # the /32 and /128 host prefixes the server gets
    e = add(server(), "a", 10)
    assert all(n.prefixlen == n.max_prefixlen for n in e.peer.allowed_ips)
    assert all(isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)) for n in e.peer.allowed_ips)
