"""``pyvpn-wg`` as wg-quick's userspace implementation, and its life cycle as a wireguard-go stand-in.

1. ``WG_QUICK_USERSPACE_IMPLEMENTATION=pyvpn-wg wg-quick up IFACE.conf`` inside a namespace brings a
   tunnel up against wireguard-go or a ``pyvpn server``; pings go both ways over IPv4 and IPv6;
   ``wg-quick down`` removes the link, and the daemon notices, exits and removes its socket.  With
   ``AllowedIPs = 0.0.0.0/0, ::/0`` wg-quick adds its fwmark policy routing and nft rules (inside the
   namespace), which needs ``wg set IFACE fwmark`` to reach our UDP socket; the server's underlay,
   reachable only through the client's default route, is then reached through the tunnel.
2. The life cycle, without a peer: ``pyvpn-wg IFACE`` returns only once the link and the UAPI socket
   exist; a socket in use by a live process (the same name in another namespace) is refused with a
   clear message; a stale socket file is replaced; ``ip link del`` and SIGTERM each end the daemon
   within seconds with its link and socket gone; ``-f`` and ``WG_PROCESS_FOREGROUND=1`` stay in the
   foreground.

The client namespace reaches the server (198.18.1.1) only through its default route, as a real host
would, so that a /0 tunnel without working fwmark routing could not reach its own endpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from vpn.testlab.configs import WgPeer, wg_quick_file
from vpn.testlab.keys import Keys
from vpn.testlab.netns import Netns, namespaces, veth, wait_for
from vpn.testlab.pyvpn import CLI4, CLI6, SRV4, SRV6, PyvpnFile, workdir
from vpn.testlab.traffic import ping_ok
from vpn.testlab.wggo import WireguardGo, unique_ifname
from vpn.util import socket_is_live

pytestmark = [
    pytest.mark.root,
    pytest.mark.interop,
    pytest.mark.skipif(os.path.exists("/sys/module/wireguard"),
                       reason="kernel WireGuard is loaded: wg-quick would use it, not pyvpn-wg"),
]

WG_RUN_DIR = Path("/var/run/wireguard")
SERVER_UL = "198.18.1.1"
EXIT_TIMEOUT = 5.0  # seconds for the daemon to notice and exit
CMD_TIMEOUT = 15.0


def _sock(name: str) -> Path:
    return WG_RUN_DIR / f"{name}.sock"


def _link(ns: Netns, name: str) -> bool:
    return ns.run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _daemon_pids(ns: Netns, name: str) -> list[int]:
    """Pids of ``pyvpn-wg [-f] NAME`` processes inside ``ns``."""
    found = []
    for pid in ns.pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"pyvpn-wg") for a in argv) and name.encode() in argv:
            found.append(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive for our purpose (the daemon's parent is ``ip netns exec``'s, long gone).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _gone(ns: Netns, name: str, pid: int) -> bool:
    return not _alive(pid) and not _sock(name).exists() and not _link(ns, name)


def _stale_socket(path: Path) -> None:
    """Leave a socket file at ``path`` that nobody listens on (a daemon that was SIGKILLed)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


def _routed_hosts(srv: Netns, cli: Netns) -> None:
    """Server 198.18.1.1/24, client 198.18.0.2/24 reaching it only through ``default via 198.18.1.1``."""
    veth(srv, "eth0", cli, "eth0")
    srv.run(f"ip addr add {SERVER_UL}/24 dev eth0")
    srv.run("ip route add 198.18.0.0/24 dev eth0")
    cli.run("ip addr add 198.18.0.2/24 dev eth0")
    cli.run(f"ip route add default via {SERVER_UL} dev eth0 onlink")


def _wg_quick(ns: Netns, action: str, conf: Path) -> subprocess.CompletedProcess[str]:
    return ns.run(["env", "WG_QUICK_USERSPACE_IMPLEMENTATION=pyvpn-wg", "LOG_LEVEL=error", "wg-quick", action,
                   str(conf)], check=False, timeout=CMD_TIMEOUT)


