"""The ``pyvpn`` command as a new user meets it (issue 15): one-line errors, ``--version`` and ``-h``,
config files found by interface name, every config key listed in ``--help`` (from the parser's own
tables), shell completion, ``--qr`` saying where the config went, journal-friendly logs, sd_notify
and the systemd units."""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tunnel.netconf import NetconfError
from vpn import cli, logs
from vpn.config import ConfigError, parse_config
from vpn.config.parser import _TABLES
from vpn.config_keys import KEY_DOCS, config_keys, keys_text
from vpn.systemd import notify, unit_name, unit_text

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def pyvpn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command (its ``main``: what a shell runs), not typer's test runner."""
    exe = shutil.which("pyvpn", path=str(Path(sys.executable).parent))
    argv = [exe] if exe else [sys.executable, "-m", "vpn.cli"]
    full_env = {**os.environ, "COLUMNS": "80", **(env or {})}
    full_env.pop("PYVPN_LOG_LEVEL", None)
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, env=full_env, check=False)


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode != 0, p.stdout
    assert p.stderr.startswith("pyvpn: ") and p.stderr.count("\n") == 1, p.stderr
    assert "Traceback" not in p.stderr and "╭" not in p.stderr
    return p.stderr


# -- errors are one line -------------------------------------------------------------------------------
def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "wg0.conf"
    conf.write_text("[Interface]\nPrivateKey = " + "A" * 43 + "=\n")
    conf.chmod(0o600)
    err = one_line_error(pyvpn("client", str(conf), "--log-level", "loud"))
    assert "'loud' is not one of debug, info, warning, error" in err
    assert "No such command 'nosuch'" in one_line_error(pyvpn("nosuch"))
    assert "Missing argument" in one_line_error(pyvpn("client"))
    assert "no such option" in one_line_error(pyvpn("show", "--bogus")).lower()
    assert pyvpn("client", str(conf), "-l", "LOUD").returncode == 2


def test_an_unexpected_exception_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def boom() -> None:
        raise RuntimeError("something broke")

    monkeypatch.setattr(cli, "_root", lambda **kw: None)
    monkeypatch.setattr(sys, "argv", ["pyvpn", "genpsk"])
    monkeypatch.setattr(cli.os, "urandom", lambda n: boom())
    monkeypatch.delenv("PYVPN_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err == "pyvpn: unexpected error: RuntimeError: something broke (PYVPN_TRACEBACK=1 shows where)\n"


def test_a_netlink_error_from_the_daemon_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A Namespace that does not exist: the daemon's netconf error, not 254 lines of traceback (the real
    thing runs in tests/netns/test_operator_cli.py)."""
    import vpn.daemon

    def fail(*_a: Any, **_kw: Any) -> int:
        raise NetconfError(errno.ENOENT, "link_exists(wg0): network namespace 'nope' does not exist")

    monkeypatch.setattr(vpn.daemon, "run_daemon", fail)
    conf = tmp_path / "wg0.conf"
    conf.write_text("[Interface]\nPrivateKey = " + "A" * 43 + "=\n")
    conf.chmod(0o600)
    r = runner.invoke(cli.app, ["client", str(conf), "--netns", "nope"])
    assert r.exit_code == 1
    assert r.output == "pyvpn: link_exists(wg0): network namespace 'nope' does not exist\n"


def test_version_and_short_help() -> None:
    for flag in ("--version", "-V"):
        p = pyvpn(flag)
        assert p.returncode == 0 and p.stdout.startswith("pyvpn ") and p.stdout.count("\n") == 1, p.stdout
    for argv in (["-h"], ["client", "-h"], ["server", "-h"], ["server", "add-client", "-h"], ["show", "-h"]):
        p = pyvpn(*argv)
        assert p.returncode == 0 and "Usage:" in p.stdout, (argv, p.stderr)


def test_shell_completion() -> None:
    p = pyvpn("--show-completion", "bash")
    assert p.returncode == 0 and "_PYVPN_COMPLETE" in p.stdout, p.stdout + p.stderr
    p = pyvpn(env={"_PYVPN_COMPLETE": "complete_bash", "COMP_WORDS": "pyvpn sh", "COMP_CWORD": "1"})
    assert p.returncode == 0 and "show" in p.stdout.split(), p.stdout + p.stderr


def test_show_completes_running_interfaces(tmp_path: Path) -> None:
    """`pyvpn show <TAB>`: the interfaces whose control socket answers (a stale socket file does not)."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        live.bind(str(run / "wgtest0.sock"))
        live.listen(1)
        stale.bind(str(run / "wgtest1.sock"))  # bound, never listening: what a killed daemon leaves
        p = pyvpn(env={"_PYVPN_COMPLETE": "complete_bash", "COMP_WORDS": "pyvpn show wgt", "COMP_CWORD": "2",
                       "PYVPN_RUN_DIR": str(run)})
    assert p.returncode == 0 and p.stdout.split() == ["wgtest0"], p.stdout + p.stderr


