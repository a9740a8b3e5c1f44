"""The ``pyvpn`` command (typer).  Thin: parse options, load the config, call the library."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from crypto.errors import KeyFormatError
from crypto.keys import decode_key, encode_key, private_from_random, public_from_private

if TYPE_CHECKING:
    from .policy import ClientPolicy

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(no_args_is_help=True, context_settings=HELP_OPTIONS,
                  help="pyvpn: a userspace VPN that speaks WireGuard, with L2 bridging over VXLAN.",
                  epilog="Config files are wg-quick's; `pyvpn config-keys` lists every key. "
                         "Shell completion: pyvpn --install-completion.")

LOG_LEVELS = ["debug", "info", "warning", "error"]
METRICS_HELP = "serve Prometheus metrics on HOST:PORT (:PORT means 127.0.0.1; no authentication)"
# Where `pyvpn client wg0` looks for wg0.conf when no such file is here (wg-quick: /etc/wireguard).
CONFIG_DIRS = (Path("/etc/wireguard"), Path("/etc/pyvpn"))
_IFNAME = re.compile(r"[A-Za-z0-9_=+.-]{1,15}")  # wg-quick's test for "a name, not a path"


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"pyvpn: {message}", err=True)
    raise typer.Exit(code)


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
    from .logs import setup

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
        _fail(str(e))


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
    _fail(f"{arg}: no such file, nor {where}")
    return arg


def _run(config: Path, role: str, log_level: str | None, netns: str | None, metrics: str | None,
         user: str | None) -> None:
    from tunnel.netconf import NetconfError

    from .config import ConfigError, load_config
    from .daemon import run_daemon
    from .interface import DaemonError

    try:
        cfg = load_config(find_config(config))
    except ConfigError as e:
        _fail(str(e))
        return
    setup_logging(log_level or getattr(cfg.interface, "log_level", None) or "info")
    try:
        code = run_daemon(cfg, role=role, netns=netns, metrics=metrics, user=user)
    except DaemonError as e:
        _fail(str(e))
        return
    except NetconfError as e:  # e.g. a Namespace that does not exist: the kernel's word, one line
        _fail(e.strerror or str(e))
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


def _keys_epilog() -> str:
    from .config_keys import keys_summary

    return "Config keys (pyvpn config-keys explains each):\n\n" + keys_summary()


@server_app.command("run", epilog=_keys_epilog())
def server(config: Annotated[Path, typer.Argument(help="wg-quick style config file, or a name: wg0 is "
                                                       "/etc/wireguard/wg0.conf or /etc/pyvpn/wg0.conf")],
           log_level: LogLevelOpt = None,
           netns: Annotated[str | None, typer.Option(help="put the tunnel interface into this netns")] = None,
           metrics: Annotated[str | None, typer.Option(help=METRICS_HELP)] = None,
           user: Annotated[str | None, typer.Option(help="drop privileges to this user after set-up")] = None,
           ) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM (`pyvpn server CONFIG` does the same)."""
    _run(config, "server", log_level, netns, metrics, user)


ServerConfigOpt = Annotated[str, typer.Option("--config", "-c", envvar="PYVPN_CONFIG",
                                              help="the server's wg-quick file")]
ExpiresOpt = Annotated[str | None, typer.Option(
    help="refuse the client from then on: a duration (30d, 12h, 90m, 2w), a time (2027-01-05T00:00:00Z) "
         "or 'never'")]
RateLimitOpt = Annotated[str | None, typer.Option(
    "--rate-limit", help="limit each direction to this rate (50mbit, 800kbit; 'off' for none)")]
AllowOpt = Annotated[list[str] | None, typer.Option(
    help="only these destinations: 'PREFIX [tcp|udp|icmp|PROTO [PORT|LO-HI]]' (repeatable, or comma-separated)")]
DenyOpt = Annotated[list[str] | None, typer.Option(
    help="never these destinations, same form as --allow (repeatable)")]


