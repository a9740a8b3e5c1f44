"""The kernel-facing state of one running interface: addresses, MTU, routes, wg-quick's /0 policy rules,
the nft tables, DNS through resolvconf, and the hooks; :class:`Interface` undoes what it did.

:mod:`vpn.daemon` drives it at start-up and shutdown, :mod:`vpn.reload` changes routes on SIGHUP, and the
root helper of :mod:`vpn.cleanup` tears it down after privileges were dropped.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tunnel import netconf
from tunnel.netconf import PolicyRule

log = logging.getLogger("pyvpn")

DEFAULT_TABLE = 51820  # wg-quick's default table and fwmark for /0 routes
RULE_PRIORITY = 32764  # "not fwmark 51820 lookup 51820"; "lookup main suppress_prefixlen 0" one before it


class DaemonError(Exception):
    """A start-up failure with a message for the operator (no traceback)."""


def run_hooks(kind: str, commands: Iterable[str], iface: str) -> None:
    for cmd in commands:
        cmd = cmd.replace("%i", iface)
        log.info("%s: %s", kind, cmd)
        r = subprocess.run(["/bin/sh", "-c", cmd], check=False)
        if r.returncode != 0 and kind in ("PreUp", "PostUp"):
            raise DaemonError(f"{kind} command failed with exit code {r.returncode}: {cmd}")


def default_rules(family: int) -> tuple[PolicyRule, PolicyRule]:
    """wg-quick's two rules for a /0: every packet without our fwmark looks up table 51820 (the
    tunnel's default route), and the main table is used except for its default routes."""
    return (PolicyRule(family, RULE_PRIORITY, DEFAULT_TABLE, fwmark=DEFAULT_TABLE, invert=True),
            PolicyRule(family, RULE_PRIORITY - 1, netconf.RT_TABLE_MAIN, suppress_prefixlen=0))


