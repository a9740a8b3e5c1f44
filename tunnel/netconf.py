"""Interface configuration over rtnetlink, through pyroute2 (never by running ``ip``).

Every function takes a keyword ``netns``: ``None`` works in the calling process's namespace, a name works inside
the named namespace ``/var/run/netns/<name>`` (which must exist; it is never created here).  Each call opens one
short-lived netlink socket and closes it: these are set-up operations, not data path, and a cached socket would
have to follow the caller across threads and namespaces.

pyroute2's synchronous API runs its own asyncio loop and refuses to work in a thread whose loop is already
running.  So when called from inside a running event loop, an operation runs on a one-shot helper thread while
the caller waits (a few milliseconds, blocking the loop like any synchronous call).

Failures raise :class:`NetconfError` (an :class:`OSError` carrying the kernel's errno) whose message names the
operation, the interface, the namespace and the kernel's own words.  Malformed arguments (an address that does not
parse, a bad name) raise :class:`ValueError` before anything is sent to the kernel.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute  # type: ignore[import-untyped, unused-ignore]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "NetconfError",
    "PolicyRule",
    "add_address",
    "add_policy_rule",
    "add_route",
    "addresses",
    "create_bridge",
    "del_address",
    "del_policy_rule",
    "del_route",
    "delete_link",
    "enslave",
    "link_exists",
    "link_index",
    "move_to_netns",
    "policy_rules",
    "set_down",
    "set_mtu",
    "set_up",
    "table_routes",
]

T = TypeVar("T")

#: include/uapi/linux/if_addr.h: skip duplicate address detection (so IPv6 addresses are usable at once).
IFA_F_NODAD = 0x02
_IFNAME_MAX = 15


class NetconfError(OSError):
    """A netlink operation failed; ``errno`` is the kernel's error code."""


# -- plumbing ---------------------------------------------------------------------------------------------------


def _check_ifname(name: str) -> None:
    if not isinstance(name, str) or not 0 < len(name.encode()) <= _IFNAME_MAX or "/" in name:
        raise ValueError(f"bad interface name {name!r} (1..{_IFNAME_MAX} bytes, no '/')")


def _check_netns(netns: str | None) -> None:
    if netns is not None and (not isinstance(netns, str) or not netns or "/" in netns or netns in (".", "..")):
        raise ValueError(f"bad network namespace name {netns!r}")


def _where(netns: str | None) -> str:
    return f" in netns {netns!r}" if netns else ""


def _open(netns: str | None) -> IPRoute:
    if netns is None:
        return IPRoute(ext_ack=True)
    # flags=0: never create the namespace (pyroute2's default is O_CREAT).
    return IPRoute(netns=netns, flags=0, ext_ack=True)


def _kernel_message(exc: NetlinkError) -> str:
    parts = [str(a) for a in exc.args[1:] if a] if len(exc.args) > 1 else []
    text = "; ".join(parts) or errno.errorcode.get(exc.code, "") or str(exc)
    extack = getattr(exc, "extack", None)
    if extack and str(extack) not in text:
        text = f"{text} ({extack})"
    name = errno.errorcode.get(exc.code)
    return f"{text} [{name}]" if name else text


def _call(what: str, netns: str | None, fn: Callable[[IPRoute], T]) -> T:
    """Open a socket (in ``netns``), run ``fn`` on it, close it; translate errors into NetconfError."""
    _check_netns(netns)
    try:
        ipr = _open(netns)
    except FileNotFoundError as exc:
        raise NetconfError(errno.ENOENT, f"{what}: network namespace {netns!r} does not exist") from exc
    except OSError as exc:
        raise NetconfError(exc.errno, f"{what}{_where(netns)}: cannot open netlink: {exc.strerror}") from exc
    try:
        return fn(ipr)
    except NetlinkError as exc:
        raise NetconfError(exc.code, f"{what}{_where(netns)}: {_kernel_message(exc)}") from exc
    finally:
        ipr.close()


