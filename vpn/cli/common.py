"""What every ``pyvpn`` command module shares."""

from __future__ import annotations

import typer

__all__ = ["HELP_OPTIONS", "fail"]

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


def fail(message: str, code: int = 1) -> None:
    """Print ``pyvpn: MESSAGE`` on stderr and exit with ``code``."""
    typer.echo(f"pyvpn: {message}", err=True)
    raise typer.Exit(code)