class Interface:
    """The kernel-facing state of one running interface, undone by :meth:`teardown`."""

    def __init__(self, name: str, netns: str | None) -> None:
        self.name = name
        self.netns = netns
        self.rules: list[PolicyRule] = []
        self.nft_tables: list[str] = []  # "ip pyvpn-IFACE", "ip6 pyvpn-IFACE"
        self.fwmark = 0

    def configure(self, addresses: Iterable[str], mtu: int, routes: Iterable[str], table: str | None) -> None:
        ns = self.netns
        addresses = [str(a) for a in addresses]
        netconf.set_mtu(self.name, mtu, netns=ns)
        for a in addresses:
            netconf.add_address(self.name, a, netns=ns)
        netconf.set_up(self.name, netns=ns)
        table_id = _table_id(table)
        if table_id == -1:
            return
        routes = list(routes)
        for prefix in self.plain_routes(addresses, routes, table):
            netconf.add_route(self.name, prefix, table=table_id, netns=ns)
        if table_id is None:
            for net in sorted({ipaddress.ip_network(r, strict=False) for r in routes if _is_default(r)},
                              key=lambda n: n.version):
                self._add_default(net)
                self._add_firewall(net.version, [ipaddress.ip_interface(a) for a in addresses])

    @staticmethod
    def plain_routes(addresses: Iterable[str], routes: Iterable[str], table: str | None) -> list[str]:
        """The AllowedIPs prefixes that get an ordinary route (``ip route add PREFIX dev IFACE``),
        longest first: not those inside an address's own prefix, not a /0 in the main table (that
        is policy routing), none with ``Table = off``."""
        table_id = _table_id(table)
        if table_id == -1:
            return []
        own = [ipaddress.ip_interface(a).network for a in addresses]
        out = []
        for net in sorted({ipaddress.ip_network(r, strict=False) for r in routes}, key=lambda n: -n.prefixlen):
            if net.prefixlen == 0 and table_id is None:
                continue
            if any(net.version == o.version and net.subnet_of(o) for o in own):  # type: ignore[arg-type]
                continue  # already routed through the address's own prefix
            out.append(str(net))
        return out

    def update_routes(self, old: list[str], new: list[str], table: str | None) -> None:
        """Add the routes in ``new`` but not in ``old`` and remove the others (a reload), logging each."""
        table_id = _table_id(table)
        if table_id == -1:
            return
        changes = [(netconf.del_route, "remove", n) for n in old if n not in new]
        changes += [(netconf.add_route, "add", n) for n in new if n not in old]
        for op, verb, net in changes:
            try:
                op(self.name, net, table=table_id, netns=self.netns)
                log.info("%s: %s route to %s", self.name, "added a" if verb == "add" else "removed the", net)
            except OSError as e:
                log.warning("%s: could not %s the route to %s: %s", self.name, verb, net, e)

    def _add_default(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        """wg-quick's trick: default route in table 51820, used by every packet without our fwmark.

        Through netconf's runner: we are inside the running (uv)loop here, where pyroute2's
        synchronous API cannot run its own loop.
        """
        self.fwmark = DEFAULT_TABLE
        netconf.add_route(self.name, str(net), table=DEFAULT_TABLE, netns=self.netns)
        for rule in default_rules(socket.AF_INET if net.version == 4 else socket.AF_INET6):
            try:
                netconf.add_policy_rule(rule, netns=self.netns)
            except OSError as e:  # keep going without the rule
                log.warning("%s: could not add policy rule %s: %s", self.name, rule, e)
                continue
            self.rules.append(rule)

    def clean_stale(self) -> list[str]:
        """Remove what an earlier run of this interface left when it was killed without cleanup.

        Call it when the interface does not exist (so nothing live owns its state): the nft
        tables ``pyvpn-IFACE``, and per IP family the /0 rules of :func:`default_rules` when
        table 51820 holds no route any more (the tun that had them is gone; a live /0 interface
        in this namespace would still have its default route there).  Each removal is logged.

        :returns: what was removed, one description each.
        """
        removed = []
        if self.netns is None and shutil.which("nft") is not None:
            for pf in ("ip", "ip6"):
                table = f"pyvpn-{self.name}"
                r = subprocess.run(["nft", "delete", "table", pf, table], capture_output=True, check=False)
                if r.returncode == 0:
                    removed.append(f"nft table {pf} {table}")
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                if netconf.table_routes(DEFAULT_TABLE, family, netns=self.netns):
                    continue
                ours = default_rules(family)
                for rule in netconf.policy_rules(family, netns=self.netns):
                    if rule in ours:
                        netconf.del_policy_rule(rule, netns=self.netns)
                        removed.append(f"policy rule '{rule}'")
            except OSError as e:
                log.warning("%s: could not look for stale policy rules: %s", self.name, e)
        for what in removed:
            log.info("%s: removed the stale %s left by an earlier run", self.name, what)
        return removed

    def _add_firewall(self, version: int, addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]) -> None:
        """wg-quick's nft rules for a /0 (its ``add_default``), in table ``pyvpn-IFACE``.

        Replies from the peer arrive without our fwmark, so a strict reverse-path filter
        (``rp_filter=1``) would look their source up in table 51820, find the tunnel, and drop
        them.  Like wg-quick: remember the mark of our outgoing UDP flows in conntrack, restore it
        on their replies, and let the reverse-path lookup use it (``src_valid_mark=1``).  Also
        drop packets for our tunnel addresses that arrive on another interface.  Only without
        ``Namespace``: there our UDP socket is in another namespace and cannot loop.
        """
        if self.netns is not None:
            return
        if shutil.which("nft") is None:
            log.warning("%s: nft is not installed; replies from the peer may be dropped by a strict "
                        "reverse-path filter (rp_filter=1)", self.name)
            return
        pf = "ip" if version == 4 else "ip6"
        table = f"{pf} pyvpn-{self.name}"
        mark = DEFAULT_TABLE
        lines = [f"add table {table}", f"delete table {table}", f"add table {table}",
                 f"add chain {table} preraw {{ type filter hook prerouting priority -300; }}",
                 f"add chain {table} premangle {{ type filter hook prerouting priority -150; }}",
                 f"add chain {table} postmangle {{ type filter hook postrouting priority -150; }}"]
        for a in addresses:
            if a.version == version:
                lines.append(f'add rule {table} preraw iifname != "{self.name}" {pf} daddr {a.ip} '
                             "fib saddr type != local drop")
        lines += [f"add rule {table} postmangle meta l4proto udp mark {mark} ct mark set mark",
                  f"add rule {table} premangle meta l4proto udp meta mark set ct mark"]
        r = subprocess.run(["nft", "-f", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True,
                           check=False)
        if r.returncode != 0:
            log.warning("%s: could not add nft table %s: %s", self.name, table, r.stderr.strip())
            return
        self.nft_tables.append(table)
        if version == 4:
            try:
                Path("/proc/sys/net/ipv4/conf/all/src_valid_mark").write_text("1\n")
            except OSError as e:
                log.warning("%s: could not set net.ipv4.conf.all.src_valid_mark=1: %s", self.name, e)

    def teardown(self) -> None:
        for table in self.nft_tables:
            subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True, check=False)
        self.nft_tables = []
        for rule in self.rules:
            try:
                netconf.del_policy_rule(rule, netns=self.netns)
            except OSError as e:
                log.warning("%s: could not remove policy rule %s: %s", self.name, rule, e)
        self.rules = []


def _table_id(table: str | None) -> int | None:
    """``Table =``: None for the main table (auto, main, unset), -1 for ``off``, else the number."""
    if table is None or table.lower() in ("auto", "main"):
        return None
    if table.lower() == "off":
        return -1
    return int(table)


def _is_default(route: str) -> bool:
    return ipaddress.ip_network(route, strict=False).prefixlen == 0


def set_dns(iface: str, servers: list[str], search: list[str]) -> bool:
    if not servers and not search:
        return False
    if shutil.which("resolvconf") is None:
        log.warning("DNS is set in the config but resolvconf is not installed; leaving DNS alone")
        return False
    text = "".join(f"nameserver {s}\n" for s in servers)
    if search:
        text += f"search {' '.join(search)}\n"
    subprocess.run(["resolvconf", "-a", f"tun.{iface}", "-m", "0", "-x"], input=text.encode(), check=False)
    return True


def unset_dns(iface: str) -> None:
    if shutil.which("resolvconf") is not None:
        subprocess.run(["resolvconf", "-d", f"tun.{iface}", "-f"], check=False)