# -- 1. wg-quick ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("peer_kind", "allowed"), [
    ("wireguard-go", "subnet"),
    ("wireguard-go", "default"),
    ("pyvpn", "subnet"),
])
def test_wg_quick_up_down(peer_kind: str, allowed: str) -> None:
    (ks, ps), (kc, pc) = Keys.new(), Keys.new()
    default = allowed == "default"
    with workdir() as d, namespaces("srv", "cli") as (srv, cli):
        _routed_hosts(srv, cli)
        srv.run("ip addr add 198.18.9.1/32 dev lo")  # behind the server: reachable through a /0 tunnel
        client_peer = WgPeer(pc, allowed_ips=[f"{CLI4}/32", f"{CLI6}/128"])
        if peer_kind == "pyvpn":
            sconf = d / f"{unique_ifname('pvs')}.conf"
            wg_quick_file(sconf, private_key=ks, listen_port=51820, address=[f"{SRV4}/24", f"{SRV6}/64"],
                          peers=[client_peer])
            peer: PyvpnFile | WireguardGo = PyvpnFile(srv, "server", sconf)
        else:
            peer = WireguardGo(srv, private_key=ks, listen_port=51820, address=[f"{SRV4}/24", f"{SRV6}/64"],
                               peers=[client_peer])
        with peer:
            name = unique_ifname("pvq")
            conf = d / f"{name}.conf"  # wg-quick takes the interface name from the file name
            listen_port = 51821 if peer_kind == "pyvpn" else None  # one case with a fixed port (a rebind)
            wg_quick_file(conf, private_key=kc, address=[f"{CLI4}/24", f"{CLI6}/64"], listen_port=listen_port,
                          peers=[WgPeer(ps, endpoint=f"{SERVER_UL}:51820", persistent_keepalive=25,
                                        allowed_ips=["0.0.0.0/0", "::/0"] if default
                                        else ["198.19.0.0/24", "fd00:19::/64"])])
            rules = (cli.run("ip -4 rule").stdout, cli.run("ip -6 rule").stdout)
            up = _wg_quick(cli, "up", conf)
            try:
                assert up.returncode == 0, up.stderr
                assert f"pyvpn-wg {name}" in up.stderr  # the userspace implementation, not a kernel module
                (pid,) = _daemon_pids(cli, name)
                assert socket_is_live(_sock(name))
                dump = cli.run(["wg", "show", name, "dump"]).stdout.splitlines()
                head = dump[0].split("\t")
                assert head[1] == pc and head[3] == ("0xca6c" if default else "off")
                if listen_port is not None:
                    assert head[2] == str(listen_port) and f":{listen_port}" in cli.run(["ss", "-Hlun"]).stdout
                for ns, addr in ((cli, SRV4), (cli, SRV6), (srv, CLI4), (srv, CLI6)):
                    assert ping_ok(ns, addr, count=2), f"no ping from {ns.name} to {addr}"
                if default:
                    assert "lookup main suppress_prefixlength 0" in cli.run("ip -4 rule").stdout
                    assert f"dev {name}" in cli.run(["ip", "route", "get", SERVER_UL]).stdout
                    assert ping_ok(cli, SERVER_UL, count=2) and ping_ok(cli, "198.18.9.1", count=2)
                    assert f"wg-quick-{name}" in cli.run("nft list tables").stdout
                if isinstance(peer, WireguardGo):
                    st = peer.show().peer(pc)
                    assert st.latest_handshake > 0 and st.rx_bytes > 0 and st.tx_bytes > 0
                    assert st.endpoint is not None and st.endpoint.startswith("198.18.0.2:")
                else:
                    me = peer.peer(pc)
                    assert me is not None and me["latest_handshake"] > 0 and me["rx_packets"] >= 4
                mine = cli.run(["wg", "show", name, "dump"]).stdout.splitlines()[1].split("\t")
                assert mine[0] == ps and int(mine[4]) > 0 and int(mine[5]) > 0 and int(mine[6]) > 0
            finally:
                down = _wg_quick(cli, "down", conf)
            assert down.returncode == 0, down.stderr
            assert wait_for(lambda: _gone(cli, name, pid), EXIT_TIMEOUT), "pyvpn-wg survived wg-quick down"
            assert (cli.run("ip -4 rule").stdout, cli.run("ip -6 rule").stdout) == rules
            assert f"wg-quick-{name}" not in cli.run("nft list tables").stdout


