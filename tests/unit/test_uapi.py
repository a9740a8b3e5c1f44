"""The UAPI text protocol: set/get round trips, wg's exact requests, error cases with wireguard-go's errno values."""

from __future__ import annotations

import errno
import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.uapi import (
    IPC_ERROR_INVALID,
    IPC_ERROR_PROTOCOL,
    DeviceState,
    PeerSet,
    PeerState,
    SetRequest,
    UapiError,
    format_errno,
    format_get,
    format_set,
    parse_endpoint,
    parse_get,
    parse_set,
    read_request,
)
from vpn.util import format_endpoint

PRIV = bytes(range(1, 33))
PUB_A = bytes([0xA1]) * 32
PUB_B = bytes([0xB2]) * 32
PSK = bytes([0x5C]) * 32


def test_wg_setconf_request() -> None:
    # What `wg setconf` sends for a two-peer file (its userspace_set_device order).
    text = (
        "set=1\n"
        f"private_key={PRIV.hex()}\n"
        "listen_port=51820\n"
        "fwmark=0\n"
        "replace_peers=true\n"
        f"public_key={PUB_A.hex()}\n"
        f"preshared_key={PSK.hex()}\n"
        "endpoint=198.18.0.2:51820\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=198.19.0.2/32\n"
        "allowed_ip=fd00:19::2/128\n"
        f"public_key={PUB_B.hex()}\n"
        "endpoint=[fd00::2]:51821\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=198.19.1.77/24\n"
        "\n"
    )
    op, lines = read_request(text)
    assert op == "set"
    req = parse_set(lines)
    assert req == SetRequest(
        private_key=PRIV, listen_port=51820, fwmark=0, replace_peers=True,
        peers=(
            PeerSet(public_key=PUB_A, preshared_key=PSK, endpoint=("198.18.0.2", 51820), persistent_keepalive=25,
                    replace_allowed_ips=True, allowed_ips=("198.19.0.2/32", "fd00:19::2/128")),
            PeerSet(public_key=PUB_B, endpoint=("fd00::2", 51821), replace_allowed_ips=True,
                    allowed_ips=("198.19.1.0/24",)),  # host bits cleared, as the table does
        ))
    assert format_set(req).replace("allowed_ip=198.19.1.0/24", "allowed_ip=198.19.1.77/24") == text


def test_peer_flags_and_protocol_version() -> None:
    req = parse_set([f"public_key={PUB_A.hex()}", "remove=true",
                     f"public_key={PUB_B.hex()}", "update_only=true", "protocol_version=1",
                     f"preshared_key={'00' * 32}", "persistent_keepalive_interval=0"])
    assert req.peers[0] == PeerSet(public_key=PUB_A, remove=True)
    assert req.peers[1] == PeerSet(public_key=PUB_B, update_only=True, protocol_version=1,
                                   preshared_key=bytes(32), persistent_keepalive=0)
    assert parse_set([]) == SetRequest()
    # A blank line ends the request: nothing after it is read.
    assert parse_set(["listen_port=1", "", "bogus"]) == SetRequest(listen_port=1)
    # Uppercase hex is accepted (Go's hex.DecodeString); zero private key means "remove it".
    assert parse_set([f"private_key={'00' * 32}"]).private_key == bytes(32)
    assert parse_set([f"public_key={PUB_A.hex().upper()}"]).peers[0].public_key == PUB_A


def test_same_peer_twice_stays_in_order() -> None:
    req = parse_set([f"public_key={PUB_A.hex()}", "allowed_ip=198.19.0.1/32",
                     f"public_key={PUB_B.hex()}", f"public_key={PUB_A.hex()}", "remove=true"])
    assert [(p.public_key, p.remove) for p in req.peers] == [(PUB_A, False), (PUB_B, False), (PUB_A, True)]


