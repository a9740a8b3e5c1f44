"""What the core tells the application: :attr:`crypto.tunnel.Core.events`, taken with ``take_events``.

Each event is a frozen, slotted dataclass naming its peer by public key; the application logs them and
counts them in its metrics.  None of them asks for an action (the outputs to act on are in the outbox).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: An endpoint is opaque to the core (the adapter uses ``(host, port)`` tuples).
Endpoint = Any


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A session was derived with ``peer`` (a public key); ``initiator`` says who started."""

    peer: bytes
    initiator: bool


@dataclass(frozen=True, slots=True)
class HandshakeInitiated:
    peer: bytes
    retry: bool


@dataclass(frozen=True, slots=True)
class HandshakeGaveUp:
    """No response after MAX_TIMER_HANDSHAKES + 2 attempts; staged packets were dropped."""

    peer: bytes


@dataclass(frozen=True, slots=True)
class KeysZeroed:
    """Every key of ``peer`` was discarded after 3 × REJECT_AFTER_TIME without a new session."""

    peer: bytes


@dataclass(frozen=True, slots=True)
class EndpointChanged:
    peer: bytes
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class CookieReceived:
    peer: bytes


Event = HandshakeCompleted | HandshakeInitiated | HandshakeGaveUp | KeysZeroed | EndpointChanged | CookieReceived
