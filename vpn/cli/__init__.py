"""The ``pyvpn`` command (typer).  Thin: parse options, load the config, call the library.

The commands that manage a server's clients (``pyvpn server init|add-client|...``) are in
:mod:`vpn.cli.clients`; ``python -m vpn.cli`` runs :func:`main` (``__main__.py``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from crypto.errors import KeyFormatError
from crypto.keys import decode_key, encode_key, private_from_random, public_from_private

from .clients import clients_app
from .common import HELP_OPTIONS, fail

app = typer.Typer(no_args_is_help=True, context_settings=HELP_OPTIONS,
                  help="pyvpn: a userspace VPN that speaks WireGuard, with L2 bridging over VXLAN.",
                  epilog="Config files are wg-quick's; `pyvpn config-keys` lists every key. "
                         "Shell completion: pyvpn --install-completion.")

LOG_LEVELS = ["debug", "info", "warning", "error"]
METRICS_HELP = "serve Prometheus metrics on HOST:PORT (:PORT means 127.0.0.1; no authentication)"
# Where `pyvpn client wg0` looks for wg0.conf when no such file is here (wg-quick: /etc/wireguard).
CONFIG_DIRS = (Path("/etc/wireguard"), Path("/etc/pyvpn"))
_IFNAME = re.compile(r"[A-Za-z0-9_=+.-]{1,15}")  # wg-quick's test for "a name, not a path"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("pyvpn-userspace")
        except PackageNotFoundError:  # run from a checkout without installing
            v = "unknown (not installed)"
        typer.echo(f"pyvpn {v}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", "-V", is_eager=True, callback=_version,
                                                help="print the version and exit")] = False) -> None:
    """pyvpn: a userspace VPN that speaks WireGuard, with L2 bridging over VXLAN."""


def setup_logging(level: str) -> None:
    """``level`` for pyvpn's own loggers, in the form :mod:`vpn.logs` picks for where stderr goes."""
    from ..logs import setup

    setup(level)


# -- keys -------------------------------------------------------------------------------------
@app.command()
def genkey() -> None:
    """Print a new private key (base64), like `wg genkey`."""
    typer.echo(encode_key(private_from_random(os.urandom(32))))


@app.command()
def pubkey() -> None:
    """Read a private key on stdin and print its public key, like `wg pubkey`."""
    try:
        typer.echo(encode_key(public_from_private(decode_key(sys.stdin.read(), what="private key"))))
    except KeyFormatError as e:
        fail(str(e))


@app.command()
def genpsk() -> None:
    """Print a new preshared key (base64), like `wg genpsk`."""
    typer.echo(encode_key(os.urandom(32)))


# -- daemons ----------------------------------------------------------------------------------
def _log_level(value: str | None) -> str | None:
    if value is not None and value.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value.lower() if value is not None else None


LogLevelOpt = Annotated[str | None, typer.Option(
    "--log-level", "-l", envvar="PYVPN_LOG_LEVEL", callback=_log_level, metavar="LEVEL",
    help="debug, info, warning or error (default: the config's '#pyvpn LogLevel', else info)")]


def find_config(arg: Path) -> Path:
    """``arg`` itself when it exists; for a bare interface name (``wg0``), ``wg0.conf`` in
    :data:`CONFIG_DIRS`, as ``wg-quick up wg0`` finds ``/etc/wireguard/wg0.conf``."""
    if arg.exists() or "/" in str(arg) or arg.suffix == ".conf" or not _IFNAME.fullmatch(str(arg)):
        return arg
    for d in CONFIG_DIRS:
        candidate = d / f"{arg}.conf"
        if candidate.exists():
            return candidate
    where = " or ".join(str(d / f"{arg}.conf") for d in CONFIG_DIRS)
    fail(f"{arg}: no such file, nor {where}")
    return arg


def _run(config: Path, role: str, log_level: str | None, netns: str | None, metrics: str | None,
         user: str | None) -> None:
    from tunnel.netconf import NetconfError

    from ..config import ConfigError, load_config
    from ..daemon import run_daemon
    from ..interface import DaemonError

    try:
        cfg = load_config(find_config(config))
    except ConfigError as e:
        fail(str(e))
        return
    setup_logging(log_level or getattr(cfg.interface, "log_level", None) or "info")
    try:
        code = run_daemon(cfg, role=role, netns=netns, metrics=metrics, user=user)
    except DaemonError as e:
        fail(str(e))
        return
    except NetconfError as e:  # e.g. a Namespace that does not exist: the kernel's word, one line
        fail(e.strerror or str(e))
        return
    raise typer.Exit(code)


