"""The ``pyvpn`` command (typer).  Thin: parse options, load the config, call the library."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from crypto.errors import KeyFormatError
from crypto.keys import decode_key, encode_key, private_from_random, public_from_private

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="pyvpn: a userspace VPN that speaks WireGuard, with L2 bridging over VXLAN.")

LOG_LEVELS = ["debug", "info", "warning", "error"]


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"pyvpn: {message}", err=True)
    raise typer.Exit(code)


OUR_LOGGERS = ("pyvpn", "tunnel", "crypto", "vpn")


def setup_logging(level: str) -> None:
    """``level`` for pyvpn's own loggers; libraries stay at INFO or above (pyroute2 and asyncio
    log every netlink message and selector at DEBUG, which would drown the daemon's own lines)."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=max(lvl, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(lvl)


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
LogLevelOpt = Annotated[str, typer.Option("--log-level", "-l", envvar="PYVPN_LOG_LEVEL",
                                          help="debug, info, warning or error")]


def _run(config: Path, role: str, log_level: str, netns: str | None, metrics: str | None,
         user: str | None) -> None:
    from .config import ConfigError, load_config
    from .daemon import DaemonError, run_daemon

    setup_logging(log_level)
    try:
        cfg = load_config(config)
    except ConfigError as e:
        _fail(str(e))
        return
    try:
        code = run_daemon(cfg, role=role, netns=netns, metrics=metrics, user=user)
    except DaemonError as e:
        _fail(str(e))
        return
    raise typer.Exit(code)


# allow_interspersed_args: a group stops parsing options at its first positional argument, so
# `pyvpn server CONFIG -l debug` would take `-l` for a sub-command; `pyvpn client` accepts both orders.
server_app = typer.Typer(add_completion=False, invoke_without_command=True,
                         context_settings={"allow_interspersed_args": True},
                         help="Run a server (a hub for many clients), or manage its clients.")
app.add_typer(server_app, name="server")


@server_app.callback()
def server(ctx: typer.Context,
           config: Annotated[Path | None, typer.Argument(help="wg-quick style config file")] = None,
           log_level: LogLevelOpt = "info",
           netns: Annotated[str | None, typer.Option(help="put the tunnel interface into this netns")] = None,
           metrics: Annotated[str | None, typer.Option(help="serve Prometheus metrics on HOST:PORT")] = None,
           user: Annotated[str | None, typer.Option(help="drop privileges to this user after set-up")] = None,
           ) -> None:
    """Run `pyvpn server CONFIG` in the foreground until SIGINT/SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        _fail("usage: pyvpn server CONFIG (or: pyvpn server init|add-client|remove-client|list-clients)", 2)
        return
    _run(config, "server", log_level, netns, metrics, user)


@app.command()
def client(config: Annotated[Path, typer.Argument(help="wg-quick style config file")],
           log_level: LogLevelOpt = "info",
           netns: Annotated[str | None, typer.Option(help="put the tunnel interface into this netns")] = None,
           metrics: Annotated[str | None, typer.Option(help="serve Prometheus metrics on HOST:PORT")] = None,
           user: Annotated[str | None, typer.Option(help="drop privileges to this user after set-up")] = None,
           ) -> None:
    """Run `pyvpn client CONFIG` in the foreground until SIGINT/SIGTERM."""
    _run(config, "client", log_level, netns, metrics, user)


# -- status -----------------------------------------------------------------------------------
@app.command()
def show(iface: Annotated[str | None, typer.Argument(help="interface (default: all)")] = None,
         as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Show interfaces, peers, handshakes, transfer and drops, like `wg show`."""
    from .control import ControlError, list_interfaces, query

    names = [iface] if iface else list_interfaces()
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
            _fail(str(e))
    if as_json:
        from .status import to_jsonable

        typer.echo(json.dumps([to_jsonable(r) for r in results] if iface is None else to_jsonable(results[0]),
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