# (lines, errno, a fragment of the message)
ERRORS: list[tuple[list[str], int, str]] = [
    (["listen_port"], IPC_ERROR_PROTOCOL, "failed to parse line"),
    (["bogus=1"], IPC_ERROR_INVALID, "invalid UAPI device key"),
    ([f"public_key={PUB_A.hex()}", "bogus=1"], IPC_ERROR_INVALID, "invalid UAPI peer key"),
    ([f"public_key={PUB_A.hex()}", "listen_port=1"], IPC_ERROR_INVALID, "invalid UAPI peer key"),  # device key late
    (["private_key=abcd"], IPC_ERROR_INVALID, "private_key"),
    ([f"private_key={'g' * 64}"], IPC_ERROR_INVALID, "private_key"),
    ([f"private_key={'0' * 63}"], IPC_ERROR_INVALID, "private_key"),
    ([f"private_key={'00 ' * 21}0"], IPC_ERROR_INVALID, "private_key"),  # fromhex would skip spaces
    (["public_key="], IPC_ERROR_INVALID, "public_key"),
    ([f"public_key={PUB_A.hex()}", "preshared_key=zz"], IPC_ERROR_INVALID, "preshared_key"),
    (["listen_port=65536"], IPC_ERROR_INVALID, "out of range"),
    (["listen_port=-1"], IPC_ERROR_INVALID, "not a number"),
    (["listen_port="], IPC_ERROR_INVALID, "not a number"),
    (["listen_port=+5"], IPC_ERROR_INVALID, "not a number"),
    (["listen_port=\u0663"], IPC_ERROR_INVALID, "not a number"),  # Arabic-Indic digit: int() takes it, Go does not
    (["fwmark=4294967296"], IPC_ERROR_INVALID, "out of range"),
    (["fwmark=0x10"], IPC_ERROR_INVALID, "not a number"),
    (["replace_peers=false"], IPC_ERROR_INVALID, "true"),
    ([f"public_key={PUB_A.hex()}", "remove=1"], IPC_ERROR_INVALID, "true"),
    ([f"public_key={PUB_A.hex()}", "update_only=TRUE"], IPC_ERROR_INVALID, "true"),
    ([f"public_key={PUB_A.hex()}", "replace_allowed_ips=yes"], IPC_ERROR_INVALID, "true"),
    ([f"public_key={PUB_A.hex()}", "endpoint=vpn.example.net:51820"], IPC_ERROR_INVALID, "endpoint"),
    ([f"public_key={PUB_A.hex()}", "endpoint=fd00::1:51820"], IPC_ERROR_INVALID, "endpoint"),
    ([f"public_key={PUB_A.hex()}", "endpoint=[198.18.0.1]:51820"], IPC_ERROR_INVALID, "endpoint"),
    ([f"public_key={PUB_A.hex()}", "endpoint=198.18.0.1:65536"], IPC_ERROR_INVALID, "endpoint"),
    ([f"public_key={PUB_A.hex()}", "endpoint=198.18.0.1"], IPC_ERROR_INVALID, "endpoint"),
    ([f"public_key={PUB_A.hex()}", "persistent_keepalive_interval=65536"], IPC_ERROR_INVALID, "out of range"),
    ([f"public_key={PUB_A.hex()}", "allowed_ip=198.19.0.1"], IPC_ERROR_INVALID, "allowed_ip"),
    ([f"public_key={PUB_A.hex()}", "allowed_ip=198.19.0.0/33"], IPC_ERROR_INVALID, "allowed_ip"),
    ([f"public_key={PUB_A.hex()}", "allowed_ip=198.19.0.0/08"], IPC_ERROR_INVALID, "allowed_ip"),
    ([f"public_key={PUB_A.hex()}", "allowed_ip=fe80::1%eth0/128"], IPC_ERROR_INVALID, "allowed_ip"),
    ([f"public_key={PUB_A.hex()}", "allowed_ip=198.19.0.300/32"], IPC_ERROR_INVALID, "allowed_ip"),
    ([f"public_key={PUB_A.hex()}", "protocol_version=2"], IPC_ERROR_INVALID, "protocol version"),
]


