"""Per-client policy, the pure pieces: rules and their classifier (against a naive reference on random
rules and packets), the token bucket, the value parsers, the config keys and the enrollment edits."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.ratelimiter import TokenBucket
from vpn.config import ConfigError, format_config, load_config, parse_config
from vpn.enroll import add_client, init_server, list_clients, set_client, set_policy_text
from vpn.policy import (
    BURST_TIME,
    MIN_BURST,
    AccessRules,
    ClientPolicy,
    Rule,
    bucket_for_rate,
    format_rate,
    format_time,
    packet_fields,
    parse_expiry,
    parse_rate,
    parse_rule,
    parse_rules,
    parse_time,
    reference_allows,
)
from vpn.testlab.differential import check_bulk_matches_loop
from vpn.testlab.packets import ipv4, ipv6

PRIV = "aKHukUFDDA5V4XGpTP1VNL5SEmNbhb6WkTl9ZIoGtmI="
PUB_A = "4ta2Ike/0vubLN/l4PqUUEGYOzJDObTOBRVsGgVc3Gk="


# -- packets -------------------------------------------------------------------------------------
def v4(dst: str, proto: int = 17, dport: int = 53, *, frag_offset: int = 0, ihl: int = 5, size: int = 60) -> bytes:
    ports = struct.pack("!HH", 40000, dport)
    return ipv4(bytes(4), dst, proto, ports.ljust(size - ihl * 4, b"\0"), df=False, frag=frag_offset & 0x1FFF,
                options=bytes((ihl - 5) * 4), csum=False)


def v6(dst: str, proto: int = 6, dport: int = 443, *, ext: tuple[int, ...] = (), frag_offset: int = 0) -> bytes:
    body = b""
    chain = [*ext, proto]
    for i, h in enumerate(ext):
        nxt = chain[i + 1]
        if h == 44:
            body += struct.pack("!BBHI", nxt, 0, frag_offset << 3, 7)
        elif h == 51:
            body += struct.pack("!BB", nxt, 1) + bytes(10)  # (1 + 2) * 4 = 12 bytes
        else:
            body += struct.pack("!BB", nxt, 0) + bytes(6)  # (0 + 1) * 8 = 8 bytes
    body += struct.pack("!HH", 40000, dport) + bytes(16)
    first = chain[0]
    return ipv6(bytes(16), dst, first, body)


def test_packet_fields() -> None:
    assert packet_fields(v4("10.0.0.1", 6, 22)) == (4, int(ipaddress.IPv4Address("10.0.0.1")), 6, 22)
    assert packet_fields(v4("10.0.0.1", 1, 0)) == (4, int(ipaddress.IPv4Address("10.0.0.1")), 1, None)
    assert packet_fields(v4("10.0.0.1", 17, 53, ihl=7))[3] == 53  # type: ignore[index]  # IP options
    assert packet_fields(v4("10.0.0.1", 17, 53, frag_offset=3))[3] is None  # type: ignore[index]
    d = int(ipaddress.IPv6Address("fd00::5"))
    assert packet_fields(v6("fd00::5", 6, 443)) == (6, d, 6, 443)
    assert packet_fields(v6("fd00::5", 17, 53, ext=(0, 60, 51))) == (6, d, 17, 53)
    assert packet_fields(v6("fd00::5", 17, 53, ext=(44,))) == (6, d, 17, 53)  # first fragment
    assert packet_fields(v6("fd00::5", 17, 53, ext=(44,), frag_offset=2)) == (6, d, 17, None)
    assert packet_fields(b"\x45" + bytes(10)) is None
    assert packet_fields(b"\x60" + bytes(30)) is None
    assert packet_fields(b"\x50" + bytes(40)) is None


# -- rules ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, canonical", [
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("10.1.2.3", "10.1.2.3/32"),
    ("10.1.2.3/16", "10.1.0.0/16"),
    ("192.0.2.1 tcp 22", "192.0.2.1/32 tcp 22"),
    ("192.0.2.1 TCP 1000-2000", "192.0.2.1/32 tcp 1000-2000"),
    ("fd00::/8 udp 53", "fd00::/8 udp 53"),
    ("fd00::/8 icmp", "fd00::/8 icmp"),
    ("0.0.0.0/0 icmp", "0.0.0.0/0 icmp"),
    ("0.0.0.0/0 icmpv6", "0.0.0.0/0 icmpv6"),
    ("::/0 47", "::/0 47"),
    ("::/0 any", "::/0"),
    ("10.0.0.0/8 sctp 5", "10.0.0.0/8 sctp 5"),
])
def test_rule_round_trip(text: str, canonical: str) -> None:
    r = parse_rule(text)
    assert str(r) == canonical and parse_rule(str(r)) == r


def test_icmp_means_the_family_of_the_prefix() -> None:
    assert parse_rule("10.0.0.0/8 icmp").proto == 1 and parse_rule("fd00::/8 icmp").proto == 58


@pytest.mark.parametrize("text, reason", [
    ("", "is not 'PREFIX"),
    ("10.0.0.0/8 tcp 22 extra", "is not 'PREFIX"),
    ("example.org", "is not an IP address or prefix"),
    ("10.0.0.0/33", "is not an IP address or prefix"),
    ("10.0.0.0/8 gre", "is not a protocol"),
    ("10.0.0.0/8 256", "is not a protocol"),
    ("10.0.0.0/8 icmp 5", "a port needs tcp, udp or sctp"),
    ("10.0.0.0/8 tcp 70000", "is not a port"),
    ("10.0.0.0/8 tcp 20-10", "empty port range"),
    ("10.0.0.0/8 tcp x", "is not a port"),
])
def test_bad_rules(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_rule(text)


def test_parse_rules_list() -> None:
    assert parse_rules("10.0.0.0/8, 192.0.2.1 tcp 22 ,") == [parse_rule("10.0.0.0/8"), parse_rule("192.0.2.1 tcp 22")]


def test_access_rules_semantics() -> None:
    allow = (parse_rule("100.64.0.1"), parse_rule("100.64.0.12 icmp"), parse_rule("10.0.0.0/8 tcp 80-443"))
    deny = (parse_rule("10.9.0.0/16"),)
    a = AccessRules(allow, deny)
    assert a.allows(v4("100.64.0.1", 17, 9999))
    assert a.allows(v4("100.64.0.12", 1, 0)) and not a.allows(v4("100.64.0.12", 17, 53))
    assert a.allows(v4("10.1.1.1", 6, 443)) and not a.allows(v4("10.1.1.1", 6, 22))
    assert a.allows(v4("10.1.1.1", 6, 80)) and not a.allows(v4("10.1.1.1", 6, 444))  # the range's ends
    assert not a.allows(v4("10.9.1.1", 6, 443))  # deny wins
    assert not a.allows(v4("10.1.1.1", 6, 443, frag_offset=5))  # a later fragment has no port
    assert not a.allows(v6("fd00::1", 6, 443))  # not allowed: Allow rules exist and none matches
    assert not a.allows(b"\x45\0")  # unreadable: denied
    only_deny = AccessRules((), (parse_rule("198.51.100.0/24"),))
    assert only_deny.allows(v6("fd00::1")) and only_deny.allows(v4("198.51.101.1"))
    assert not only_deny.allows(v4("198.51.100.7"))
    kept, denied = a.split([v4("100.64.0.1"), v4("10.9.0.1"), v4("100.64.0.1"), v4("10.9.0.2")])
    assert kept == [v4("100.64.0.1")] * 2 and denied == 2
    # batches of one destination that differ in port, protocol or fragment offset
    good = v4("10.1.1.1", 6, 443)
    for bad in (v4("10.1.1.1", 6, 22), v4("10.1.1.1", 17, 443), v4("10.1.1.1", 6, 443, frag_offset=5)):
        assert a.split([good, bad] * 3) == ([good] * 3, 3)
    v6a = AccessRules((parse_rule("fd00::/8 tcp 443"),), ())
    g6, b6 = v6("fd00::1", 6, 443), v6("fd00::1", 6, 444)
    assert v6a.split([g6, b6] * 3) == ([g6] * 3, 3)
    assert v6a.split([v6("fd00::1", 6, 443, ext=(0,))] * 4)[1] == 0  # extension headers: per packet


_NETS4 = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "192.0.2.0/24", "0.0.0.0/0", "10.128.0.0/9"]
_NETS6 = ["fd00::/8", "fd00:1::/32", "fd00:1::5/128", "::/0", "2001:db8::/32"]
_DSTS4 = ["10.1.2.3", "10.1.2.4", "10.1.9.9", "10.200.0.1", "192.0.2.9", "198.51.100.1"]
_DSTS6 = ["fd00:1::5", "fd00:1::6", "fd00:2::1", "2001:db8::1", "2001:db9::1"]


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    net = draw(st.sampled_from(_NETS4 + _NETS6))
    proto = draw(st.sampled_from([None, "tcp", "tcp", "udp", "icmp", "47"]))
    text = net
    if proto is not None:
        text += f" {proto}"
        if proto in ("tcp", "udp") and draw(st.booleans()):
            lo = draw(st.sampled_from([22, 53, 443, 1000]))
            hi = lo + draw(st.sampled_from([0, 0, 5]))
            text += f" {lo}-{hi}"
    return parse_rule(text)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    proto = draw(st.sampled_from([6, 6, 17, 1, 58, 47]))
    port = draw(st.sampled_from([21, 22, 23, 53, 443, 448, 1000, 1005, 1006]))
    if draw(st.booleans()):
        return v4(draw(st.sampled_from(_DSTS4)), proto, port, frag_offset=draw(st.sampled_from([0, 0, 0, 9])))
    ext = draw(st.sampled_from([(), (), (0,), (44,), (60, 44)]))
    return v6(draw(st.sampled_from(_DSTS6)), proto, port, ext=ext, frag_offset=draw(st.sampled_from([0, 0, 3])))


@settings(max_examples=600, deadline=None)
@given(st.lists(rules(), max_size=4), st.lists(rules(), max_size=3), st.lists(packets(), max_size=40))
def test_classifier_matches_the_naive_reference(allow: list[Rule], deny: list[Rule], batch: list[bytes]) -> None:
    a = AccessRules(tuple(allow), tuple(deny))
    expected = [p for p in batch if reference_allows(tuple(allow), tuple(deny), p)]
    kept, denied = a.split(batch)
    assert kept == expected and denied == len(batch) - len(expected)
    kept2, _ = a.split(batch)  # again, from the verdict cache
    assert kept2 == expected
    for p in batch[:3]:  # a bulk batch of one flow takes the one-verdict path
        ok = reference_allows(tuple(allow), tuple(deny), p)
        assert a.split([p] * 5) == (([p] * 5, 0) if ok else ([], 5))
    two = batch[:2] * 3  # two flows interleaved: the one-verdict path must decline when they differ
    expected2 = [p for p in two if reference_allows(tuple(allow), tuple(deny), p)]
    assert a.split(two) == (expected2, len(two) - len(expected2))


@settings(max_examples=300, deadline=None)
@given(st.lists(rules(), max_size=4), st.lists(rules(), max_size=3),
       st.lists(st.tuples(packets(), st.integers(0, 12), st.lists(packets(), max_size=3)), max_size=8))
def test_split_bulk_equals_the_loop(allow: list[Rule], deny: list[Rule],
                                    shapes: list[tuple[bytes, int, list[bytes]]]) -> None:
    """Twin classifiers (each with its verdict cache), the one-verdict batch on and off: batches of one
    flow, and of one flow followed by others, keep and deny the same packets."""
    twins = {bulk: AccessRules(tuple(allow), tuple(deny)) for bulk in (True, False)}
    batches = [[p] * k + others for p, k, others in shapes]
    assert check_bulk_matches_loop(lambda b, bulk: twins[bulk].split(b, bulk=bulk), batches) == len(batches)


# -- token bucket --------------------------------------------------------------------------------
def test_token_bucket_admits_a_prefix_and_refills() -> None:
    b = TokenBucket(rate=1000.0, burst=3000.0)
    pkts = [bytes(1000)] * 5
    assert b.admit(pkts, now=10.0) == 3  # the full bucket
    assert b.admit(pkts, now=10.0) == 0
    assert b.admit(pkts, now=11.0) == 1  # one second: 1000 bytes
    assert b.admit(pkts, now=100.0) == 3  # capped at the burst
    assert b.admit([], now=100.0) == 0
    assert b.admit(pkts, now=99.0) == 0  # a clock going back adds nothing


def test_token_bucket_long_run_rate() -> None:
    b = bucket_for_rate(20_000_000)
    assert b.burst == max(20_000_000 / 8 * BURST_TIME, MIN_BURST)
    admitted = 0
    t = 0.0
    for _ in range(2000):  # 2 s of 64-packet batches every ms, far above the rate
        n = b.admit([bytes(1400)] * 64, now=t)
        admitted += n * 1400
        t += 0.001
    expected = 20_000_000 / 8 * t
    assert expected <= admitted <= expected + b.burst + 1400


def test_token_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 10)


# -- values --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, bits", [("50mbit", 50_000_000), ("1.5gbit", 1_500_000_000), ("800kbit", 800_000),
                                        ("100Mbps", 100_000_000), ("10 mbit/s", 10_000_000), ("8000bit", 8000)])
def test_parse_rate(text: str, bits: int) -> None:
    assert parse_rate(text) == bits
    assert parse_rate(format_rate(bits)) == bits


@pytest.mark.parametrize("text", ["50", "fast", "50mb", "-1mbit", "7kbit"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_rate_off_and_format() -> None:
    assert parse_rate("off") is None
    assert format_rate(50_000_000) == "50mbit" and format_rate(12_345) == "12345bit"


def test_times() -> None:
    assert parse_time("2027-01-05T00:00:00Z") == 1799107200
    assert parse_time("2027-01-05") == 1799107200
    assert parse_time("2027-01-05T02:00:00+02:00") == 1799107200
    assert parse_time("2027-01-04T19:00-0500") == 1799107200
    assert format_time(1799107200) == "2027-01-05T00:00:00Z"
    for bad in ("2027-13-01", "tomorrow", "2027-01-05T25:00:00Z"):
        with pytest.raises(ValueError):
            parse_time(bad)
    assert parse_expiry("30d", now=1000.5) == 1000 + 30 * 86400
    assert parse_expiry("2w", now=0) == 14 * 86400 and parse_expiry("90m", now=0) == 5400
    assert parse_expiry("2027-01-05T00:00:00Z", now=0) == 1799107200
    assert parse_expiry("never", now=0) is None
    with pytest.raises(ValueError, match="duration"):
        parse_expiry("30 days", now=0)


def test_policy_state_and_wire() -> None:
    p = ClientPolicy(allow=(parse_rule("10.0.0.0/8 tcp 22"),), rate_limit=1_000_000, expires=100)
    assert p.state(99.9) == "active" and p.state(100) == "expired"
    assert replace(p, disabled=True).state(0) == "disabled"
    assert ClientPolicy.from_wire(p.to_wire()) == p
    assert ClientPolicy.from_wire(None) == ClientPolicy()
    for bad in ({"allow": ["nonsense"]}, {"rate_limit": "fast"}, {"expires": -1}):
        with pytest.raises(ValueError):
            ClientPolicy.from_wire(bad)
    with pytest.raises(TypeError):
        ClientPolicy.from_wire([1])


# -- config --------------------------------------------------------------------------------------
BASE = f"""[Interface]
PrivateKey = {PRIV}

