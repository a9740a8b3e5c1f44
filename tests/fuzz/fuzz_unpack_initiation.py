"""atheris target: crypto.messages.unpack_initiation (see README.md)."""

from __future__ import annotations

from typing import Any

import fuzzcommon
from fuzzcommon import messages


def check(data: bytes, msg: Any) -> None:
    assert len(data) == messages.MESSAGE_INITIATION_SIZE
    assert messages.pack_initiation(msg) == data


if __name__ == "__main__":
    fuzzcommon.main(fuzzcommon.parser_target(messages.unpack_initiation, check))