# -- 2. life cycle -------------------------------------------------------------------------------------------
def test_lifecycle() -> None:
    with namespaces("wg1", "wg2") as (a, b):
        name = unique_ifname("pvw")
        sock = _sock(name)
        try:
            # Returns only once the link and the socket exist: no waiting here.
            r = a.run(["pyvpn-wg", name], check=False, timeout=CMD_TIMEOUT)
            assert r.returncode == 0, r.stderr
            assert _link(a, name) and socket_is_live(sock)
            (pid,) = _daemon_pids(a, name)
            head = a.run(["wg", "show", name, "dump"]).stdout.splitlines()[0].split("\t")
            assert head[0] == head[1] == "(none)" and int(head[2]) > 0  # no key yet, a random port

            # The same name in another namespace: the tun could be made there, but the socket is in use.
            r = b.run(["pyvpn-wg", name], check=False, timeout=CMD_TIMEOUT)
            assert r.returncode != 0
            assert f"UAPI socket {sock} is in use by a running process" in r.stderr, r.stderr
            assert not _link(b, name) and not _daemon_pids(b, name)
            assert _alive(pid) and socket_is_live(sock)

            # `ip link del` (what wg-quick down does) ends the daemon, which removes its socket.
            a.run(["ip", "link", "del", "dev", name])
            assert wait_for(lambda: _gone(a, name, pid), EXIT_TIMEOUT), "pyvpn-wg survived ip link del"

            # A stale socket file (a SIGKILLed daemon) is replaced; a file that is not a socket is refused.
            _stale_socket(sock)
            assert sock.exists() and not socket_is_live(sock)
            r = a.run(["pyvpn-wg", name], check=False, timeout=CMD_TIMEOUT)
            assert r.returncode == 0, r.stderr
            assert socket_is_live(sock)
            (pid,) = _daemon_pids(a, name)

            # SIGTERM: out within seconds, link and socket gone.
            os.kill(pid, signal.SIGTERM)
            assert wait_for(lambda: _gone(a, name, pid), EXIT_TIMEOUT), "pyvpn-wg survived SIGTERM"

            sock.write_text("not a socket\n")
            r = a.run(["pyvpn-wg", name], check=False, timeout=CMD_TIMEOUT)
            assert r.returncode != 0 and "is not a socket" in r.stderr, r.stderr
            assert not _link(a, name)
            sock.unlink()

            # -f / WG_PROCESS_FOREGROUND=1: the started process is the daemon and does not return.
            for argv, env in ((["pyvpn-wg", "-f", name], None),
                              (["pyvpn-wg", name], {**os.environ, "WG_PROCESS_FOREGROUND": "1"})):
                proc = a.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
                assert wait_for(lambda p=proc: socket_is_live(sock) or p.poll() is not None, EXIT_TIMEOUT)
                time.sleep(0.2)
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert _link(a, name)
                pids = _daemon_pids(a, name)
                assert len(pids) == 1  # no forked child (`ip netns exec` execs: proc is pyvpn-wg itself)
                assert pids[0] == proc.pid
                proc.send_signal(signal.SIGINT)
                assert proc.wait(EXIT_TIMEOUT) == 0
                assert not sock.exists() and not _link(a, name)
        finally:
            for ns in (a, b):
                for pid in _daemon_pids(ns, name):
                    os.kill(pid, signal.SIGKILL)
            if sock.exists() and not socket_is_live(sock):
                sock.unlink()


def test_pyvpn_server_exits_when_its_link_is_deleted() -> None:
    """The same rule for ``pyvpn server``: ``ip link del`` ends it, sockets removed, exit code 0."""
    k, _ = Keys.new()
    _, pc = Keys.new()
    with workdir() as d, namespaces("srv") as (srv,):
        conf = d / f"{unique_ifname('pvs')}.conf"
        wg_quick_file(conf, private_key=k, listen_port=51820, address=[f"{SRV4}/24"],
                      peers=[WgPeer(pc, allowed_ips=[f"{CLI4}/32"])])
        with PyvpnFile(srv, "server", conf) as server:
            srv.run(["ip", "link", "del", "dev", server.ifname])
            assert wait_for(lambda: server.proc.poll() is not None, EXIT_TIMEOUT), "pyvpn server survived"
            assert server.proc.returncode == 0
            assert not server.uapi_sock.exists() and not server.control_sock.exists()
