"""atheris target: every parser in crypto.messages on the same input (see README.md).

``message_type`` and each ``unpack_*`` must return or raise a ProtocolError subclass; when
``message_type`` accepts the input, the matching ``unpack_*`` must agree with it.
"""

from __future__ import annotations

import fuzzcommon
from fuzzcommon import ProtocolError, messages

PARSERS = {
    messages.MESSAGE_INITIATION: messages.unpack_initiation,
    messages.MESSAGE_RESPONSE: messages.unpack_response,
    messages.MESSAGE_COOKIE_REPLY: messages.unpack_cookie_reply,
    messages.MESSAGE_TRANSPORT: messages.unpack_transport_header,
}


def test_one_input(data: bytes) -> None:
    try:
        t = messages.message_type(data)
    except ProtocolError:
        t = 0
    for kind, parse in PARSERS.items():
        try:
            parse(data)
        except ProtocolError:
            continue
        assert kind == t, f"unpack for type {kind} accepted a message of type {t}"


if __name__ == "__main__":
    fuzzcommon.main(test_one_input)