[Peer]
# alice's laptop
#pyvpn Name = alice
PublicKey = {PUB_A}
AllowedIPs = 100.64.0.2/32
"""


def test_config_keys_parse_and_round_trip() -> None:
    text = BASE + """#pyvpn Allow = 100.64.0.1, 10.0.0.0/8 tcp 22
#pyvpn allow = fd00::/8 icmp
#pyvpn Deny = 10.9.0.0/16
#pyvpn RateLimit = 50mbit
#pyvpn Expires = 2027-01-05T00:00:00Z
#pyvpn Disabled = true
"""
    c = parse_config(text, "wg0.conf")
    p = c.peers[0]
    assert [str(r) for r in p.allow] == ["100.64.0.1/32", "10.0.0.0/8 tcp 22", "fd00::/8 icmp"]
    assert [str(r) for r in p.deny] == ["10.9.0.0/16"]
    assert p.rate_limit == 50_000_000 and p.expires == 1799107200 and p.disabled
    assert p.policy.state(0) == "disabled"
    assert parse_config(format_config(c), "wg0.conf") == c
    assert parse_config(BASE).peers[0].policy == ClientPolicy()


@pytest.mark.parametrize("line, key, reason", [
    ("#pyvpn RateLimit = 50", "RateLimit", "is not a rate"),
    ("#pyvpn Allow = 10.0.0.0/8 tcp 99999", "Allow", "is not a port"),
    ("#pyvpn Deny = nowhere", "Deny", "is not an IP address"),
    ("#pyvpn Expires = 30d", "Expires", "is not a time"),
    ("#pyvpn Disabled = maybe", "Disabled", "is not on/off"),
    ("#pyvpn RateLimit =", "RateLimit", "empty value"),
    ("RateLimit = 50mbit", "RateLimit", "#pyvpn"),
])
def test_config_errors_name_file_line_and_key(line: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + line + "\n", "/etc/pyvpn/wg0.conf")
    assert e.value.path == "/etc/pyvpn/wg0.conf" and e.value.line == 9 and e.value.key == key
    assert str(e.value).startswith(f"/etc/pyvpn/wg0.conf:9: {key}: ") and reason in str(e.value)


def test_policy_key_given_twice() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        parse_config(BASE + "#pyvpn RateLimit = 1mbit\n#pyvpn RateLimit = 2mbit\n")


# -- enrollment edits ----------------------------------------------------------------------------
def test_set_policy_text_keeps_everything_else() -> None:
    text = BASE + "#pyvpn RateLimit = 1mbit   # for now\n\n# bob below\n[Peer]\nPublicKey = " + \
        "uD4y+HlzJv8tzJF48mjCxV0BBVt6VaYWqM4BHmH6V1E=\nAllowedIPs = 100.64.0.3/32\n"
    c = parse_config(text)
    alice = c.peers[0]
    new = alice.with_policy(ClientPolicy(rate_limit=5_000_000, disabled=True))
    out = set_policy_text(text, alice, new)
    assert out == text.replace("#pyvpn RateLimit = 1mbit   # for now\n",
                               "#pyvpn RateLimit = 5mbit\n#pyvpn Disabled = true\n")
    assert parse_config(out).peers[0] == new and parse_config(out).peers[1] == c.peers[1]
    cleared = set_policy_text(out, parse_config(out).peers[0], alice.with_policy(ClientPolicy()))
    assert cleared == text.replace("#pyvpn RateLimit = 1mbit   # for now\n", "")
    # a section without policy lines gets them at its end, before the comment about the next one
    bob = c.peers[1]
    out2 = set_policy_text(text, bob, bob.with_policy(ClientPolicy(expires=1799107200)))
    assert out2.endswith("AllowedIPs = 100.64.0.3/32\n#pyvpn Expires = 2027-01-05T00:00:00Z\n")


def test_enroll_with_policy_and_change_it(tmp_path: Path) -> None:
    conf = tmp_path / "wg9.conf"
    init_server(str(conf), endpoint="vpn.example.org", random=bytes(range(32)))
    pol = ClientPolicy(allow=(parse_rule("100.64.0.1"),), rate_limit=20_000_000, expires=1799107200)
    r = add_client(str(conf), "alice", live=False, policy=pol)
    assert r.enrollment.peer.policy == pol and load_config(conf).peers[0].policy == pol
    add_client(str(conf), "bob", live=False)
    conf.write_text(conf.read_text().replace("#pyvpn Name = bob", "# the second one\n#pyvpn Name = bob"))
    res = set_client(str(conf), "alice", lambda p: replace(p, disabled=True, rate_limit=None), live=False)
    assert res.before.policy == pol and res.after.policy == replace(pol, disabled=True, rate_limit=None)
    assert res.running is None and res.error is None
    text = conf.read_text()
    assert "# the second one" in text and "#pyvpn Disabled = true" in text and "RateLimit" not in text
    _, rows, running = list_clients(str(conf), live=False)
    assert not running and [(r.name, r.state) for r in rows] == [("alice", "disabled"), ("bob", "active")]
    assert rows[0].denied is None
    set_client(str(conf), "alice", lambda p: replace(p, disabled=False, expires=1), live=False)
    assert [r.state for r in list_clients(str(conf), live=False)[1]] == ["expired", "active"]
    with pytest.raises(ValueError, match="no client named"):
        set_client(str(conf), "carol", lambda p: p, live=False)


# -- the CLI and the control socket ----------------------------------------------------------------
def test_cli_policy_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vpn import cli

    runner = CliRunner()
    conf = tmp_path / "pvpol.conf"
    init_server(str(conf), endpoint="198.18.0.1", random=bytes(range(32)))
    r = runner.invoke(cli.app, ["server", "add-client", "alice", "-c", str(conf), "--expires", "30d",
                                "--rate-limit", "50mbit", "--allow", "100.64.0.1, 198.18.9.0/24 tcp 443",
                                "--deny", "198.18.9.9"])
    assert r.exit_code == 0, r.output
    assert "it expires at 20" in r.output
    p = load_config(conf).peers[0]
    assert p.rate_limit == 50_000_000 and [str(x) for x in p.allow] == ["100.64.0.1/32", "198.18.9.0/24 tcp 443"]
    assert p.expires is not None and [str(x) for x in p.deny] == ["198.18.9.9/32"]
    for args, msg in ((["--rate-limit", "50"], "--rate-limit: '50' is not a rate"),
                      (["--expires", "soon"], "--expires: 'soon' is neither"),
                      (["--allow", "10.0.0.0/8 tcp 1-0"], "--allow: '1-0' is an empty port range")):
        r = runner.invoke(cli.app, ["server", "add-client", "bob", "-c", str(conf), *args])
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, r.output
    assert len(load_config(conf).peers) == 1  # nothing was added
    r = runner.invoke(cli.app, ["server", "set-client", "alice", "-c", str(conf)])
    assert r.exit_code == 1 and "nothing to change" in r.output
    r = runner.invoke(cli.app, ["server", "set-client", "alice", "-c", str(conf), "--rate-limit", "off",
                                "--clear-rules", "--expires", "never"])
    assert r.exit_code == 0, r.output
    assert load_config(conf).peers[0].policy == ClientPolicy()
    r = runner.invoke(cli.app, ["server", "disable-client", "alice", "-c", str(conf)])
    assert r.exit_code == 0 and "disabled client 'alice'" in r.output and "the server is not running" in r.output
    r = runner.invoke(cli.app, ["server", "list-clients", "-c", str(conf)])
    assert r.exit_code == 0 and "policy: disabled" in r.stdout  # a pipe: the never-cut block layout
    r = runner.invoke(cli.app, ["server", "list-clients", "-c", str(conf), "--json"])
    assert '"state": "disabled"' in r.stdout
    r = runner.invoke(cli.app, ["server", "enable-client", "alice", "-c", str(conf)])
    assert r.exit_code == 0 and load_config(conf).peers[0].policy == ClientPolicy()
    r = runner.invoke(cli.app, ["server", "set-client", "alice", "-c", str(conf), "--expires", "2001-01-01"])
    assert r.exit_code == 0 and "expired at 2001-01-01T00:00:00Z" in r.output
    r = runner.invoke(cli.app, ["server", "disable-client", "nobody", "-c", str(conf)])
    assert r.exit_code == 1 and "no client named 'nobody'" in r.output


def test_control_set_policy() -> None:
    from crypto.keys import private_from_random, public_from_private
    from tunnel.testing import MemoryNetwork, MemoryTun
    from vpn.control import ControlServer
    from vpn.device import Device

    net = MemoryNetwork()
    dev = Device(tun=MemoryTun("pol0"), udp=net.endpoint("198.18.0.1", 51820),
                 private_key=private_from_random(bytes(32)))
    pub = public_from_private(private_from_random(bytes(range(32))))
    srv = ControlServer(dev)
    pol = ClientPolicy(deny=(parse_rule("100.64.0.0/24 tcp 22"),), rate_limit=1_000_000)
    assert srv.dispatch({"op": "add_peer", "public_key": pub, "allowed_ips": ["100.64.0.2/32"],
                         "policy": pol.to_wire()}) == {"ok": True}
    peer = dev.peers[pub]
    assert peer.policy == pol and peer.policed and peer.bucket_out is not None
    assert srv.dispatch({"op": "set_policy", "public_key": pub, "policy": {"disabled": True}}) == {"ok": True}
    assert peer.policy == ClientPolicy(disabled=True) and not peer.policed and peer.tunnel.refused
    snap = srv.dispatch({"op": "show"})["peers"][0]
    assert snap["policy"]["state"] == "disabled" and snap["denied"] == 0 and snap["ratelimited"] == 0
    with pytest.raises(ValueError, match="no such peer"):
        srv.dispatch({"op": "set_policy", "public_key": bytes(32), "policy": {}})
    with pytest.raises(ValueError, match="is not an IP address"):
        srv.dispatch({"op": "set_policy", "public_key": pub, "policy": {"allow": ["nowhere"]}})
    assert peer.policy == ClientPolicy(disabled=True)  # a bad request changes nothing
    dev.close()


def test_wg_setconf_keeps_the_policy() -> None:
    from crypto.keys import private_from_random, public_from_private
    from tunnel.testing import MemoryNetwork, MemoryTun
    from vpn import uapi
    from vpn.device import Device
    from vpn.uapi_server import apply_set

    net = MemoryNetwork()
    dev = Device(tun=MemoryTun("pol1"), udp=net.endpoint("198.18.0.1", 51820),
                 private_key=private_from_random(bytes(32)))
    pub = public_from_private(private_from_random(bytes(range(32))))
    pol = ClientPolicy(rate_limit=1_000_000, disabled=True)
    dev.add_peer(pub, allowed_ips=["100.64.0.2/32"], policy=pol)
    apply_set(dev, uapi.parse_set(["replace_peers=true", f"public_key={pub.hex()}", "allowed_ip=100.64.0.2/32"]))
    assert dev.peers[pub].policy == pol and dev.peers[pub].tunnel.refused
    dev.close()


def test_save_config_keeps_the_running_policy(tmp_path: Path) -> None:
    from crypto.keys import decode_key, public_from_private
    from tunnel.testing import MemoryNetwork, MemoryTun
    from vpn.daemon import save_runtime_config
    from vpn.device import Device

    path = tmp_path / "wg0.conf"
    path.write_text(BASE)
    cfg = load_config(path)
    net = MemoryNetwork()
    dev = Device(tun=MemoryTun("pol2"), udp=net.endpoint("198.18.0.1", 51820), private_key=decode_key(PRIV))
    pub = cfg.peers[0].public_key
    assert pub != public_from_private(decode_key(PRIV))
    pol = ClientPolicy(deny=(parse_rule("10.0.0.0/8"),), rate_limit=2_000_000, expires=1799107200, disabled=True)
    dev.add_peer(pub, allowed_ips=["100.64.0.2/32"], name="alice", policy=pol)  # as set-client left it
    save_runtime_config(cfg, dev)
    assert load_config(path).peers[0].policy == pol
    dev.close()