class _ServerGroup(TyperGroup):
    """``pyvpn server CONFIG [OPTIONS]`` runs the daemon; ``pyvpn server COMMAND ...`` manages clients.

    A click group cannot have an optional positional argument before its sub-commands (it would
    swallow ``init`` as the CONFIG), so anything that is not a sub-command name is handed to the
    ``run`` command.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's click Context
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: Any, formatter: Any) -> None:
        formatter.write_usage(ctx.command_path, "CONFIG [OPTIONS] | COMMAND [ARGS]...")


server_app = typer.Typer(cls=_ServerGroup, add_completion=False, no_args_is_help=True, context_settings=HELP_OPTIONS,
                         help="Run a server (`pyvpn server CONFIG`: a hub for many clients), or manage its clients.")
app.add_typer(server_app, name="server")


# The options `pyvpn server run` and `pyvpn client` share.
RunConfigArg = Annotated[Path, typer.Argument(help="wg-quick style config file, or a name: wg0 is "
                                                   "/etc/wireguard/wg0.conf or /etc/pyvpn/wg0.conf")]
RunNetnsOpt = Annotated[str | None, typer.Option(help="put the tunnel interface into this netns")]
RunMetricsOpt = Annotated[str | None, typer.Option(help=METRICS_HELP)]
RunUserOpt = Annotated[str | None, typer.Option(help="drop privileges to this user after set-up")]

def _keys_epilog() -> str:
    from ..config_keys import keys_summary

    return "Config keys (pyvpn config-keys explains each):\n\n" + keys_summary()


@server_app.command("run", epilog=_keys_epilog())
def server(config: RunConfigArg, log_level: LogLevelOpt = None, netns: RunNetnsOpt = None,
           metrics: RunMetricsOpt = None, user: RunUserOpt = None) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM (`pyvpn server CONFIG` does the same)."""
    _run(config, "server", log_level, netns, metrics, user)


server_app.add_typer(clients_app)  # init, add-client, ... after run (vpn/cli/clients.py)


@app.command(epilog=_keys_epilog())
def client(config: RunConfigArg, log_level: LogLevelOpt = None, netns: RunNetnsOpt = None,
           metrics: RunMetricsOpt = None, user: RunUserOpt = None) -> None:
    """Run `pyvpn client CONFIG` in the foreground until SIGINT/SIGTERM."""
    _run(config, "client", log_level, netns, metrics, user)


# -- status -----------------------------------------------------------------------------------
def _complete_interfaces(incomplete: str) -> list[str]:
    """Shell completion for ``pyvpn show IFACE``: the running interfaces (none when not root)."""
    from ..control import ControlError, list_interfaces

    try:
        return [name for name in list_interfaces() if name.startswith(incomplete)]
    except ControlError:
        return []


