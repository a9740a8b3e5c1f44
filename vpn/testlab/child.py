"""Run one function of an importable module in a child process and get its result back as JSON.

Root tests that must do device work inside a namespace (open a tun there, change its offloads, drop
privileges) run it in a child started under ``ip netns exec``::

    python -m vpn.testlab.child vpn.testlab.tun_scenarios tun_roundtrip '{"vnet_hdr": true}'

imports the module by name (the lab is installed with pyvpn, so nothing touches ``sys.path``), calls the
function with the JSON keyword arguments and prints ``RESULT <json>`` as its last line.  The test process
itself never changes namespace; :func:`call` does the round trip.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from .netns import Netns

__all__ = ["argv", "call", "main", "result"]

_MARK = "RESULT "


def argv(module: str, func: str, **kwargs: Any) -> list[str]:
    """The command that runs ``module.func(**kwargs)`` in a child with this Python."""
    return [sys.executable, "-m", __name__, module, func, json.dumps(kwargs)]


def result(output: str) -> Any:
    """The value a child printed (its last ``RESULT`` line).

    :raises AssertionError: the child printed none (its output is in the message).
    """
    for line in reversed(output.splitlines()):
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    raise AssertionError(f"the child printed no result:\n{output}")


def call(ns: Netns, module: str, func: str, *, timeout: float = 30.0, **kwargs: Any) -> Any:
    """Run ``module.func(**kwargs)`` in a new process inside ``ns`` and return what it returned.

    :raises AssertionError: the child failed or timed out (with its output).
    """
    proc = ns.run(argv(module, func, **kwargs), check=False, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{module}.{func} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return result(proc.stdout)


def main(args: list[str] | None = None) -> int:
    """``MODULE FUNCTION [JSON-KWARGS]``: call it, print ``RESULT <json>``."""
    module, func, *rest = sys.argv[1:] if args is None else args
    kwargs = json.loads(rest[0]) if rest else {}
    value = getattr(importlib.import_module(module), func)(**kwargs)
    print(_MARK + json.dumps(value), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
