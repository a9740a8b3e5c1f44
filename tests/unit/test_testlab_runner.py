"""The lab's one pyvpn runner (vpn/testlab/pyvpn.py ``Pyvpn``) without root: what it starts, with which
environment and log, and how it stops (a stand-in namespace runs the command on the host)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vpn.testlab.commands import pyvpn_argv
from vpn.testlab.pyvpn import HarnessError, Pyvpn, PyvpnWg, close_all

# Prints its argv and two environment variables as JSON, then waits for a signal.
_CHILD = ("import json, os, sys, time; print(json.dumps({'argv': sys.argv[1:], 'keep': os.environ.get('KEEP'), "
          "'gone': os.environ.get('GONE'), 'set': os.environ.get('SET')}), flush=True); time.sleep(30)")


class HostNs:
    """Duck-typed :class:`vpn.testlab.netns.Netns`: runs the command on the host, in its own session."""

    name = "host"

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def popen(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p


def _first_json(d: Pyvpn) -> dict[str, Any]:
    """The child's report (bounded wait: 10 s)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        lines = [ln for ln in d.log().splitlines() if ln.startswith("{")]
        if lines:
            return dict(json.loads(lines[0]))
        time.sleep(0.05)
    raise AssertionError(d.log())


def test_runner_argv_env_log_and_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEP", "kept")
    monkeypatch.setenv("GONE", "here")
    conf = tmp_path / "pvt000001.conf"
    conf.write_text("[Interface]\n")
    d = Pyvpn(HostNs(), "server", config=conf, command=[sys.executable, "-c", _CHILD],  # type: ignore[arg-type]
              args=("--user", "nobody"), log_level="info", env={"GONE": None, "SET": "1"})
    assert d.ifname == "pvt000001" and d.logfile == tmp_path / "pvt000001.log"
    try:
        d.start(wait=False)
        seen = _first_json(d)
        assert seen == {"argv": ["server", str(conf), "-l", "info", "--user", "nobody"], "keep": "kept",
                        "gone": None, "set": "1"}
        assert d.log().startswith("--- start 1: ")
        assert d.running()
        with pytest.raises(HarnessError, match="already running"):
            d.start(wait=False)
        assert d.stop(signal.SIGTERM) == -signal.SIGTERM and not d.running()
        d.log_level = None  # restarted without -l, the log appended
        d.start(wait=False)
        assert "--- start 2: " in d.log() and "-l info" not in d.log().split("--- start 2: ")[1]
    finally:
        close_all([d])
    assert not d.running()


def test_runner_text_is_written_private(tmp_path: Path) -> None:
    d = Pyvpn(HostNs(), "client", "[Interface]\n", ifname="pvc000001", workdir=tmp_path)  # type: ignore[arg-type]
    assert d.config == tmp_path / "pvc000001.conf" and d.config.stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError):
        Pyvpn(HostNs(), "client", "[Interface]\n", workdir=tmp_path)  # type: ignore[arg-type]  # no ifname


def test_wait_ready_reports_an_early_exit(tmp_path: Path) -> None:
    conf = tmp_path / "pvt000002.conf"
    conf.write_text("")
    d = Pyvpn(HostNs(), "server", config=conf, command=[sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
              start_timeout=5.0)  # type: ignore[arg-type]
    with pytest.raises(HarnessError, match="exited 3") as e:
        d.start()
    assert "boom" in str(e.value)


def test_pyvpn_wg_has_no_config_file(tmp_path: Path) -> None:
    d = PyvpnWg(HostNs(), "pvw000001", logfile=tmp_path / "w.log", env={"LOG_LEVEL": "verbose"})  # type: ignore[arg-type]
    assert d.argv() == [*pyvpn_argv("pyvpn-wg"), "-f", "pvw000001"] and d.config is None
    assert Path(d.argv()[0]).name == "pyvpn-wg" or d.argv()[1:3] == ["-m", "vpn.wgcompat"]
    with pytest.raises(HarnessError, match="no config file"):
        Pyvpn(HostNs(), "server", ifname="pvs000001", logfile=tmp_path / "s.log").argv()  # type: ignore[arg-type]