@app.command()
def show(iface: Annotated[str | None, typer.Argument(
            help="interface (default: all); a peer's name or key prefix when no interface has this name",
            autocompletion=_complete_interfaces)] = None,
         peer: Annotated[str | None, typer.Argument(help="only this peer: its name or the start of its key")] = None,
         as_json: Annotated[bool, typer.Option("--json", help="machine-readable output (docs/show-json.md)")] = False,
         ) -> None:
    """Show interfaces, peers, handshakes, transfer and drops, like `wg show`.

    Keys, endpoints and AllowedIPs are never cut: a terminal too narrow for the table, and a pipe,
    get one field per line (`pyvpn show | grep KEY` works).  `pyvpn show alice` or `pyvpn show wg0 LQjv`
    shows one peer.
    """
    from ..control import ControlError, list_interfaces, query
    from ..status import PeerNotFound, select_peers, show_json

    try:
        running = list_interfaces()
    except ControlError as e:
        fail(str(e))
        return
    implicit = iface is not None and peer is None and iface not in running
    if implicit:
        iface, peer = None, iface  # `pyvpn show alice`: a peer on any interface
        if not running:
            fail(f"no pyvpn interface {peer!r} is running (and no other to look for a peer of that name in)")
    names = [iface] if iface else running
    if not names:
        if as_json:
            typer.echo("[]")
            return
        fail("no running pyvpn interfaces")
    results: list[dict[str, Any]] = []
    for name in names:
        try:
            results.append(query(name))
        except ControlError as e:
            if iface is not None:
                fail(str(e))
            # Listing all: an interface that stopped since it was listed is skipped, not fatal.
            typer.echo(f"pyvpn: {name}: skipped: {e}", err=True)
    if not results and iface is None and not as_json:
        fail("no running pyvpn interfaces")
    if peer is not None:
        try:
            results = select_peers(results, peer)
        except PeerNotFound as e:
            fail(f"no pyvpn interface {peer!r} is running, and {e}" if implicit else str(e))
            return
    if as_json:
        # `show IFACE`: that interface's object; otherwise a list of them (docs/show-json.md).
        typer.echo(json.dumps(show_json(results[0]) if iface is not None else [show_json(r) for r in results],
                              indent=2))
        return
    from ..status import render

    render(results)


@app.command()
def demo(keep: Annotated[bool, typer.Option("--keep", help="leave everything running to explore")] = False,
         seconds: Annotated[int, typer.Option(help="length of the iperf3 run")] = 3) -> None:
    """Two namespaces, a server and a client: handshake, ping, iperf3, summary, teardown."""
    from ..demo import run_demo

    raise typer.Exit(run_demo(keep=keep, seconds=seconds))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Side-by-side benchmark: raw veth, kernel vxlan, wireguard-go, OpenVPN and pyvpn (see benchmarks/).

    Options are those of benchmarks/netbench.py (--quick, --paths, --rounds, --seconds, --out ...).
    """
    import importlib

    try:  # not a static import: mypy --strict covers vpn/, not the benchmarks
        mod = importlib.import_module("benchmarks.netbench")
    except ModuleNotFoundError as e:
        fail(f"{e}: pyvpn bench runs from a source checkout (pip install -e .)")
    raise typer.Exit(mod.main(list(ctx.args)))


@app.command("systemd-unit")
def systemd_unit(role: Annotated[str, typer.Argument(help="server or client")]) -> None:
    """Print the systemd template unit for ROLE, running this pyvpn by its full path.

    pyvpn systemd-unit server > /etc/systemd/system/pyvpn@.service; systemctl enable --now pyvpn@wg0
    """
    import shutil

    from ..systemd import ROLES, unit_text

    if role not in ROLES:
        fail(f"ROLE must be server or client, not {role!r}")
    argv0 = Path(sys.argv[0])
    exe = str(argv0.resolve()) if argv0.name == "pyvpn" and argv0.exists() else shutil.which("pyvpn")
    if exe is None:
        fail("cannot tell where the pyvpn command is installed (run it as `pyvpn systemd-unit ...`)")
        return
    try:
        typer.echo(unit_text(role, exe), nl=False)
    except ValueError as e:
        fail(str(e))


@app.command("config-keys")
def config_keys() -> None:
    """List every config key, by section, with what it does (wg-quick's keys and pyvpn's #pyvpn ones)."""
    from ..config_keys import keys_text

    typer.echo(keys_text(), nl=False)


def main() -> None:
    """The ``pyvpn`` entry point: every error is one line on stderr (no traceback, no box)."""
    try:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError  # newer typer vendors click
    except ImportError:  # pragma: no cover - older typer on click
        from click.exceptions import ClickException, NoArgsIsHelpError  # type: ignore[import-not-found,no-redef]

    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as e:
        e.show()
        code = 2
    except ClickException as e:
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"pyvpn: {e.format_message()}{hint}", err=True)
        code = e.exit_code
    except typer.Abort:
        typer.echo("pyvpn: aborted", err=True)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except Exception as e:  # the last resort: one line, the traceback only on request
        if os.environ.get("PYVPN_TRACEBACK"):
            raise
        typer.echo(f"pyvpn: unexpected error: {type(e).__name__}: {e} (PYVPN_TRACEBACK=1 shows where)", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)

