"""``pyvpn server init|add-client|remove-client|set-client|disable-client|enable-client|list-clients``: the
commands that manage a server's clients in its config file and in the running server (:mod:`vpn.enroll`).
They are commands of the ``pyvpn server`` group (:mod:`vpn.cli`), after ``run``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crypto.keys import encode_key, public_from_private

from .common import HELP_OPTIONS, fail

if TYPE_CHECKING:
    from ..policy import ClientPolicy

__all__ = ["clients_app"]

clients_app = typer.Typer(add_completion=False, context_settings=HELP_OPTIONS)

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


@clients_app.command("init")
def server_init(config: ServerConfigOpt = "/etc/pyvpn/wg0.conf",
                port: Annotated[int, typer.Option(help="UDP port to listen on")] = 51820,
                pool4: Annotated[str, typer.Option(help="IPv4 client pool ('none' for no IPv4)")] = "100.64.0.0/24",
                pool6: Annotated[str, typer.Option(help="IPv6 client pool ('none' for no IPv6)")] = "fd00:64::/64",
                endpoint: Annotated[str | None, typer.Option(help="HOST[:PORT] clients connect to")] = None,
                force: Annotated[bool, typer.Option(help="overwrite an existing file (new keys!)")] = False,
                ) -> None:
    """Write a new server config with fresh keys and client address pools."""
    from ..enroll import EnrollError, init_server

    try:
        cfg = init_server(config, port=port, pool4=pool4, pool6=pool6, endpoint=endpoint, force=force)
    except (EnrollError, OSError) as e:
        fail(str(e))
        return
    i = cfg.interface
    typer.echo(f"wrote {config}: public key {encode_key(public_from_private(i.private_key))}, UDP port {port}, "
               f"address {', '.join(str(a) for a in i.addresses)}", err=True)
    if i.public_endpoint is None:
        typer.echo("no --endpoint: give one to add-client (or set '#pyvpn PublicEndpoint = host:port')", err=True)
    typer.echo(f"next: pyvpn server add-client NAME --config {config}; run it with: pyvpn server {config}",
               err=True)


@clients_app.command("add-client")
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
    from ..config import ConfigError
    from ..enroll import EnrollError, add_client, policy_change, qr_png, qr_terminal
    from ..policy import ClientPolicy
    from ..util import write_private

    try:
        change = policy_change(expires, rate_limit, allow, deny)
        policy = change(ClientPolicy()) if change is not None else None
        r = add_client(config, name, endpoint=endpoint, dns=dns or (), psk=psk, policy=policy)
    except (ValueError, ConfigError, OSError) as e:  # EnrollError is a ValueError
        fail(str(e))
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
        fail(f"client {name!r} was added to {config}, but: {e}")
        return
    where = f"; running server {r.running} updated" if r.running else "; the server is not running"
    if policy is not None and policy.expires is not None:
        from ..policy import format_time

        where += f"; it expires at {format_time(policy.expires)}"
    typer.echo(f"added client {name!r} ({addrs}) to {config}{where}", err=True)
    if r.error:
        fail(f"the running server was not updated: {r.error} (restart it to pick the client up)")


@clients_app.command("remove-client")
def server_remove_client(name: Annotated[str, typer.Argument(help="the client's name (or public key)")],
                         config: ServerConfigOpt = "/etc/pyvpn/wg0.conf") -> None:
    """Remove a client from CONFIG and from the running server."""
    from ..config import ConfigError
    from ..enroll import EnrollError, remove_client

    try:
        _, running, error = remove_client(config, name)
    except (EnrollError, ConfigError, OSError) as e:
        fail(str(e))
        return
    where = f"; running server {running} updated" if running else ""
    typer.echo(f"removed client {name!r} from {config}{where}", err=True)
    if error:
        fail(f"the running server was not updated: {error}")


def _set_client(config: str, name: str, change: Callable[[ClientPolicy], ClientPolicy], what: str) -> None:
    from ..config import ConfigError
    from ..enroll import set_client
    from ..policy import format_time

    try:
        r = set_client(config, name, change)
    except (ValueError, ConfigError, OSError) as e:
        fail(str(e))
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
        fail(f"the running server was not updated: {r.error}")


@clients_app.command("set-client")
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
    from ..enroll import policy_change

    try:
        change = policy_change(expires, rate_limit, allow, deny, clear_rules)
    except ValueError as e:
        fail(str(e))
        return
    if change is None:
        fail("nothing to change: give --expires, --rate-limit, --allow, --deny or --clear-rules")
        return
    _set_client(config, name, change, "updated")


@clients_app.command("disable-client")
def server_disable_client(name: Annotated[str, typer.Argument(help="the client's name (or public key)")],
                          config: ServerConfigOpt = "/etc/pyvpn/wg0.conf") -> None:
    """Refuse a client's handshakes and drop its session now (kept in CONFIG; enable-client undoes it)."""
    from dataclasses import replace

    _set_client(config, name, lambda p: replace(p, disabled=True), "disabled")


@clients_app.command("enable-client")
def server_enable_client(name: Annotated[str, typer.Argument(help="the client's name (or public key)")],
                         config: ServerConfigOpt = "/etc/pyvpn/wg0.conf") -> None:
    """Accept a disabled client again."""
    from dataclasses import replace

    _set_client(config, name, lambda p: replace(p, disabled=False), "enabled")


@clients_app.command("list-clients")
def server_list_clients(config: ServerConfigOpt = "/etc/pyvpn/wg0.conf",
                        as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
                        ) -> None:
    """List the clients in CONFIG with their state and policy (and handshakes when the server runs)."""
    from ..config import ConfigError
    from ..enroll import list_clients
    from ..status import clients_json, render_clients

    try:
        _, rows, running = list_clients(config)
    except (ConfigError, OSError) as e:
        fail(str(e))
        return
    if as_json:
        typer.echo(json.dumps(clients_json(rows), indent=2))
        return
    render_clients(rows, f"clients of {config}" + ("" if running else " (server not running)"))
