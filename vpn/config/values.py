"""The value converters of the config keys: text from the file to a typed value.

Each takes the value as written and returns the converted value, or raises :class:`ValueError` with a short
reason (the parser adds ``file:line: Key:``).  None of them echoes a token long enough to be a key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import TypeVar

from crypto.errors import KeyFormatError
from crypto.keys import decode_key

T = TypeVar("T")
Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Iface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def key(v: str, what: str) -> bytes:
    try:
        return decode_key(v, what=what)
    except KeyFormatError as e:
        raise ValueError(str(e)) from None


_NUMBER = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]+")  # ASCII only: int() would also take "٣" and "1_0"


def number(v: str, lo: int, hi: int) -> int:
    if not _NUMBER.fullmatch(v):
        raise ValueError(f"{v!r} is not a number")
    n = int(v, 0) if v[:2].lower() == "0x" else int(v)
    if not lo <= n <= hi:
        raise ValueError(f"{n} is out of range ({lo}..{hi})")
    return n


def on_off(v: str) -> bool:
    lv = v.lower()
    if lv in ("true", "on", "yes", "1"):
        return True
    if lv in ("false", "off", "no", "0"):
        return False
    raise ValueError(f"{v!r} is not on/off (or true/false)")


def true_false(v: str) -> bool:
    """wg-quick's ``read_bool``: exactly ``true`` or ``false`` (it refuses anything else)."""
    lv = v.lower()
    if lv not in ("true", "false"):
        raise ValueError(f"{v!r} is neither true nor false (wg-quick accepts only these)")
    return lv == "true"


def comma_list(v: str) -> list[str]:
    return [x.strip() for x in v.split(",") if x.strip()]


def network(v: str) -> Net:
    try:
        return ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise ValueError(f"{v!r} is not a valid IP network") from None


def interface_address(v: str) -> Iface:
    try:
        return ipaddress.ip_interface(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a valid address with prefix (like 198.19.0.1/24)") from None


def parse_endpoint(v: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → ``(host, port)``; the host is kept as written (resolved later).

    :raises ValueError: another form (an IPv6 address needs brackets), or a port outside 1..65535.
    """
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]:([0-9]+)", v) or re.fullmatch(r"([^:\[\]\s]+):([0-9]+)", v)
    if not m:
        hint = " (put an IPv6 address in brackets)" if v.count(":") > 1 and "[" not in v else ""
        raise ValueError(f"{v!r} is not host:port or [v6]:port{hint}")
    port = int(m.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1..65535)")
    return m.group(1), port


def parse_remote(v: str) -> tuple[str, int | None]:
    """A plain-VXLAN ``Remote``: ``ip``, ``ip:port`` or ``[v6]:port`` → ``(ip, port or None)``.

    :raises ValueError: anything else (host names are not accepted).
    """
    try:
        return str(ipaddress.ip_address(v)), None
    except ValueError:
        pass
    host, port = parse_endpoint(v)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address, ip:port or [v6]:port") from None


def keepalive(v: str) -> int:
    return 0 if v.lower() == "off" else number(v, 0, 65535)


_DOMAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252}[A-Za-z0-9_.])?")


def name_matching(pattern: str, what: str, *, dots: bool = True) -> Callable[[str], str]:
    """A converter for a name that ``pattern`` (ASCII) matches whole, returned unchanged.

    :param what: the kind of name and its rule, for ``'X' is not a valid WHAT``.
    :param dots: whether ``.`` and ``..`` may pass (not for names that become paths or devices).
    """
    regex = re.compile(pattern, re.ASCII)

    def convert(v: str) -> str:
        if not regex.fullmatch(v) or (not dots and v in (".", "..")):
            raise ValueError(f"{v!r} is not a valid {what}")
        return v
    return convert


#: ``v`` if it is a valid interface name as the kernel and wg-quick take it (``^[a-zA-Z0-9_=+.-]{1,15}$``, not
#: ``.`` or ``..``), for the tun, taps and bridges, else ValueError (the name shown with ``repr``, so control
#: characters are escaped).  Names reach shell hooks (``%i``) and nft scripts, so nothing else may pass.
check_ifname = name_matching(r"[A-Za-z0-9_=+.-]{1,15}", "interface name (1-15 of A-Z a-z 0-9 _=+.-)", dots=False)
peer_name = name_matching(r"[A-Za-z0-9_.@+-][A-Za-z0-9_.@+ -]{0,62}",
                          "peer name (1-63 of letters, digits, space and _.@+-; no commas)")
netns_name = name_matching(r"[A-Za-z0-9_.-]{1,64}", "network namespace name (A-Z a-z 0-9 _.-)", dots=False)
user_name = name_matching(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\$?", "user name or uid")


def dns(v: str) -> list[str]:
    """wg-quick's rule: an item of digits and dots, or with a colon, is a server; anything else a search domain."""
    out = []
    for item in comma_list(v):
        if re.fullmatch(r"[0-9.]+", item) or ":" in item:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"{item!r} is not a valid DNS server address") from None
        elif not _DOMAIN.fullmatch(item):
            raise ValueError(f"{item!r} is neither an IP address nor a search domain")
        out.append(item)
    return out


def route_table(v: str) -> str:
    """wg-quick's Table: ``off``, ``auto``, ``main`` or a numeric table id (kept as decimal text)."""
    lv = v.lower()
    if lv in ("off", "auto", "main"):
        return lv
    try:
        return str(number(v, 1, 0xFFFFFFFF))
    except ValueError:
        raise ValueError(f"{v!r} is not off, auto, main or a table number") from None


def fwmark(v: str) -> int:
    """``off`` (0) or a 32-bit mark."""
    return 0 if v.lower() == "off" else number(v, 0, 0xFFFFFFFF)


def ip_address(v: str) -> str:
    """An IPv4 or IPv6 address, normalised (``Local``, ``Vtep``)."""
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None


def remotes(v: str) -> list[str]:
    """Comma-separated plain-VXLAN remotes, each checked by :func:`parse_remote` and kept as written."""
    items = comma_list(v)
    for item in items:
        parse_remote(item)
    return items


def host_port(v: str) -> str:
    """``host:port`` checked by :func:`parse_endpoint` and kept as written (``Metrics``)."""
    parse_endpoint(v)
    return v


def ranged(lo: int, hi: int) -> Callable[[str], int]:
    """A converter for a number in ``lo..hi``."""
    return lambda v: number(v, lo, hi)


def seconds(lo: int, hi: int) -> Callable[[str], float]:
    """A converter for whole seconds in ``lo..hi``, as a float."""
    return lambda v: float(number(v, lo, hi))


def choice(*options: str) -> Callable[[str], str]:
    """A converter for one of ``options`` (any case; returned in lower case)."""
    listed = f"{', '.join(options[:-1])} or {options[-1]}"

    def convert(v: str) -> str:
        if v.lower() not in options:
            raise ValueError(f"{v!r} is not {listed}")
        return v.lower()
    return convert


def pool(version: int) -> Callable[[str], Net]:
    """A converter for an IPv4 (``version`` 4) or IPv6 network (``Pool4``, ``Pool6``)."""
    def convert(v: str) -> Net:
        net = network(v)
        if net.version != version:
            raise ValueError(f"{v!r} is not an IPv{version} network")
        return net
    return convert


def each(convert: Callable[[str], T]) -> Callable[[str], list[T]]:
    """A converter for a comma-separated list, ``convert`` applied to each item."""
    return lambda v: [convert(x) for x in comma_list(v)]


def verbatim(v: str) -> list[str]:
    """The line as written, as a one-item list (hooks: a comma is part of the shell command)."""
    return [v]