# -- config files by name, as wg-quick ----------------------------------------------------------------------
def test_a_bare_interface_name_finds_its_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    wg, etc = tmp_path / "wireguard", tmp_path / "pyvpn"
    wg.mkdir()
    etc.mkdir()
    monkeypatch.setattr(cli, "CONFIG_DIRS", (wg, etc))
    monkeypatch.chdir(tmp_path)
    (etc / "wg1.conf").write_text("")
    assert cli.find_config(Path("wg1")) == etc / "wg1.conf"
    (wg / "wg1.conf").write_text("")
    assert cli.find_config(Path("wg1")) == wg / "wg1.conf"  # /etc/wireguard first, as wg-quick
    (tmp_path / "wg1").write_text("")  # a file of that name here wins
    assert cli.find_config(Path("wg1")) == Path("wg1")
    assert cli.find_config(Path("nope.conf")) == Path("nope.conf")  # a file name stays a file name
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(cli, "_run", lambda *a: calls.append(a))
    r = runner.invoke(cli.app, ["client", "wg2"])  # _run is what resolves: here it is replaced
    assert r.exit_code == 0 and str(calls[0][0]) == "wg2"
    monkeypatch.undo()
    monkeypatch.setattr(cli, "CONFIG_DIRS", (wg, etc))
    r = runner.invoke(cli.app, ["client", "wg2"])
    assert r.exit_code == 1
    assert r.output == f"pyvpn: wg2: no such file, nor {wg}/wg2.conf or {etc}/wg2.conf\n"


# -- every config key, listed from the parser's tables -------------------------------------------------------
def _sample_value(section: str, lkey: str) -> str:
    return {"privatekey": "A" * 43 + "=", "publickey": "B" * 43 + "=", "presharedkey": "C" * 43 + "=",
            "listenport": "51820", "address": "198.19.0.1/24", "mtu": "1400", "allowedips": "198.19.0.2/32",
            "endpoint": "198.18.0.2:51820", "persistentkeepalive": "25", "vni": "100", "tap": "tap100",
            "port": "4789", "vlan": "10", "macage": "300", "maclimit": "100", "maclimitperpeer": "10",
            "broadcastrateperpeer": "100", "broadcastburstperpeer": "200", "broadcastrate": "100",
            "broadcastburst": "200", "fwmark": "off", "table": "auto",
            "saveconfig": "false", "forward": "on", "offload": "auto", "loglevel": "info", "metrics": ":9586",
            "pool4": "100.64.0.0/24", "pool6": "fd00:64::/64", "publicendpoint": "vpn.example.com:51820",
            "mode": "tunnel", "vtep": "198.19.0.2", "namespace": "ns1", "user": "nobody", "name": "x1",
            "peers": "x1", "dns": "198.19.0.1", "bridge": "br0", "local": "198.18.0.1",
            "remote": "198.18.0.2"}.get(lkey, "true")


