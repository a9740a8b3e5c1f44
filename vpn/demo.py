"""``pyvpn demo``: two network namespaces, a server and a client, traffic across the tunnel.

1. Build namespaces ``pvd<id>-srv`` and ``pvd<id>-cli`` joined by a veth (198.18.0.1/.2).
2. Generate keys and wg-quick configs (tunnel 198.19.0.0/24 and fd00:19::/64) in a private
   temporary directory, and start ``pyvpn server`` and ``pyvpn client`` in them.
3. Show the handshake, ping over IPv4 and IPv6, an L2 segment when tap mode is available, and a
   short iperf3 run with a live progress display; then a summary table.
4. Tear everything down, also on Ctrl-C or an error, unless ``--keep`` is given.

Every address is inside the two namespaces the demo creates.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crypto.keys import encode_key, private_from_random, public_from_private

from .testlab import configs
from .testlab.files import write_private
from .testlab.netns import LabError, Netns, netns_argv, stop_process, veth
from .testlab.pyvpn import HarnessError, Pyvpn, close_all

STATE_DIR = Path("/run/pyvpn-demo")


class DemoError(Exception):
    pass


def _run(argv: list[str], *, check: bool = True, timeout: float = 30.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise DemoError(f"{' '.join(argv)} failed: {(p.stderr or p.stdout).strip()}")
    return p


@dataclass
class Demo:
    console: Console
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)  # iperf3
    daemons: list[Pyvpn] = field(default_factory=list)
    namespaces: list[Netns] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def srv(self) -> str:
        return f"pvd{self.tag}-srv"

    @property
    def cli(self) -> str:
        return f"pvd{self.tag}-cli"

    @property
    def srv_if(self) -> str:
        return f"pvd{self.tag}s"[:15]

    @property
    def srv_tap(self) -> str:
        return f"pvd{self.tag}st"[:15]

    @property
    def cli_tap(self) -> str:
        return f"pvd{self.tag}ct"[:15]

    def l2_segment(self) -> float | None:
        """Give each side's tap an address on 100.64.100.0/24 and ping across the L2 segment."""
        for ns, tap, addr in ((self.srv, self.srv_tap, "100.64.100.1/24"), (self.cli, self.cli_tap, "100.64.100.2/24")):
            self.ns(ns, "ip", "addr", "add", addr, "dev", tap)
            self.ns(ns, "ip", "link", "set", tap, "up")
        return self.ping("100.64.100.1")

    @property
    def cli_if(self) -> str:
        return f"pvd{self.tag}c"[:15]

    def ns(self, ns: str, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return _run(netns_argv(ns, argv), **kw)

    # -- set-up --------------------------------------------------------------------------------
    def build(self) -> None:
        for name in (self.srv, self.cli):
            self.namespaces.append(Netns(name=name))
        srv, cli = self.namespaces
        veth(srv, "eth0", cli, "eth0")
        self.ns(self.srv, "ip", "addr", "add", "198.18.0.1/24", "dev", "eth0")
        self.ns(self.cli, "ip", "addr", "add", "198.18.0.2/24", "dev", "eth0")

    def write_configs(self) -> tuple[Path, Path]:
        self.workdir = Path(tempfile.mkdtemp(prefix="pyvpn-demo-"))
        s_priv = private_from_random(os.urandom(32))
        c_priv = private_from_random(os.urandom(32))
        s_pub, c_pub = public_from_private(s_priv), public_from_private(c_priv)
        srv = configs.config_text(
            configs.interface(encode_key(s_priv), listen_port=51820, addresses=["198.19.0.1/24", "fd00:19::1/64"],
                              name=self.srv_if),
            [configs.peer(encode_key(c_pub), name="demo-client", allowed_ips=["198.19.0.2/32", "fd00:19::2/128"])],
            [configs.segment(100, self.srv_tap)])
        cli = configs.config_text(
            configs.interface(encode_key(c_priv), addresses=["198.19.0.2/24", "fd00:19::2/64"], name=self.cli_if),
            [configs.peer(encode_key(s_pub), name="demo-server", endpoint="198.18.0.1:51820",
                          allowed_ips=["198.19.0.0/24", "fd00:19::/64"], persistent_keepalive=25)],
            [configs.segment(100, self.cli_tap)])
        paths = [write_private(self.workdir / name, text) for name, text in (("server.conf", srv),
                                                                              ("client.conf", cli))]
        return paths[0], paths[1]

    def start(self, role: str, conf: Path) -> Pyvpn:
        """``pyvpn ROLE CONF`` in the server or client namespace (the lab's runner; its output in ROLE.log)."""
        assert self.workdir is not None
        ns, ifname = (self.namespaces[0], self.srv_if) if role == "server" else (self.namespaces[1], self.cli_if)
        d = Pyvpn(ns, role, config=conf, ifname=ifname, logfile=self.workdir / f"{role}.log", log_level=None,
                  env={"PYVPN_LOG_LEVEL": os.environ.get("PYVPN_LOG_LEVEL")})
        self.daemons.append(d)
        d.start(wait=False)
        return d

    def show(self, iface: str) -> dict[str, Any] | None:
        d = next(d for d in self.daemons if d.ifname == iface)
        try:
            return d.show_json()
        except (HarnessError, ValueError):
            return None

    def wait_ready(self, iface: str, timeout: float = 15.0) -> None:
        try:
            next(d for d in self.daemons if d.ifname == iface).wait_ready(timeout)
        except HarnessError:
            raise DemoError(f"{iface} did not come up within {timeout:.0f}s:\n{self.logs()}") from None

    def wait_handshake(self, timeout: float = 15.0) -> float:
        start = time.monotonic()
        client = next(d for d in self.daemons if d.role == "client")
        while time.monotonic() - start < timeout:
            if not all(d.running() for d in self.daemons):
                raise DemoError(f"a pyvpn process exited early:\n{self.logs()}")
            snap = client.query()
            if snap and snap["peers"] and snap["peers"][0]["latest_handshake"]:
                return time.monotonic() - start
            time.sleep(0.1)
        raise DemoError(f"no handshake within {timeout:.0f}s:\n{self.logs()}")

    def logs(self) -> str:
        if self.workdir is None:
            return ""
        out = []
        for name in ("server.log", "client.log"):
            p = self.workdir / name
            if p.exists():
                out.append(f"--- {name}\n{p.read_text(errors='replace')[-2000:]}")
        return "\n".join(out)

    # -- traffic -------------------------------------------------------------------------------
    def ping(self, addr: str, count: int = 3) -> float | None:
        p = self.ns(self.cli, "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", addr, check=False, timeout=20)
        m = re.search(r"= [\d.]+/([\d.]+)/", p.stdout)
        return float(m.group(1)) if p.returncode == 0 and m else None

    def iperf(self, seconds: int) -> float | None:
        server = subprocess.Popen(netns_argv(self.srv, ["iperf3", "-s", "-1", "-B", "198.19.0.1"]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(server)
        time.sleep(0.3)
        argv = ["iperf3", "-c", "198.19.0.1", "-t", str(seconds), "-i", "0.5", "--forceflush", "-f", "m"]
        client = subprocess.Popen(netns_argv(self.cli, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True)
        self.procs.append(client)  # type: ignore[arg-type]
        result: float | None = None
        rate_re = re.compile(r"([\d.]+) Mbits/sec")
        with Progress(TextColumn("[bold]iperf3[/] through the tunnel"), BarColumn(),
                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=self.console,
                      transient=False) as progress:
            task = progress.add_task("iperf3", total=seconds, rate="")
            start = time.monotonic()
            assert client.stdout is not None
            for line in client.stdout:
                m = rate_re.search(line)
                if m and ("sender" in line or "receiver" in line):
                    if "receiver" in line:
                        result = float(m.group(1))
                    continue
                if m:
                    progress.update(task, completed=min(seconds, time.monotonic() - start),
                                    rate=f"{float(m.group(1)):.0f} Mbit/s")
                if time.monotonic() - start > seconds + 15:
                    break
            progress.update(task, completed=seconds)
        with contextlib.suppress(subprocess.TimeoutExpired):
            client.wait(5)
        return result

    # -- teardown ------------------------------------------------------------------------------
    def teardown(self) -> None:
        close_all(self.daemons)
        self.daemons = []
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            stop_process(p, 5.0)
        for ns in self.namespaces:
            ns.close()  # kills what still runs inside, then deletes it
        self.namespaces = []
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run_demo(*, keep: bool = False, seconds: int = 3, console: Console | None = None) -> int:
    console = console or Console()
    if os.geteuid() != 0:
        console.print("[red]pyvpn demo needs root[/] (it creates network namespaces and tun devices)")
        return 1
    for tool in ("ip", "ping", "iperf3"):
        if shutil.which(tool) is None:
            console.print(f"[red]pyvpn demo needs `{tool}`[/]; ./run.sh demo installs it")
            return 1
    demo = Demo(console)
    summary: dict[str, Any] = {}
    try:
        console.rule("[bold]pyvpn demo")
        with console.status("building namespaces"):
            demo.build()
        console.print(f"namespaces [cyan]{demo.srv}[/] (server, 198.18.0.1) and [cyan]{demo.cli}[/] "
                      "(client, 198.18.0.2) joined by a veth")
        s_conf, c_conf = demo.write_configs()
        demo.start("server", s_conf)
        with console.status("starting pyvpn server"):
            demo.wait_ready(demo.srv_if)
        demo.start("client", c_conf)
        with console.status("waiting for the WireGuard handshake"):
            hs = demo.wait_handshake()
        summary["handshake"] = f"{hs * 1000:.0f} ms after start"
        console.print(f"[green]handshake[/] completed ({summary['handshake']})")
        for label, addr in (("ping IPv4", "198.19.0.1"), ("ping IPv6", "fd00:19::1")):
            rtt = demo.ping(addr)
            summary[label] = f"{rtt:.3f} ms avg" if rtt is not None else "FAILED"
            console.print(f"[green]{label}[/] {addr}: {summary[label]}")
        rtt = demo.l2_segment()
        summary["L2 segment (VNI 100)"] = (f"ping across the tap devices {rtt:.3f} ms avg (ARP crossed the tunnel)"
                                           if rtt is not None else "FAILED")
        console.print(f"[green]L2 segment[/] VXLAN VNI 100 inside the tunnel, tap to tap: "
                      f"{summary['L2 segment (VNI 100)']}")
        rate = demo.iperf(seconds)
        summary["iperf3 TCP"] = f"{rate:.0f} Mbit/s" if rate is not None else "FAILED"
        snaps = [demo.show(demo.srv_if), demo.show(demo.cli_if)]
        table = Table(title="pyvpn demo summary")
        table.add_column("check")
        table.add_column("result")
        for k, v in summary.items():
            table.add_row(k, v)
        for label, snap in zip(("server", "client"), snaps, strict=True):
            if snap and snap["peers"]:
                p = snap["peers"][0]
                drops = snap.get("drops", {})
                why = ", ".join(f"{k}: {v}" for k, v in sorted(drops.items())) or "none"
                if snap.get("ignored"):  # expected, not drops (vpn/drops.py; `pyvpn show` explains them)
                    why += f" (expected, ignored: {sum(snap['ignored'].values())})"
                table.add_row(f"{label} transfer", f"{p['rx_bytes']} B received, {p['tx_bytes']} B sent; "
                              f"drops: {why}")
                for seg in snap.get("segments", []):
                    table.add_row(f"{label} VNI {seg.get('vni')}", f"{seg.get('macs', 0)} MACs learned on "
                                  f"{seg.get('tap')}")
                if snap.get("offloads") is not None:
                    table.add_row(f"{label} offloads", ", ".join(snap["offloads"]) or "none")
        console.print(table)
        ok = all("FAILED" not in v for v in summary.values())
        if keep:
            console.print(f"[bold]--keep[/]: left running. Try: [cyan]ip netns exec {demo.cli} ping 198.19.0.1[/], "
                          f"[cyan]pyvpn show[/]. Remove with: [cyan]ip netns del {demo.srv}; ip netns del "
                          f"{demo.cli}[/] after killing the pyvpn processes (pids "
                          f"{', '.join(str(d.pid) for d in demo.daemons)}).")
            demo.daemons = []
            demo.procs = []
            demo.namespaces = []
            demo.workdir = None
        return 0 if ok else 1
    except (DemoError, LabError) as e:
        console.print(f"[red]demo failed:[/] {e}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        if not keep or demo.namespaces:
            with console.status("tearing down"):
                demo.teardown()
            console.print("torn down: namespaces, processes and configs removed")