@server_app.command("init")
def server_init(config: ServerConfigOpt = "/etc/pyvpn/wg0.conf",
                port: Annotated[int, typer.Option(help="UDP port to listen on")] = 51820,
                pool4: Annotated[str, typer.Option(help="IPv4 client pool ('none' for no IPv4)")] = "100.64.0.0/24",
                pool6: Annotated[str, typer.Option(help="IPv6 client pool ('none' for no IPv6)")] = "fd00:64::/64",
                endpoint: Annotated[str | None, typer.Option(help="HOST[:PORT] clients connect to")] = None,
                force: Annotated[bool, typer.Option(help="overwrite an existing file (new keys!)")] = False,
                ) -> None:
    """Write a new server config with fresh keys and client address pools."""
    from .enroll import EnrollError, init_server

    try:
        cfg = init_server(config, port=port, pool4=pool4, pool6=pool6, endpoint=endpoint, force=force)
    except (EnrollError, OSError) as e:
        _fail(str(e))
        return
    i = cfg.interface
    typer.echo(f"wrote {config}: public key {encode_key(public_from_private(i.private_key))}, UDP port {port}, "
               f"address {', '.join(str(a) for a in i.addresses)}", err=True)
    if i.public_endpoint is None:
        typer.echo("no --endpoint: give one to add-client (or set '#pyvpn PublicEndpoint = host:port')", err=True)
    typer.echo(f"next: pyvpn server add-client NAME --config {config}; run it with: pyvpn server {config}",
               err=True)


@server_app.command("add-client")
def server_add_client(
        name: Annotated[str, typer.Argument(help="a unique name for the client")],
        config: ServerConfigOpt = "/etc/pyvpn/wg0.conf",
        out: Annotated[Path | None, typer.Option(
            help="write the client's config here (default: print it, unless --qr or --png)")] = None,
        qr: Annotated[bool, typer.Option("--qr", help="print a QR code for the WireGuard apps")] = False,
        png: Annotated[Path | None, typer.Option(help="write the QR code to this PNG file")] = None,
        endpoint: Annotated[str | None, typer.Option(help="HOST[:PORT] the client connects to")] = None,
        dns: Annotated[list[str] | None, typer.Option(help="DNS server for the client (repeatable)")] = None,
        psk: Annotated[bool, typer.Option(help="give the client a preshared key")] = True,
        expires: ExpiresOpt = None,
        rate_limit: RateLimitOpt = None,
        allow: AllowOpt = None,
        deny: DenyOpt = None,
) -> None:
    """Enroll a client: keys, next free addresses, [Peer] in CONFIG and in the running server."""
    from .config import ConfigError
    from .enroll import EnrollError, add_client, policy_change, qr_png, qr_terminal
    from .policy import ClientPolicy
    from .util import write_private

    try:
        change = policy_change(expires, rate_limit, allow, deny)
        policy = change(ClientPolicy()) if change is not None else None
        r = add_client(config, name, endpoint=endpoint, dns=dns or (), psk=psk, policy=policy)
    except (ValueError, ConfigError, OSError) as e:  # EnrollError is a ValueError
        _fail(str(e))
        return
    addrs = ", ".join(str(a) for a in r.enrollment.client.interface.addresses)
    try:
        if out is not None:
            write_private(out, r.client_text)
            typer.echo(f"wrote {out}", err=True)
        elif not qr and png is None:
            typer.echo(r.client_text, nl=False)
        if png is not None:
            write_private(png, qr_png(r.client_text))
            typer.echo(f"wrote {png} (QR code; it holds the client's private key)", err=True)
        if qr:
            typer.echo(qr_terminal(r.client_text, color=sys.stdout.isatty()), nl=False)
            if out is None and png is None:
                typer.echo(f"pyvpn: the client's config was not saved anywhere: the QR code above is its only copy "
                           f"(give --out FILE to keep one; pyvpn server remove-client {name} undoes this)", err=True)
    except (EnrollError, OSError) as e:
        _fail(f"client {name!r} was added to {config}, but: {e}")
        return
    where = f"; running server {r.running} updated" if r.running else "; the server is not running"
    if policy is not None and policy.expires is not None:
        from .policy import format_time

        where += f"; it expires at {format_time(policy.expires)}"
    typer.echo(f"added client {name!r} ({addrs}) to {config}{where}", err=True)
    if r.error:
        _fail(f"the running server was not updated: {r.error} (restart it to pick the client up)")