@pytest.mark.parametrize("n", range(len(ERRORS)))
def test_errors(n: int) -> None:
    lines, code, fragment = ERRORS[n]
    with pytest.raises(UapiError) as e:
        parse_set(lines)
    assert e.value.errno == code and fragment in str(e.value)
    assert format_errno(e.value.errno) == f"errno={code}\n\n"


def test_keys_are_never_echoed() -> None:
    secret = "ab" * 31 + "zz"  # almost a key
    for lines in ([f"private_key={secret}"], [f"public_key={PUB_A.hex()}", f"preshared_key={secret}"], [secret],
                  [f"public_key={PUB_A.hex()}", f"{PRIV.hex()}"]):
        with pytest.raises(UapiError) as e:
            parse_set(lines)
        assert secret[:16] not in str(e.value) and PRIV.hex()[:16] not in str(e.value)
    r = repr(parse_set([f"private_key={PRIV.hex()}", f"public_key={PUB_A.hex()}", f"preshared_key={PSK.hex()}"]))
    assert "(hidden)" in r and str(PRIV) not in r and str(PSK) not in r
    r = repr(DeviceState(private_key=PRIV, peers=[PeerState(public_key=PUB_A, preshared_key=PSK)]))
    assert str(PRIV) not in r and str(PSK) not in r


def test_uapi_error() -> None:
    e = UapiError(errno.EADDRINUSE, "port in use")
    assert isinstance(e, ValueError) and e.errno == -errno.EADDRINUSE
    assert UapiError(-errno.EINVAL, "x").errno == IPC_ERROR_INVALID == -22
    assert format_errno(0) == "errno=0\n\n" and format_errno(errno.EINVAL) == "errno=-22\n\n"


def _state() -> DeviceState:
    return DeviceState(
        private_key=PRIV, listen_port=51820, fwmark=0x10,
        peers=[
            PeerState(public_key=PUB_A, preshared_key=PSK, endpoint=("198.18.0.2", 51820), persistent_keepalive=25,
                      allowed_ips=["198.19.0.2/32", "fd00:19::2/128"], last_handshake_time_sec=1764300000,
                      last_handshake_time_nsec=123456789, rx_bytes=1000, tx_bytes=2000),
            PeerState(public_key=PUB_B),
        ])


def test_format_get_golden() -> None:
    assert format_get(_state()) == (
        f"private_key={PRIV.hex()}\n"
        "listen_port=51820\n"
        "fwmark=16\n"
        f"public_key={PUB_A.hex()}\n"
        f"preshared_key={PSK.hex()}\n"
        "protocol_version=1\n"
        "endpoint=198.18.0.2:51820\n"
        "last_handshake_time_sec=1764300000\n"
        "last_handshake_time_nsec=123456789\n"
        "tx_bytes=2000\n"
        "rx_bytes=1000\n"
        "persistent_keepalive_interval=25\n"
        "allowed_ip=198.19.0.2/32\n"
        "allowed_ip=fd00:19::2/128\n"
        f"public_key={PUB_B.hex()}\n"
        f"preshared_key={'00' * 32}\n"
        "protocol_version=1\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=0\n"
        "rx_bytes=0\n"
        "persistent_keepalive_interval=0\n"
        "errno=0\n"
        "\n")
    # No private key, port or mark: those lines are left out, as wireguard-go does.
    assert format_get(DeviceState()) == "errno=0\n\n"
    assert format_get(DeviceState(private_key=bytes(32))) == "errno=0\n\n"


