"""The real ``pyvpn`` CLI against running daemons, as an operator meets it (issue 15).

1. ``pyvpn show``: one ``pyvpn server`` in a namespace with four peers whose AllowedIPs and endpoints
   are long (IPv6), then the real CLI: in a pipe, on an 80-column pseudo-terminal and on a wide one,
   every full key, endpoint and AllowedIP appears whole on one line; one peer by name or key prefix;
   ``--json`` checked against docs/show-json.md; as an unprivileged user, a one-line "permission
   denied", not "no running interfaces".  No peer is running: nothing is sent anywhere.
2. A namespace that does not exist (``--netns`` or ``#pyvpn Namespace``): one line, no traceback.
3. Readiness: the daemon sends ``READY=1`` to ``NOTIFY_SOCKET`` once up and ``STOPPING=1`` on SIGTERM;
   its log (a file, not a terminal) has levels and no time stamps.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vpn.testlab.commands import command_env, pyvpn_argv, run_pyvpn, run_pyvpn_tty
from vpn.testlab.configs import PeerSpec, conf_text, endpoint
from vpn.testlab.keys import Keys
from vpn.testlab.netns import namespaces
from vpn.testlab.pyvpn import Fleet, Pyvpn, unique_ifname
from vpn.testlab.show_schema import check_object, documented_schema

pytestmark = pytest.mark.root


@contextmanager
def server() -> Iterator[tuple[Pyvpn, list[PeerSpec]]]:
    with namespaces("show") as (ns,), Fleet() as fleet:
        peers = []
        for i in range(1, 5):
            peers.append(PeerSpec(
                Keys.new().public,
                [f"198.19.{i}.0/24", f"fd00:19:{i}::/64", f"fd00:aaaa:bbbb:cccc:{i}::/80"],
                endpoint=endpoint(f"fd00:18:1234:5678:9abc:def0:1234:{i}", 51820 + i) if i % 2 else None,
                name=f"client-{i}" if i != 2 else None))
        srv = fleet.add(ns, "server", listen_port=51820, addresses=["198.19.0.1/16", "fd00:19::1/48"], peers=peers)
        try:
            yield srv, peers
        except BaseException:
            print(fleet.logs())
            raise


def must_appear(srv: Pyvpn, peers: list[PeerSpec]) -> list[str]:
    assert srv.keys is not None
    out = [srv.keys.public]
    for p in peers:
        out.append(p.public_key)
        out.extend(p.allowed_ips)
        if p.endpoint:
            out.append(p.endpoint)
    return out


def cut(text: str, strings: list[str]) -> list[str]:
    """Those of ``strings`` that are not whole on one line of ``text``."""
    lines = text.splitlines()
    return [s for s in strings if not any(s in ln for ln in lines)]


def test_show_never_cuts_keys_endpoints_or_allowed_ips() -> None:
    with server() as (srv, peers):
        whole = must_appear(srv, peers)
        # a pipe
        p = run_pyvpn("show", srv.ifname)
        assert p.returncode == 0 and p.stderr == "", p.stderr
        assert cut(p.stdout, whole) == []
        assert "…" not in p.stdout
        for peer in peers:  # `pyvpn show | grep KEY` finds the peer's block header
            assert [ln for ln in p.stdout.splitlines() if peer.public_key in ln] == [f"peer: {peer.public_key}"]
        every = run_pyvpn("show")  # all interfaces (other tests' may come and go meanwhile)
        assert every.returncode == 0 and cut(every.stdout, whole) == []
        # an 80-column terminal: blocks
        code, text = run_pyvpn_tty("show", srv.ifname, columns=80)
        assert code == 0, text
        assert cut(text, whole) == [] and "…" not in text
        assert f"peer: {peers[0].public_key}" in text and "┃" not in text
        # a wide terminal: the table, still whole
        code, text = run_pyvpn_tty("show", srv.ifname, columns=250)
        assert code == 0, text
        assert "┃" in text and cut(text, whole) == []


def test_show_one_peer_by_name_or_key_prefix_and_json_schema() -> None:
    with server() as (srv, peers):
        third = peers[2]
        for args in (("show", srv.ifname, "client-3"), ("show", "client-3"), ("show", third.public_key[:12])):
            p = run_pyvpn(*args)
            assert p.returncode == 0, (args, p.stderr)
            assert f"peer: {third.public_key}" in p.stdout, args
            assert all(o.public_key not in p.stdout for o in peers if o is not third), args
        p = run_pyvpn("show", srv.ifname, "nobody")
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr.count("\n") == 1 and "no peer is named 'nobody'" in p.stderr

        schema = documented_schema(1)
        p = run_pyvpn("show", srv.ifname, "--json")
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        check_object(doc, "interface", schema, "interface")
        assert doc["schema_version"] == 1 and len(doc["peers"]) == 4
        assert {pp["public_key"] for pp in doc["peers"]} == {pe.public_key for pe in peers}
        p = run_pyvpn("show", third.public_key[:12], "--json")  # a peer on any interface: a list
        (one,) = json.loads(p.stdout)
        check_object(one, "interface", schema, "interface")
        assert one["interface"] == srv.ifname and [pp["name"] for pp in one["peers"]] == ["client-3"]


def test_show_as_an_unprivileged_user_says_why() -> None:
    with server() as (srv, _peers):
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *pyvpn_argv(), "show"]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=command_env(), check=False)
        assert p.returncode == 1, p.stdout
        assert "permission denied" in p.stderr and "run as root" in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1 and "no running" not in p.stderr
        assert srv.running()


def test_a_namespace_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    with namespaces("nons") as (ns,):
        keys = Keys.new()
        missing = f"pyvpn-missing-{ns.name[-6:]}"
        for extra, args in (((), ("--netns", missing)), ((f"#pyvpn Namespace = {missing}",), ())):
            ifname = unique_ifname("pvn")
            conf = tmp_path / f"{ifname}.conf"
            conf.write_text(conf_text(ifname=ifname, private_key=keys.private, addresses=["198.19.0.1/24"],
                                      extra=extra))
            conf.chmod(0o600)
            p = ns.run([*pyvpn_argv(), "client", str(conf), *args], check=False, timeout=30)
            assert p.returncode == 1, p.stdout + p.stderr
            assert "Traceback" not in p.stderr and len(p.stderr.splitlines()) <= 3, p.stderr
            last = p.stderr.splitlines()[-1]
            assert last.startswith("pyvpn: ") and f"network namespace '{missing}' does not exist" in last, last
            assert ns.run(["ip", "link", "show", ifname], check=False).returncode != 0  # nothing left behind


def test_the_daemon_notifies_readiness_and_logs_for_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, namespaces("ntfy") as (ns,), Fleet() as fleet:
        sock.bind(str(path))
        sock.settimeout(15)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))  # the harness passes its environment on
        d = fleet.add(ns, "server", listen_port=51820, addresses=["198.19.0.1/24"],
                      peers=[PeerSpec(Keys.new().public, ["198.19.0.2/32"])])
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\n") and f"STATUS=server {d.ifname} up" in ready, ready
        assert d.terminate() == 0
        assert sock.recv(4096) == b"STOPPING=1"
        log = [ln for ln in d.log().splitlines() if not ln.startswith("--- start")]
        assert any(ln.startswith("INFO ") and "server up" in ln for ln in log), log
        assert all(ln.split(" ", 1)[0] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") for ln in log
                   if ln and not ln.startswith(" ")), log
