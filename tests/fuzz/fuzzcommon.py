"""Shared pieces of the atheris fuzz targets in this directory (not collected by pytest).

Importing this module imports :mod:`crypto` (installed: run the targets with the venv's Python) under
atheris' coverage instrumentation, so every target below is coverage-guided through the core.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["crypto"]):
    from crypto import messages
    from crypto.errors import ProtocolError
    from crypto.keys import private_from_random
    from crypto.primitives import mac
    from crypto.tunnel import Core, Tunnel

__all__ = ["NOW", "ProtocolError", "World", "main", "make_world", "messages", "parser_target"]

NOW = 1000.0
A_ADDR = ("198.18.0.1", 51820)
B_ADDR = ("198.18.0.2", 51820)


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Hand the target to libFuzzer; command-line options (``-runs=``, corpus dirs) pass through."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def parser_target(parse: Callable[[bytes | bytearray | memoryview], Any],
                  check: Callable[[bytes, Any], None] | None = None) -> Callable[[bytes], None]:
    """A target that calls ``parse`` on the raw input: only ProtocolError may escape it."""

    def test_one_input(data: bytes) -> None:
        for form in (data, bytearray(data), memoryview(data)):
            try:
                result = parse(form)
            except ProtocolError:
                continue
            if check is not None:
                check(bytes(data), result)

    return test_one_input


class World:
    """Two cores after a completed handshake and one data packet each way (deterministic)."""

    def __init__(self) -> None:
        r = random.Random(1)
        self.a = Core(private_from_random(r.randbytes(32)), rng=random.Random(2).randbytes)
        self.b = Core(private_from_random(r.randbytes(32)), rng=random.Random(3).randbytes)
        self.ta: Tunnel = self.a.add_peer(self.b.public_key, endpoint=B_ADDR)
        self.tb: Tunnel = self.b.add_peer(self.a.public_key)
        self.valid: dict[str, bytes] = {}
        self.ta.initiate(now=NOW)
        (self.valid["initiation"],) = self._take(self.a)
        init = self.valid["initiation"]
        self.valid["cookie_reply"] = self.b.cookie_checker.create_reply(
            init, messages.INITIATION_MAC1_OFFSET, int.from_bytes(init[4:8], "little"), b"src", now=NOW)
        self.b.decapsulate(A_ADDR, [init], now=NOW)
        (self.valid["response"],) = self._take(self.b)
        self.a.decapsulate(B_ADDR, [self.valid["response"]], now=NOW)
        (self.valid["keepalive"],) = self._take(self.a)
        self.b.decapsulate(A_ADDR, [self.valid["keepalive"]], now=NOW)
        self.ta.encapsulate([bytes([0x45, 0, 0, 40]) + bytes(36)], now=NOW)
        (self.valid["transport"],) = self._take(self.a)
        self.b.decapsulate(A_ADDR, [self.valid["transport"]], now=NOW)

    @staticmethod
    def _take(core: Core) -> list[bytes]:
        return [d for _, ds in core.take_outbox() for d in ds]

    def with_mac1(self, core: Core, data: bytes) -> bytes:
        """``data`` with a correct mac1 for ``core`` if it has the size of an initiation or a
        response, so that fuzzing gets past mac1 into the DH and AEAD code."""
        off = {messages.MESSAGE_INITIATION_SIZE: messages.INITIATION_MAC1_OFFSET,
               messages.MESSAGE_RESPONSE_SIZE: messages.RESPONSE_MAC1_OFFSET}.get(len(data))
        if off is None:
            return data
        return data[:off] + mac(core.cookie_checker.mac1_key, data[:off]) + data[off + 16:]


def make_world() -> World:
    return World()