@server_app.command("remove-client")
def server_remove_client(name: Annotated[str, typer.Argument(help="the client's name (or public key)")],
                         config: ServerConfigOpt = "/etc/pyvpn/wg0.conf") -> None:
    """Remove a client from CONFIG and from the running server."""
    from .config import ConfigError
    from .enroll import EnrollError, remove_client

    try:
        _, running, error = remove_client(config, name)
    except (EnrollError, ConfigError, OSError) as e:
        _fail(str(e))
        return
    where = f"; running server {running} updated" if running else ""
    typer.echo(f"removed client {name!r} from {config}{where}", err=True)
    if error:
        _fail(f"the running server was not updated: {error}")


def _set_client(config: str, name: str, change: Callable[[ClientPolicy], ClientPolicy], what: str) -> None:
    from .config import ConfigError
    from .enroll import set_client
    from .policy import format_time

    try:
        r = set_client(config, name, change)
    except (ValueError, ConfigError, OSError) as e:
        _fail(str(e))
        return
    where = f"; running server {r.running} updated" if r.running else "; the server is not running"
    typer.echo(f"{what} client {name!r} in {config}{where}", err=True)
    import time

    pol = r.after.policy
    if pol.state(time.time()) == "expired" and not pol.disabled:
        assert pol.expires is not None
        typer.echo(f"note: {name!r} expired at {format_time(pol.expires)}; it stays refused until "
                   f"'pyvpn server set-client {name} --expires ...'", err=True)
    if r.error:
        _fail(f"the running server was not updated: {r.error}")


@server_app.command("set-client")
def server_set_client(name: Annotated[str, typer.Argument(help="the client's name (or public key)")],
                      config: ServerConfigOpt = "/etc/pyvpn/wg0.conf",
                      expires: ExpiresOpt = None,
                      rate_limit: RateLimitOpt = None,
                      allow: AllowOpt = None,
                      deny: DenyOpt = None,
                      clear_rules: Annotated[bool, typer.Option("--clear-rules",
                                                                help="remove every Allow and Deny rule")] = False,
                      ) -> None:
    """Change a client's policy (rules, rate limit, expiry) in CONFIG and in the running server."""
    from .enroll import policy_change

    try:
        change = policy_change(expires, rate_limit, allow, deny, clear_rules)
    except ValueError as e:
        _fail(str(e))
        return
    if change is None:
        _fail("nothing to change: give --expires, --rate-limit, --allow, --deny or --clear-rules")
        return
    _set_client(config, name, change, "updated")


@server_app.command("disable-client")
def server_disable_client(name: Annotated[str, typer.Argument(help="the client's name (or public key)")],
                          config: ServerConfigOpt = "/etc/pyvpn/wg0.conf") -> None:
    """Refuse a client's handshakes and drop its session now (kept in CONFIG; enable-client undoes it)."""
    from dataclasses import replace

    _set_client(config, name, lambda p: replace(p, disabled=True), "disabled")


@server_app.command("enable-client")
def server_enable_client(name: Annotated[str, typer.Argument(help="the client's name (or public key)")],
                         config: ServerConfigOpt = "/etc/pyvpn/wg0.conf") -> None:
    """Accept a disabled client again."""
    from dataclasses import replace

    _set_client(config, name, lambda p: replace(p, disabled=False), "enabled")


@server_app.command("list-clients")
def server_list_clients(config: ServerConfigOpt = "/etc/pyvpn/wg0.conf",
                        as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
                        ) -> None:
    """List the clients in CONFIG with their state and policy (and handshakes when the server runs)."""
    from .config import ConfigError
    from .enroll import list_clients
    from .status import clients_json, render_clients

    try:
        _, rows, running = list_clients(config)
    except (ConfigError, OSError) as e:
        _fail(str(e))
        return
    if as_json:
        typer.echo(json.dumps(clients_json(rows), indent=2))
        return
    render_clients(rows, f"clients of {config}" + ("" if running else " (server not running)"))


@app.command(epilog=_keys_epilog())
def client(config: Annotated[Path, typer.Argument(help="wg-quick style config file, or a name: wg0 is "
                                                       "/etc/wireguard/wg0.conf or /etc/pyvpn/wg0.conf")],
           log_level: LogLevelOpt = None,
           netns: Annotated[str | None, typer.Option(help="put the tunnel interface into this netns")] = None,
           metrics: Annotated[str | None, typer.Option(help=METRICS_HELP)] = None,
           user: Annotated[str | None, typer.Option(help="drop privileges to this user after set-up")] = None,
           ) -> None:
    """Run `pyvpn client CONFIG` in the foreground until SIGINT/SIGTERM."""
    _run(config, "client", log_level, netns, metrics, user)