def test_every_key_the_parser_accepts_is_listed_and_explained() -> None:
    listed = {(title, k) for title, rows in config_keys() for k, _ in rows}
    text = keys_text()
    help_texts = [runner.invoke(cli.app, argv, env={"COLUMNS": "80"}).stdout
                  for argv in (["client", "--help"], ["server", "run", "--help"])]
    n = 0
    for (kind, pyvpn), table in _TABLES.items():
        for lkey in table:
            n += 1
            spelled, meaning = KEY_DOCS[(kind, pyvpn)][lkey]
            assert spelled.lower() == lkey and meaning, (kind, lkey)
            shown = ("#pyvpn " if pyvpn else "") + spelled
            assert any(k == shown for _, k in listed), shown
            assert any(line.split()[:2 if pyvpn else 1] == shown.split() for line in text.splitlines()), shown
            for h in help_texts:
                assert spelled in h.replace(",", " ").split(), (shown, h)
    assert n == len(listed) > 35
    # and the parser takes each listed key where the listing puts it
    for (kind, pyvpn), table in _TABLES.items():
        for lkey in table:
            spelled = KEY_DOCS[(kind, pyvpn)][lkey][0]
            line = ("#pyvpn " if pyvpn else "") + f"{spelled} = {_sample_value(kind, lkey)}"
            text = "[Interface]\nPrivateKey = " + "A" * 43 + "=\n"
            if kind == "interface":
                text += line + "\n" if lkey != "privatekey" else ""
            elif kind == "peer":
                text += "[Peer]\n" + ("PublicKey = " + "B" * 43 + "=\n" if lkey != "publickey" else "") + line + "\n"
            else:
                text += "Address = 198.19.0.1/24\n[Peer]\n#pyvpn Name = x1\nPublicKey = " + "B" * 43 + "=\n"
                text += "AllowedIPs = 198.19.0.2/32\n#pyvpn [Segment]\n"
                text += "".join(f"#pyvpn {k} = {v}\n" for k, v in (("VNI", "100"), ("Tap", "tap100"))
                                if k.lower() != lkey)
                text += line + "\n"
                if lkey in ("local", "remote"):
                    text += "#pyvpn Mode = plain\n" + ("#pyvpn Remote = 198.18.0.2\n" if lkey == "local"
                                                       else "#pyvpn Local = 198.18.0.1\n")
            try:
                parse_config(text)
            except ConfigError as e:
                assert "unknown key" not in e.reason, (line, e)


def test_config_keys_command_prints_the_listing() -> None:
    r = runner.invoke(cli.app, ["config-keys"])
    assert r.exit_code == 0 and r.stdout == keys_text()
    assert "  #pyvpn Namespace" in r.stdout and "PersistentKeepalive" in r.stdout


