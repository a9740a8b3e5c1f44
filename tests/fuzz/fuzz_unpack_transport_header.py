"""atheris target: crypto.messages.unpack_transport_header (see README.md)."""

from __future__ import annotations

from typing import Any

import fuzzcommon
from fuzzcommon import messages


def check(data: bytes, result: Any) -> None:
    receiver, counter = result
    assert len(data) >= messages.MESSAGE_TRANSPORT_MIN_SIZE and data[:4] == b"\x04\0\0\0"
    assert receiver == int.from_bytes(data[4:8], "little")
    assert counter == int.from_bytes(data[8:16], "little")


if __name__ == "__main__":
    fuzzcommon.main(fuzzcommon.parser_target(messages.unpack_transport_header, check))