# -- status -----------------------------------------------------------------------------------
def _complete_interfaces(incomplete: str) -> list[str]:
    """Shell completion for ``pyvpn show IFACE``: the running interfaces (none when not root)."""
    from .control import ControlError, list_interfaces

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
    from .control import ControlError, list_interfaces, query
    from .status import PeerNotFound, select_peers, show_json

    try:
        running = list_interfaces()
    except ControlError as e:
        _fail(str(e))
        return
    implicit = iface is not None and peer is None and iface not in running
    if implicit:
        iface, peer = None, iface  # `pyvpn show alice`: a peer on any interface
        if not running:
            _fail(f"no pyvpn interface {peer!r} is running (and no other to look for a peer of that name in)")
    names = [iface] if iface else running
    if not names:
        if as_json:
            typer.echo("[]")
            return
        _fail("no running pyvpn interfaces")
    results: list[dict[str, Any]] = []
    for name in names:
        try:
            results.append(query(name))
        except ControlError as e:
            if iface is not None:
                _fail(str(e))
            # Listing all: an interface that stopped since it was listed is skipped, not fatal.
            typer.echo(f"pyvpn: {name}: skipped: {e}", err=True)
    if not results and iface is None and not as_json:
        _fail("no running pyvpn interfaces")
    if peer is not None:
        try:
            results = select_peers(results, peer)
        except PeerNotFound as e:
            _fail(f"no pyvpn interface {peer!r} is running, and {e}" if implicit else str(e))
            return
    if as_json:
        # `show IFACE`: that interface's object; otherwise a list of them (docs/show-json.md).
        typer.echo(json.dumps(show_json(results[0]) if iface is not None else [show_json(r) for r in results],
                              indent=2))
        return
    from .status import render

    render(results)


@app.command()
def demo(keep: Annotated[bool, typer.Option("--keep", help="leave everything running to explore")] = False,
         seconds: Annotated[int, typer.Option(help="length of the iperf3 run")] = 3) -> None:
    """Two namespaces, a server and a client: handshake, ping, iperf3, summary, teardown."""
    from .demo import run_demo

    raise typer.Exit(run_demo(keep=keep, seconds=seconds))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Side-by-side benchmark: raw veth, kernel vxlan, wireguard-go, OpenVPN and pyvpn (see benchmarks/).

    Options are those of benchmarks/netbench.py (--quick, --paths, --rounds, --seconds, --out ...).
    """
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "netbench.py"
    if not path.exists():
        _fail(f"{path} not found: pyvpn bench runs from a source checkout")
    spec = importlib.util.spec_from_file_location("pyvpn_netbench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pyvpn_netbench"] = mod
    spec.loader.exec_module(mod)
    raise typer.Exit(mod.main(list(ctx.args)))


@app.command("systemd-unit")
def systemd_unit(role: Annotated[str, typer.Argument(help="server or client")]) -> None:
    """Print the systemd template unit for ROLE, running this pyvpn by its full path.

    pyvpn systemd-unit server > /etc/systemd/system/pyvpn@.service; systemctl enable --now pyvpn@wg0
    """
    import shutil

    from .systemd import ROLES, unit_text

    if role not in ROLES:
        _fail(f"ROLE must be server or client, not {role!r}")
    argv0 = Path(sys.argv[0])
    exe = str(argv0.resolve()) if argv0.name == "pyvpn" and argv0.exists() else shutil.which("pyvpn")
    if exe is None:
        _fail("cannot tell where the pyvpn command is installed (run it as `pyvpn systemd-unit ...`)")
        return
    try:
        typer.echo(unit_text(role, exe), nl=False)
    except ValueError as e:
        _fail(str(e))


@app.command("config-keys")
def config_keys() -> None:
    """List every config key, by section, with what it does (wg-quick's keys and pyvpn's #pyvpn ones)."""
    from .config_keys import keys_text

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


if __name__ == "__main__":
    main()
