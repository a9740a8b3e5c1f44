"""Hostile input: property tests over every parser in :mod:`crypto.messages` and over
:meth:`crypto.tunnel.Core.decapsulate`.

Contract under test (STYLE.md "Where errors stop"; h11's fuzz harness checks the same thing):

- ``unpack_*`` and ``message_type`` either return or raise a :class:`~crypto.errors.ProtocolError`
  subclass; nothing else escapes, whatever the bytes.
- ``Core.decapsulate`` never raises and never delivers an inner packet for bad input, and every
  bad datagram increments the sum of ``Core.drops`` by exactly one.  The only datagrams allowed
  not to count as drops are ones that are legitimately consumed: a byte-identical valid cookie
  reply, or a fresh handshake message whose only change is in mac2 (mac2 is not checked when
  the receiver is not under load, so such a message *is* valid).

Inputs: random bytes, random bytes behind each type prefix, and truncations, extensions, bit
flips, byte overwrites and splices of valid messages of every type (initiation, response,
cookie reply, transport, keepalive).  Example counts are bounded so the file runs in seconds.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from crypto.errors import ProtocolError
from crypto.keys import private_from_random
from crypto.messages import (
    INITIATION_MAC2_OFFSET,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    RESPONSE_MAC2_OFFSET,
    message_type,
    pack_cookie_reply,
    pack_initiation,
    pack_response,
    unpack_cookie_reply,
    unpack_initiation,
    unpack_response,
    unpack_transport_header,
)
from crypto.tunnel import Core, Tunnel
from vpn.testlab.packets import ipv4_packet

NOW = 1000.0
A_ADDR = ("198.18.0.1", 51820)
B_ADDR = ("198.18.0.2", 51820)
# PYVPN_FUZZ_EXAMPLES=5000 for a deeper local run; CI keeps the default small.
FUZZ = settings(max_examples=int(os.environ.get("PYVPN_FUZZ_EXAMPLES", "100")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@dataclass
class World:
    """Two cores, a (initiator) and b, stopped at a given stage of their first handshake."""

    a: Core
    b: Core
    ta: Tunnel
    tb: Tunnel
    msgs: dict[str, bytes]


def _take(core: Core) -> list[bytes]:
    return [d for _, ds in core.take_outbox() for d in ds]


def make_world(stage: str) -> World:
    """Deterministic: the same seeds give byte-identical messages in every world.

    stages: ``initiated`` (a sent an initiation, b has not seen it), ``responded`` (b answered,
    a has not seen the response), ``established`` (handshake done, one data packet each way and
    the keepalive delivered).
    """
    r = random.Random(1)
    a = Core(private_from_random(r.randbytes(32)), rng=random.Random(2).randbytes)
    b = Core(private_from_random(r.randbytes(32)), rng=random.Random(3).randbytes)
    ta = a.add_peer(b.public_key, endpoint=B_ADDR)
    tb = b.add_peer(a.public_key)
    msgs: dict[str, bytes] = {}
    ta.initiate(now=NOW)
    (msgs["initiation"],) = _take(a)
    # a cookie reply b could send for that initiation: valid for a while a's last mac1 is it
    msgs["cookie_reply"] = b.cookie_checker.create_reply(
        msgs["initiation"], 116, int.from_bytes(msgs["initiation"][4:8], "little"), b"src", now=NOW)
    if stage == "initiated":
        return World(a, b, ta, tb, msgs)
    b.decapsulate(A_ADDR, [msgs["initiation"]], now=NOW)
    (msgs["response"],) = _take(b)
    if stage == "responded":
        return World(a, b, ta, tb, msgs)
    a.decapsulate(B_ADDR, [msgs["response"]], now=NOW)
    (msgs["keepalive"],) = _take(a)
    b.decapsulate(A_ADDR, [msgs["keepalive"]], now=NOW)
    ta.encapsulate([ipv4_packet(61, 1)], now=NOW)
    (msgs["transport_ab"],) = _take(a)
    assert b.decapsulate(A_ADDR, [msgs["transport_ab"]], now=NOW)
    tb.encapsulate([ipv4_packet(333, 2)], now=NOW)
    (msgs["transport_ba"],) = _take(b)
    assert a.decapsulate(B_ADDR, [msgs["transport_ba"]], now=NOW)
    assert not a.drops and not b.drops
    return World(a, b, ta, tb, msgs)


ESTABLISHED = make_world("established")
VALID = ESTABLISHED.msgs
# which core a valid message is addressed to
TARGET = {"initiation": "b", "response": "a", "cookie_reply": "a", "keepalive": "b",
          "transport_ab": "b", "transport_ba": "a"}


# -- strategies ----------------------------------------------------------------------------------

@st.composite
def mutated(draw: st.DrawFn, names: list[str] | None = None) -> tuple[str, bytes, bool]:
    """(message name, mutated bytes, touched_only_mac2) for one valid message."""
    name = draw(st.sampled_from(names or sorted(VALID)))
    orig = VALID[name]
    data = bytearray(orig)
    kind = draw(st.sampled_from(["truncate", "extend", "flip", "flips", "overwrite", "splice"]))
    touched: list[int] = []
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif kind in ("flip", "flips"):
        for _ in range(1 if kind == "flip" else draw(st.integers(2, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
            touched.append(i)
    elif kind == "overwrite":
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255).filter(lambda v: v != orig[i]))
        touched.append(i)
    else:  # splice: a window of random bytes
        i = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=40))
        data[i : i + len(chunk)] = chunk
        touched.extend(range(i, i + len(chunk)))
    out = bytes(data)
    assume(out != orig)
    mac2_off = {"initiation": INITIATION_MAC2_OFFSET, "response": RESPONSE_MAC2_OFFSET}.get(name)
    only_mac2 = (mac2_off is not None and len(out) == len(orig)
                 and all(out[i] == orig[i] for i in range(mac2_off)))
    return name, out, only_mac2


typed_garbage = st.builds(
    lambda t, reserved, body: bytes([t]) + reserved + body,
    st.sampled_from([0, 1, 2, 3, 4, 5, 255]),
    st.sampled_from([b"\0\0\0", b"\0\0\1", b"\1\0\0"]),
    st.one_of(st.binary(max_size=200),
              st.integers(0, 160).flatmap(lambda n: st.binary(min_size=n, max_size=n))),
)
any_bytes = st.one_of(st.binary(max_size=300), typed_garbage)


# -- the parsers ---------------------------------------------------------------------------------

PARSERS = [message_type, unpack_initiation, unpack_response, unpack_cookie_reply, unpack_transport_header]


def _parse_all(data: bytes | bytearray | memoryview) -> None:
    for parse in PARSERS:
        try:
            parse(data)
        except ProtocolError:
            pass


@FUZZ
@given(any_bytes)
def test_parsers_raise_only_protocol_errors_on_random_bytes(data: bytes) -> None:
    _parse_all(data)
    _parse_all(bytearray(data))
    _parse_all(memoryview(data))


@FUZZ
@given(mutated())
def test_parsers_raise_only_protocol_errors_on_mutations(m: tuple[str, bytes, bool]) -> None:
    _parse_all(m[1])


def test_parsers_accept_valid_messages_and_round_trip() -> None:
    assert pack_initiation(unpack_initiation(VALID["initiation"])) == VALID["initiation"]
    assert pack_response(unpack_response(VALID["response"])) == VALID["response"]
    assert pack_cookie_reply(unpack_cookie_reply(VALID["cookie_reply"])) == VALID["cookie_reply"]
    for name, t in (("initiation", 1), ("response", 2), ("cookie_reply", 3), ("keepalive", 4),
                    ("transport_ab", 4)):
        assert message_type(VALID[name]) == t
        assert message_type(memoryview(VALID[name])) == t
    recv, counter = unpack_transport_header(VALID["keepalive"])
    assert counter == 0 and recv == ESTABLISHED.tb.current.local_index  # type: ignore[union-attr]
    assert unpack_transport_header(VALID["transport_ab"])[1] == 1


@pytest.mark.parametrize("size,parse", [(MESSAGE_INITIATION_SIZE, unpack_initiation),
                                        (MESSAGE_RESPONSE_SIZE, unpack_response),
                                        (MESSAGE_COOKIE_REPLY_SIZE, unpack_cookie_reply)])
def test_exact_sizes(size: int, parse: Any) -> None:
    t = {MESSAGE_INITIATION_SIZE: 1, MESSAGE_RESPONSE_SIZE: 2, MESSAGE_COOKIE_REPLY_SIZE: 3}[size]
    good = bytes([t, 0, 0, 0]) + bytes(size - 4)
    parse(good)
    for n in (0, 3, 4, size - 1, size + 1):
        with pytest.raises(ProtocolError):
            parse(good[:n] if n < size else good + b"\0")
    with pytest.raises(ProtocolError):
        parse(bytes([t, 0, 0, 1]) + bytes(size - 4))  # non-zero reserved byte


# -- Core.decapsulate ----------------------------------------------------------------------------

def _feed(core: Core, datagrams: list[bytes], endpoint: Any = A_ADDR) -> tuple[int, int]:
    """(delivered inner packets, increase of the drop sum); the call itself must not raise."""
    before = sum(core.drops.values())
    out = core.decapsulate(endpoint, datagrams, now=NOW + 1.0)
    delivered = sum(len(pkts) for _, pkts in out)
    return delivered, sum(core.drops.values()) - before


@FUZZ
@given(st.lists(any_bytes, min_size=1, max_size=5), st.sampled_from(["a", "b"]))
def test_decapsulate_random_bytes_each_counted_once(datagrams: list[bytes], who: str) -> None:
    w = make_world("established")
    core = w.a if who == "a" else w.b
    delivered, dropped = _feed(core, datagrams)
    assert delivered == 0
    assert dropped == len(datagrams), dict(core.drops)


@FUZZ
@given(mutated())
def test_decapsulate_mutations_after_the_handshake(m: tuple[str, bytes, bool]) -> None:
    """After the handshake every valid message is stale, so every mutation must be a drop."""
    name, data, _ = m
    w = make_world("established")
    core = w.a if TARGET[name] == "a" else w.b
    delivered, dropped = _feed(core, [data])
    assert delivered == 0
    assert dropped == 1, (name, dict(core.drops))
    assert _take(core) == []  # nothing is answered either


@FUZZ
@given(mutated(["initiation", "cookie_reply"]))
def test_decapsulate_mutations_during_the_handshake(m: tuple[str, bytes, bool]) -> None:
    """While a's initiation is fresh, a mac2-only change is a valid initiation (consumed, answered);
    anything else is one drop."""
    name, data, only_mac2 = m
    w = make_world("initiated")
    core = w.b if name == "initiation" else w.a
    delivered, dropped = _feed(core, [data], endpoint=A_ADDR if name == "initiation" else B_ADDR)
    assert delivered == 0
    if only_mac2:
        assert dropped == 0
        assert [d[0] for d in _take(core)] == [2]
    else:
        assert dropped == 1, (name, dict(core.drops))
        assert _take(core) == []


@FUZZ
@given(mutated(["response"]))
def test_decapsulate_response_mutations(m: tuple[str, bytes, bool]) -> None:
    _, data, only_mac2 = m
    w = make_world("responded")
    delivered, dropped = _feed(w.a, [data], endpoint=B_ADDR)
    assert delivered == 0
    if only_mac2:
        assert dropped == 0 and w.ta.current is not None  # a valid response: handshake done
    else:
        assert dropped == 1, dict(w.a.drops)
        assert w.ta.current is None


def test_valid_cookie_reply_is_consumed_not_dropped() -> None:
    w = make_world("established")
    assert _feed(w.a, [VALID["cookie_reply"]], endpoint=B_ADDR) == (0, 0)
    assert w.ta.cookies.has_cookie


def test_exact_replays_are_dropped() -> None:
    w = make_world("established")
    for name in ("initiation", "response", "keepalive", "transport_ab", "transport_ba"):
        core = w.a if TARGET[name] == "a" else w.b
        assert _feed(core, [VALID[name]]) == (0, 1), name
    assert w.b.drops["stale_timestamp"] == 1
    assert w.a.drops["unknown_index"] == 1  # the response's handshake index is now a keypair's
    assert w.b.drops["replayed_counter"] == 2 and w.a.drops["replayed_counter"] == 1


@FUZZ
@given(st.lists(st.one_of(any_bytes, mutated().map(lambda m: m[1])), min_size=2, max_size=12))
def test_decapsulate_batches_mixed_with_valid_data(junk: list[bytes]) -> None:
    """Junk around a fresh valid packet: the valid one is delivered, each junk datagram is one drop."""
    w = make_world("established")
    w.ta.encapsulate([ipv4_packet(77, 9)], now=NOW)
    (fresh,) = _take(w.a)
    batch = junk[: len(junk) // 2] + [fresh] + junk[len(junk) // 2 :]
    junk_for_b = [d for d in junk if d != VALID["cookie_reply"]]
    delivered, dropped = _feed(w.b, [d for d in batch if d != VALID["cookie_reply"]])
    assert delivered == 1
    assert dropped == len(junk_for_b)


def test_decapsulate_accepts_memoryview_and_bytearray() -> None:
    w = make_world("established")
    w.ta.encapsulate([ipv4_packet(90, 1), ipv4_packet(91, 2)], now=NOW)
    d1, d2 = _take(w.a)
    out = w.b.decapsulate(A_ADDR, [memoryview(d1), bytearray(d2)], now=NOW)  # type: ignore[list-item]
    assert [bytes(p) for _, ps in out for p in ps] == [ipv4_packet(90, 1), ipv4_packet(91, 2)]


@FUZZ
@given(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                 st.tuples(st.text(max_size=10), st.integers(-1, 70000))),
       mutated(["initiation"]), st.booleans())
def test_decapsulate_any_endpoint_object(endpoint: Any, m: tuple[str, bytes, bool], behind: bool) -> None:
    """Endpoints are opaque to the core: odd ones (None, ints, strings) never make it raise,
    even under load where the endpoint feeds the cookie, the rate limiters and (when behind)
    the shedding."""
    w = make_world("initiated")
    w.b.force_under_load = True
    w.b.behind = behind
    w.b.decapsulate(endpoint, [m[1], VALID["initiation"]], now=NOW)
    # Under load neither passes without mac2.  With endpoint None the cookie reply cannot be
    # sent, and that outbound loss is counted as well, under "no_endpoint".
    inbound = {k: v for k, v in w.b.drops.items() if k != "no_endpoint"}
    assert sum(inbound.values()) == 2, dict(w.b.drops)