def test_get_round_trip_and_endpoints() -> None:
    st0 = _state()
    back = parse_get(format_get(st0))
    assert back.private_key == PRIV and back.listen_port == 51820 and back.fwmark == 16
    assert [(p.public_key, p.preshared_key, p.endpoint, tuple(p.allowed_ips), p.rx_bytes, p.tx_bytes,
             p.persistent_keepalive, p.last_handshake_time_nsec) for p in back.peers] == [
        (PUB_A, PSK, ("198.18.0.2", 51820), ("198.19.0.2/32", "fd00:19::2/128"), 1000, 2000, 25, 123456789),
        (PUB_B, None, None, (), 0, 0, 0, 0)]
    assert format_endpoint(("fd00::2", 51820, 0, 0), unmap_v4=True) == "[fd00::2]:51820"  # a socket's 4-tuple
    assert format_endpoint(("::ffff:198.18.0.2", 51820, 0, 0), unmap_v4=True) == "198.18.0.2:51820"  # dual-stack socket
    assert format_endpoint(("fe80::1%veth0", 7)) == "[fe80::1%veth0]:7"
    assert format_endpoint(("::ffff:198.18.0.2", 7)) == "[::ffff:198.18.0.2]:7"  # as written, unless asked
    assert format_endpoint("(unresolved)") == "(unresolved)"
    assert parse_endpoint("[fe80::1%veth0]:7") == ("fe80::1%veth0", 7)
    assert parse_endpoint("198.18.0.1:0") == ("198.18.0.1", 0)
    with pytest.raises(UapiError) as e:
        parse_get("errno=-22\n\n")
    assert e.value.errno == -22


@pytest.mark.parametrize(("text", "want"), [
    ("get=1\n\n", ("get", [])),
    ("set=1\n\n", ("set", [])),
    ("set=1\n", ("set", [])),
    ("set=1\nlisten_port=1\n\n", ("set", ["listen_port=1"])),
    ("set=1\nlisten_port=1\n", ("set", ["listen_port=1"])),  # at end of stream wireguard-go applies it
    ("set=1\nlisten_port=1", ("set", ["listen_port=1"])),
])
def test_read_request(text: str, want: tuple[str, list[str]]) -> None:
    assert read_request(text) == want


@pytest.mark.parametrize("text", ["", "get=1", "get=1\n", "get=1\nx\n\n", "get=2\n\n", "GET=1\n\n", "set=1\r\n\n",
                                  "set=1\nlisten_port=1\n\nget=1\n\n", "hello\n\n"])
def test_read_request_errors(text: str) -> None:
    with pytest.raises(UapiError) as e:
        read_request(text)
    assert e.value.errno == IPC_ERROR_INVALID


keys = st.binary(min_size=32, max_size=32)
v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
prefixes = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: str(ipaddress.ip_network((t[0], t[1]), strict=False))),
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: str(ipaddress.IPv6Network((t[0], t[1]), strict=False))))
peer_sets = st.builds(
    PeerSet, public_key=keys, remove=st.booleans(), update_only=st.booleans(),
    preshared_key=st.none() | keys, endpoint=st.none() | st.tuples(v4 | v6, st.integers(0, 65535)),
    persistent_keepalive=st.none() | st.integers(0, 65535), replace_allowed_ips=st.booleans(),
    allowed_ips=st.lists(prefixes, max_size=4).map(tuple), protocol_version=st.none() | st.just(1))
set_requests = st.builds(
    SetRequest, private_key=st.none() | keys, listen_port=st.none() | st.integers(0, 65535),
    fwmark=st.none() | st.integers(0, 2**32 - 1), replace_peers=st.booleans(),
    peers=st.lists(peer_sets, max_size=3).map(tuple))


@settings(max_examples=150, deadline=None)
@given(set_requests)
def test_set_round_trip(req: SetRequest) -> None:
    op, lines = read_request(format_set(req))
    assert op == "set" and parse_set(lines) == req


def test_garbage_only_raises_uapi_error() -> None:
    rnd = random.Random(7)
    words = ["public_key", "private_key", "listen_port", "fwmark", "endpoint", "allowed_ip", "remove", "=",
             "true", PUB_A.hex(), "198.19.0.1/32", "[fd00::1]:1", "\u0663", "\x00", "%", "/", ":", "[", "]", "-1"]
    for _ in range(3000):
        lines = ["".join(rnd.choice(words) for _ in range(rnd.randint(0, 4))) for _ in range(rnd.randint(0, 5))]
        try:
            parse_set(lines)
        except UapiError:
            pass
        try:
            read_request("\n".join(lines))
        except UapiError:
            pass