# -- --qr alone ----------------------------------------------------------------------------------------------
def test_qr_alone_says_the_config_was_not_saved(tmp_path: Path) -> None:
    pytest.importorskip("qrcode")
    conf = tmp_path / "srv.conf"
    assert runner.invoke(cli.app, ["server", "init", "--config", str(conf), "--endpoint", "198.18.0.1"]).exit_code == 0
    r = runner.invoke(cli.app, ["server", "add-client", "alice", "-c", str(conf), "--qr"])
    assert r.exit_code == 0, r.output
    assert "was not saved anywhere" in r.stderr and "--out FILE" in r.stderr
    r = runner.invoke(cli.app, ["server", "add-client", "bob", "-c", str(conf), "--qr", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0 and "not saved" not in r.stderr


def test_list_clients_never_cuts_keys_or_addresses(tmp_path: Path) -> None:
    conf = tmp_path / "srv.conf"
    assert runner.invoke(cli.app, ["server", "init", "--config", str(conf), "--endpoint", "198.18.0.1",
                                   "--pool6", "fd00:6464:6464:6464::/64"]).exit_code == 0
    for name in ("alice", "bob-with-a-long-name"):
        assert runner.invoke(cli.app, ["server", "add-client", name, "-c", str(conf), "--out",
                                       str(tmp_path / name)]).exit_code == 0
    r = runner.invoke(cli.app, ["server", "list-clients", "-c", str(conf), "--json"])
    import json

    rows = json.loads(r.stdout)
    r = runner.invoke(cli.app, ["server", "list-clients", "-c", str(conf)], env={"COLUMNS": "80"})
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    for row in rows:
        for s in (row["public_key"], *row["addresses"], row["name"]):
            assert any(s in ln for ln in lines), s
        assert f"  public key: {row['public_key']}" in lines
    assert "…" not in r.stdout


# -- logs ----------------------------------------------------------------------------------------------------
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _log_lines(stream: Any, environ: dict[str, str]) -> list[str]:
    """Four records at four levels through :func:`vpn.logs.setup` into ``stream``; what it got."""
    logs.setup("debug", stream=stream, environ=environ)
    try:
        log = logging.getLogger("pyvpn")
        log.debug("dbg")
        log.info("up")
        log.warning("careful\nsecond line")
        log.error("broken")
    finally:
        logs.setup("info")
    stream.seek(0)
    return str(stream.read()).splitlines()


def test_logs_for_a_pipe_have_levels_and_no_time_or_colour() -> None:
    lines = _log_lines(io.StringIO(), {})
    assert lines == ["DEBUG dbg", "INFO up", "WARNING careful", "second line", "ERROR broken"]


def test_logs_for_a_terminal_have_the_time() -> None:
    lines = _log_lines(_Tty(), {})
    assert len(lines) == 5 and lines[1].endswith(" INFO    up") and lines[1][2] == ":" and lines[1][5] == ":"


def test_logs_for_the_journal_carry_syslog_priorities(tmp_path: Path) -> None:
    with open(tmp_path / "journal", "w+") as f:
        st = os.fstat(f.fileno())
        lines = _log_lines(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert lines == ["<7>dbg", "<6>up", "<4>careful", "<4>second line", "<3>broken"]
    # JOURNAL_STREAM inherited by a process whose stderr goes elsewhere: not the journal
    assert _log_lines(io.StringIO(), {"JOURNAL_STREAM": "1:2"})[1] == "INFO up"


def test_one_handler_however_often_set_up() -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    logs.setup("info")
    logs.setup("debug")
    logs.setup("info")
    assert len(root.handlers) <= before + 1


# -- systemd -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_reaches_the_socket(tmp_path: Path, abstract: bool) -> None:
    name = f"@pyvpn-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name[1:] if abstract else name)
        s.settimeout(2)
        assert notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": name})
        assert s.recv(4096) == b"READY=1\nSTATUS=up"
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})  # no manager: ignored
    assert not notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"})


def test_units_are_generated_notify_and_reload() -> None:
    for role in ("server", "client"):
        text = unit_text(role)
        assert (ROOT / "configs" / "systemd" / unit_name(role)).read_text() == text, \
            "configs/systemd is vpn/systemd.py's output: regenerate it"
        assert "Type=notify\n" in text and "ExecReload=/bin/kill -HUP $MAINPID\n" in text
        assert f"ExecStart=/opt/x/bin/pyvpn {role} /etc/pyvpn/%i.conf\n" in unit_text(role, "/opt/x/bin/pyvpn")
    with pytest.raises(ValueError):
        unit_text("server", "/opt/my dir/pyvpn")
    with pytest.raises(ValueError):
        unit_text("hub")


def test_systemd_unit_command_uses_the_installed_pyvpn() -> None:
    p = pyvpn("systemd-unit", "server")
    assert p.returncode == 0, p.stderr
    (line,) = [ln for ln in p.stdout.splitlines() if ln.startswith("ExecStart=")]
    exe = line.split("=", 1)[1].split()[0]
    assert Path(exe).is_absolute() and os.access(exe, os.X_OK) and Path(exe).name == "pyvpn"
    assert p.stdout == unit_text("server", exe)
    assert "ROLE must be server or client" in one_line_error(pyvpn("systemd-unit", "hub"))