def _run(what: str, netns: str | None, fn: Callable[[IPRoute], T]) -> T:
    """Run :func:`_call` here, or on a helper thread when this thread's event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _call(what, netns, fn)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = _call(what, netns, fn)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work, name="pyvpn-netconf", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


def _index(ipr: IPRoute, name: str, what: str, netns: str | None) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetconfError(errno.ENODEV, f"{what}{_where(netns)}: no interface named {name!r}")
    return int(found[0])


def _interface(cidr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        iface = ipaddress.ip_interface(cidr)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad address {cidr!r}: expected e.g. '198.19.0.1/24' or 'fd00::1/64'") from exc
    if "/" not in str(cidr):
        raise ValueError(f"address {cidr!r} needs a prefix length, e.g. '{cidr}/24'")
    return iface


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad route destination {cidr!r}: {exc}") from exc


# -- links ------------------------------------------------------------------------------------------------------


def link_index(name: str, *, netns: str | None = None) -> int:
    """Return the interface index of ``name``.

    :param name: interface name.
    :param netns: named network namespace, or ``None`` for the current one.
    :raises NetconfError: no such interface (``ENODEV``).
    """
    _check_ifname(name)
    what = f"link_index({name})"
    return _run(what, netns, lambda ipr: _index(ipr, name, what, netns))


def link_exists(name: str, *, netns: str | None = None) -> bool:
    """Tell whether an interface called ``name`` exists.

    :param name: interface name.
    :param netns: named network namespace, or ``None`` for the current one.
    """
    _check_ifname(name)
    return _run(f"link_exists({name})", netns, lambda ipr: bool(ipr.link_lookup(ifname=name)))


def _link_set(what: str, name: str, netns: str | None, **attrs: Any) -> None:
    def op(ipr: IPRoute) -> None:
        ipr.link("set", index=_index(ipr, name, what, netns), **attrs)

    _run(what, netns, op)


def set_up(name: str, *, netns: str | None = None) -> None:
    """Bring the link up.

    :param name: interface name.
    :param netns: named network namespace, or ``None`` for the current one.
    """
    _check_ifname(name)
    _link_set(f"set_up({name})", name, netns, state="up")


def set_down(name: str, *, netns: str | None = None) -> None:
    """Bring the link down.

    :param name: interface name.
    :param netns: named network namespace, or ``None`` for the current one.
    """
    _check_ifname(name)
    _link_set(f"set_down({name})", name, netns, state="down")


def set_mtu(name: str, mtu: int, *, netns: str | None = None) -> None:
    """Set the link MTU.

    :param name: interface name.
    :param mtu: new MTU in bytes.
    :param netns: named network namespace, or ``None`` for the current one.
    :raises NetconfError: the kernel refused (out of the device's range: ``EINVAL``).
    """
    _check_ifname(name)
    if type(mtu) is not int or not 0 < mtu <= 0xFFFFFFFF:
        raise ValueError(f"bad MTU {mtu!r}")
    _link_set(f"set_mtu({name}, {mtu})", name, netns, mtu=mtu)


def delete_link(name: str, *, netns: str | None = None) -> None:
    """Delete an interface (for a tun device this also detaches it from its fd's owner).

    :param name: interface name.
    :param netns: named network namespace, or ``None`` for the current one.
    """
    _check_ifname(name)
    what = f"delete_link({name})"

    def op(ipr: IPRoute) -> None:
        ipr.link("del", index=_index(ipr, name, what, netns))

    _run(what, netns, op)


def move_to_netns(name: str, netns_name: str, *, netns: str | None = None) -> None:
    """Move an interface into another named namespace (it keeps its name; addresses are lost).

    :param name: interface name.
    :param netns_name: destination namespace name (must exist).
    :param netns: namespace the interface is in now, or ``None`` for the current one.
    """
    _check_ifname(name)
    _check_netns(netns_name)
    what = f"move_to_netns({name}, {netns_name})"

    def op(ipr: IPRoute) -> None:
        index = _index(ipr, name, what, netns)
        try:
            ipr.link("set", index=index, net_ns_fd=netns_name)
        except FileNotFoundError as exc:
            raise NetconfError(errno.ENOENT, f"{what}: network namespace {netns_name!r} does not exist") from exc

    _run(what, netns, op)


def create_bridge(name: str, *, netns: str | None = None) -> None:
    """Create a Linux bridge (left down; see :func:`set_up`).

    :param name: new interface name.
    :param netns: named network namespace, or ``None`` for the current one.
    :raises NetconfError: it exists already (``EEXIST``) or bridges are unavailable.
    """
    _check_ifname(name)
    _run(f"create_bridge({name})", netns, lambda ipr: ipr.link("add", ifname=name, kind="bridge") and None)


def enslave(name: str, bridge: str, *, netns: str | None = None) -> None:
    """Make ``name`` a port of ``bridge``.

    :param name: the port interface (e.g. a tap device).
    :param bridge: the bridge interface.
    :param netns: named network namespace, or ``None`` for the current one.
    """
    _check_ifname(name)
    _check_ifname(bridge)
    what = f"enslave({name}, {bridge})"

    def op(ipr: IPRoute) -> None:
        master = _index(ipr, bridge, what, netns)
        ipr.link("set", index=_index(ipr, name, what, netns), master=master)

    _run(what, netns, op)


# -- addresses --------------------------------------------------------------------------------------------------


def add_address(name: str, cidr: str, *, netns: str | None = None) -> None:
    """Add an IPv4 or IPv6 address; IPv6 ones skip duplicate address detection (``nodad``).

    :param name: interface name.
    :param cidr: address with prefix length, e.g. ``"198.19.0.1/24"`` or ``"fd00::1/64"``.
    :param netns: named network namespace, or ``None`` for the current one.
    :raises NetconfError: the address exists already (``EEXIST``), no such interface, ...
    """
    _check_ifname(name)
    iface = _interface(cidr)
    what = f"add_address({name}, {cidr})"
    extra: dict[str, Any] = {"flags": IFA_F_NODAD} if iface.version == 6 else {}

    def op(ipr: IPRoute) -> None:
        ipr.addr(
            "add",
            index=_index(ipr, name, what, netns),
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            **extra,
        )

    _run(what, netns, op)


def del_address(name: str, cidr: str, *, netns: str | None = None) -> None:
    """Remove an address added with :func:`add_address`.

    :param name: interface name.
    :param cidr: the same address with prefix length.
    :param netns: named network namespace, or ``None`` for the current one.
    """
    _check_ifname(name)
    iface = _interface(cidr)
    what = f"del_address({name}, {cidr})"

    def op(ipr: IPRoute) -> None:
        ipr.addr(
            "del", index=_index(ipr, name, what, netns), address=str(iface.ip), prefixlen=iface.network.prefixlen
        )

    _run(what, netns, op)


def addresses(name: str, *, netns: str | None = None) -> list[str]:
    """List the addresses of an interface as ``"addr/prefixlen"`` strings (IPv4 first, kernel order).

    :param name: interface name.
    :param netns: named network namespace, or ``None`` for the current one.
    """
    _check_ifname(name)
    what = f"addresses({name})"

    def op(ipr: IPRoute) -> list[str]:
        index = _index(ipr, name, what, netns)
        out = []
        for msg in ipr.get_addr(index=index):
            out.append((msg["family"], f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"))
        out.sort(key=lambda x: x[0])
        return [text for _, text in out]

    return _run(what, netns, op)


# -- routes -----------------------------------------------------------------------------------------------------


def _route(cmd: str, name: str, cidr: str, table: int | None, netns: str | None) -> None:
    _check_ifname(name)
    net = _network(cidr)
    if table is not None and (type(table) is not int or not 0 < table < 2**32):
        raise ValueError(f"bad routing table {table!r}")
    what = f"{cmd}_route({name}, {cidr}{'' if table is None else f', table={table}'})"
    extra: dict[str, Any] = {} if table is None else {"table": table}

    def op(ipr: IPRoute) -> None:
        ipr.route(cmd, dst=str(net), oif=_index(ipr, name, what, netns), **extra)

    _run(what, netns, op)


def add_route(name: str, cidr: str, *, table: int | None = None, netns: str | None = None) -> None:
    """Route a prefix out of an interface (``ip route add CIDR dev NAME [table T]``).

    :param name: interface name.
    :param cidr: destination prefix, host bits zero: ``"198.19.1.0/24"``, ``"fd00:1::/64"``.
    :param table: routing table number, or ``None`` for ``main``.
    :param netns: named network namespace, or ``None`` for the current one.
    :raises NetconfError: the route exists already (``EEXIST``), no such interface, ...
    """
    _route("add", name, cidr, table, netns)


def del_route(name: str, cidr: str, *, table: int | None = None, netns: str | None = None) -> None:
    """Remove a route added with :func:`add_route`.

    :param name: interface name.
    :param cidr: destination prefix.
    :param table: routing table number, or ``None`` for ``main``.
    :param netns: named network namespace, or ``None`` for the current one.
    :raises NetconfError: no such route (``ESRCH``), no such interface, ...
    """
    _route("del", name, cidr, table, netns)


# -- policy rules -----------------------------------------------------------------------------------------------

#: include/uapi/linux/fib_rules.h: the rule matches when its selector does *not* (``ip rule add not ...``).
FIB_RULE_INVERT = 0x2
RT_TABLE_MAIN = 254


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ``ip rule``, as far as pyvpn uses them (wg-quick's /0 trick).

    :ivar family: ``socket.AF_INET`` or ``socket.AF_INET6``.
    :ivar priority: the rule's preference.
    :ivar table: the routing table it looks up (254 = main).
    :ivar fwmark: match packets with this mark (all 32 bits), or None.
    :ivar invert: match packets that do *not* match the selector (``not fwmark ...``).
    :ivar suppress_prefixlen: ignore routes with this prefix length or shorter, or None.
    """

    family: int
    priority: int
    table: int
    fwmark: int | None = None
    invert: bool = False
    suppress_prefixlen: int | None = None

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"family": self.family, "priority": self.priority, "table": self.table}
        if self.fwmark is not None:
            kw.update(fwmark=self.fwmark, fwmask=0xFFFFFFFF)
        if self.invert:
            kw["flags"] = FIB_RULE_INVERT
        if self.suppress_prefixlen is not None:
            kw["suppress_prefixlen"] = self.suppress_prefixlen
        return kw

    def __str__(self) -> str:
        v = "-6 " if self.family == socket.AF_INET6 else ""
        sel = f"{'not ' if self.invert else ''}{f'fwmark {self.fwmark:#x}' if self.fwmark is not None else 'from all'}"
        sup = f" suppress_prefixlen {self.suppress_prefixlen}" if self.suppress_prefixlen is not None else ""
        table = "main" if self.table == RT_TABLE_MAIN else str(self.table)
        return f"ip {v}rule {self.priority}: {sel} lookup {table}{sup}"


def _rule_from_msg(msg: Any) -> PolicyRule:
    suppress = msg.get_attr("FRA_SUPPRESS_PREFIXLEN")
    return PolicyRule(family=int(msg["family"]), priority=int(msg.get_attr("FRA_PRIORITY") or 0),
                      table=int(msg.get_attr("FRA_TABLE") or msg["table"]), fwmark=msg.get_attr("FRA_FWMARK"),
                      invert=bool(msg["flags"] & FIB_RULE_INVERT),
                      suppress_prefixlen=None if suppress in (None, 0xFFFFFFFF) else int(suppress))


def policy_rules(family: int, *, netns: str | None = None) -> list[PolicyRule]:
    """The policy rules of one family (``ip [-6] rule show``), in kernel order.

    :param family: ``socket.AF_INET`` or ``socket.AF_INET6``.
    :param netns: named network namespace, or ``None`` for the current one.
    """
    return _run("policy_rules", netns, lambda ipr: [_rule_from_msg(m) for m in ipr.get_rules(family=family)])


def add_policy_rule(rule: PolicyRule, *, netns: str | None = None) -> None:
    """``ip rule add ...``; :raises NetconfError: e.g. ``EEXIST`` when the same rule is there already."""
    _run(f"add rule ({rule})", netns, lambda ipr: ipr.rule("add", **rule.kwargs()))


def del_policy_rule(rule: PolicyRule, *, netns: str | None = None) -> None:
    """``ip rule del ...``; :raises NetconfError: ``ENOENT`` when there is no such rule."""
    _run(f"del rule ({rule})", netns, lambda ipr: ipr.rule("del", **rule.kwargs()))


def table_routes(table: int, family: int, *, netns: str | None = None) -> int:
    """How many routes of ``family`` routing table ``table`` holds (0: nothing uses the table)."""
    return _run(f"routes of table {table}", netns, lambda ipr: len(ipr.get_routes(family=family, table=table)))
