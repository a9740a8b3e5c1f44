"""Rendering of device snapshots for ``pyvpn show``: a table, ``wg show``-style blocks, or JSON.

Keys, endpoints and AllowedIPs are never cut.  In a terminal the peer table is used when every one
of them comes out whole at the terminal's width; otherwise, and always in a pipe, each interface and
peer is a block with one field per line, as ``wg show`` prints them (so ``pyvpn show | grep KEY``
works).  :func:`select_peers` narrows snapshots to peers named or matching a key prefix.
The JSON form is documented, field by field, in docs/show-json.md (:data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from .drops import explain
from .policy import ClientPolicy, format_rate, format_time

if TYPE_CHECKING:
    from .enroll import ClientRow

# Bump when a field of `pyvpn show --json` changes meaning or goes away (adding one does not).
SCHEMA_VERSION = 1


class PeerNotFound(ValueError):
    """No peer (or more than one, for a key prefix) matches what ``pyvpn show`` was asked for."""


def to_jsonable(obj: Any) -> Any:
    """Snapshot → JSON-ready data: keys as base64 strings (never private keys: none are in it)."""
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def show_json(snap: dict[str, Any]) -> dict[str, Any]:
    """One interface as ``pyvpn show --json`` prints it (docs/show-json.md)."""
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    out.update(to_jsonable(snap))
    return out


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.2f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"


def ago(wall: float, now: float | None = None) -> str:
    if not wall:
        return "never"
    secs = int((now if now is not None else time.time()) - wall)
    if secs <= 0:
        return "now"
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if secs >= size:
            k, secs = divmod(secs, size)
            parts.append(f"{k} {unit}{'s' if k != 1 else ''}")
    return ", ".join(parts[:2]) + " ago"


def _key(value: Any) -> str:
    return str(to_jsonable(value)) if value else "(none)"


# -- choosing peers ---------------------------------------------------------------------------------------
def select_peers(snapshots: Sequence[dict[str, Any]], query: str) -> list[dict[str, Any]]:
    """The snapshots that hold the peer ``query`` names, each with only the matching peers.

    ``query`` is a peer's name (exact) or the start of its base64 public key.  A name wins over a key
    prefix; a key prefix that fits more than one peer is refused, naming them.

    :raises PeerNotFound: nothing (or, for a prefix, more than one peer) matches.
    """
    def matching(pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        out = []
        for snap in snapshots:
            peers = [p for p in snap.get("peers", []) if pred(p)]
            if peers:
                out.append({**snap, "peers": peers})
        return out

    by_name = matching(lambda p: p.get("name") == query)
    if by_name:
        return by_name
    if not query:
        raise PeerNotFound("an empty peer name or key prefix matches nothing")
    by_key = matching(lambda p: _key(p.get("public_key")).startswith(query))
    found = [(s["interface"], p) for s in by_key for p in s["peers"]]
    if not found:
        raise PeerNotFound(f"no peer is named {query!r} or has a public key starting with it")
    if len(found) > 1:
        which = ", ".join(f"{_key(p['public_key'])} on {iface}" for iface, p in found)
        raise PeerNotFound(f"{query!r} is the start of {len(found)} peers' keys ({which}); give more of it")
    return by_key


# -- blocks (wg show's layout) ----------------------------------------------------------------------------
def _line(label: str, value: str) -> Text:
    return Text.assemble("  ", (label, "bold"), ": ", value)


def _drop_lines(counts: dict[str, int], indent: str) -> list[Text]:
    out = []
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        why = explain(reason)
        out.append(Text.assemble(indent, (reason, "yellow"), f": {n}", (f"  ({why})" if why else "", "dim")))
    return out


def _peer_fields(p: dict[str, Any]) -> list[tuple[str, str]]:
    fields = []
    if p.get("name"):
        fields.append(("name", str(p["name"])))
    fields.append(("endpoint", p.get("endpoint") or "(none)"))
    fields.append(("allowed ips", ", ".join(p.get("allowed_ips", [])) or "(none)"))
    fields.append(("latest handshake", ago(p.get("latest_handshake") or 0)))
    fields.append(("transfer", (f"{human_bytes(p.get('rx_bytes', 0))} received, "
                               f"{human_bytes(p.get('tx_bytes', 0))} sent")))
    if p.get("persistent_keepalive"):
        fields.append(("persistent keepalive", f"every {p['persistent_keepalive']} seconds"))
    if p.get("has_preshared_key"):
        fields.append(("preshared key", "(hidden)"))
    pol = policy_text(p)
    if pol is not None:
        fields.append(("policy", pol))
    return fields


def _interface_fields(snap: dict[str, Any]) -> list[tuple[str, str]]:
    fields = [("public key", _key(snap.get("public_key"))),
              ("listening port", str(snap.get("listen_port")))]
    if snap.get("role"):
        fields.append(("role", str(snap["role"])))
    fields.append(("mode", str(snap.get("mode", "l3"))))
    if snap.get("mtu"):
        fields.append(("mtu", str(snap["mtu"])))
    if snap.get("offloads") is not None:
        fields.append(("offloads", ", ".join(snap["offloads"]) or "none"))
    fwd = ("inside the daemon (Forward = on: bypasses the host firewall)" if snap.get("forward")
           else "via the kernel (ip_forward and the host firewall decide)")
    if snap.get("forwarded_packets"):
        fwd += f" ({snap['forwarded_packets']} packets so far)"
    fields.append(("forwarding", fwd))
    if snap.get("under_load"):
        fields.append(("under load", "yes: handshakes are answered with cookies"))
    stall = snap.get("stall")
    if stall is not None:
        fields.append(("data path", data_path_text(stall)))
    return fields


def data_path_text(stall: dict[str, Any]) -> str:
    """The ``data path`` field: ``ok``, or ``STALLED`` with what is waiting and for how long."""
    if stall.get("state") == "stalled":
        queued = " and ".join(stall.get("queued") or ()) or "its inputs"
        seconds = stall.get("seconds", 0)
        text = f"STALLED: packets waiting on {queued}, nothing taken in for {seconds:.0f} s"
    else:
        text = "ok"
    extra = []
    if stall.get("stalls"):
        extra.append(f"{stall['stalls']} stall(s) so far")
    if stall.get("loop_blocked"):
        extra.append(f"event loop blocked {stall['loop_blocked']} time(s)")
    return text + (f" ({', '.join(extra)})" if extra else "")


def _has_policy(p: dict[str, Any]) -> bool:
    pol = p.get("policy") or {}
    return bool(pol.get("allow") or pol.get("deny") or pol.get("rate_limit") or pol.get("expires")
                or pol.get("disabled") or p.get("denied") or p.get("ratelimited") or p.get("refused_handshakes"))


def policy_text(p: dict[str, Any]) -> str | None:
    """A peer's per-client policy on one line (state, expiry, rate limit, rules and their counters), or None
    when it has none."""
    if not _has_policy(p):
        return None
    from .policy import format_rate, format_time

    pol = p.get("policy") or {}
    parts = [str(pol.get("state", "active"))]
    if pol.get("expires") is not None:
        parts.append(f"expires {format_time(pol['expires'])}")
    if pol.get("rate_limit"):
        parts.append(f"rate limit {format_rate(pol['rate_limit'])}")
    parts += [f"allow {r}" for r in pol.get("allow", [])] + [f"deny {r}" for r in pol.get("deny", [])]
    parts.append(f"{p.get('denied', 0)} denied, {p.get('ratelimited', 0)} over the rate, "
                 f"{p.get('refused_handshakes', 0)} refused handshakes")
    return "; ".join(parts)


def _segment_text(seg: dict[str, Any]) -> str:
    plain = " (plain VXLAN, unencrypted)" if seg.get("plain") else ""
    per_peer = f" (at most {seg['mac_limit_per_peer']} per peer)" if seg.get("mac_limit_per_peer") else ""
    limit = f", table limit {seg['mac_limit']}" if seg.get("mac_limit") else ""
    return f"vni {seg['vni']} on {seg['tap']}: {seg.get('macs', 0)} MACs learned{plain}{per_peer}{limit}"


def _tail(snap: dict[str, Any]) -> list[RenderableType]:
    """Segments, drops and ignored packets: the same in both layouts."""
    out: list[RenderableType] = []
    for seg in snap.get("segments", []):
        out.append(Text.assemble(("segment", "bold"), " ", _segment_text(seg)))
        if seg.get("peers"):
            out.append(_line("members", ", ".join(str(x) for x in seg["peers"])))
    if snap.get("drops"):
        out.append(Text("drops by reason:", style="bold"))
        out.extend(_drop_lines(snap["drops"], "  "))
    if snap.get("ignored"):
        out.append(Text("ignored (expected, not counted as drops):", style="bold"))
        out.extend(_drop_lines(snap["ignored"], "  "))
    return out


def blocks(snap: dict[str, Any]) -> list[RenderableType]:
    """One interface as ``wg show`` prints it: a block per interface and per peer, one field a line."""
    out: list[RenderableType] = [Text.assemble(("interface", "bold"), ": ", (str(snap["interface"]), "bold green"))]
    out.extend(_line(k, v) for k, v in _interface_fields(snap))
    for p in snap.get("peers", []):
        out.append(Text(""))
        out.append(Text.assemble(("peer", "bold"), ": ", (_key(p.get("public_key")), "yellow")))
        out.extend(_line(k, v) for k, v in _peer_fields(p))
        if p.get("drops"):
            out.append(Text.assemble("  ", ("drops", "bold"), ":"))
            out.extend(_drop_lines(p["drops"], "    "))
    tail = _tail(snap)
    if tail:
        out.append(Text(""))
        out.extend(tail)
    return out


# -- the table (wide terminals) ---------------------------------------------------------------------------
def table(snap: dict[str, Any]) -> list[RenderableType]:
    head = Table.grid(padding=(0, 2))
    head.add_row("[bold]interface[/]", Text(str(snap["interface"]), style="bold green"))
    for k, v in _interface_fields(snap):
        head.add_row(k, Text(v))
    peers = Table(title=None, show_lines=False)
    for col in ("peer", "endpoint", "allowed ips", "latest handshake", "received", "sent", "keepalive", "drops"):
        peers.add_column(col, no_wrap=col in ("peer", "endpoint", "allowed ips"))
    for p in snap.get("peers", []):
        label = _key(p.get("public_key"))
        if p.get("name"):
            label = f"{p['name']}\n{label}"
        drops = ", ".join(f"{k} {v}" for k, v in sorted((p.get("drops") or {}).items()))
        cells = [label, p.get("endpoint") or "(none)", "\n".join(p.get("allowed_ips", [])) or "(none)",
                 ago(p.get("latest_handshake") or 0), human_bytes(p.get("rx_bytes", 0)),
                 human_bytes(p.get("tx_bytes", 0)),
                 f"every {p['persistent_keepalive']} s" if p.get("persistent_keepalive") else "off", drops or "-"]
        peers.add_row(*(Text(c) for c in cells))  # Text: "[fd00::1]:51820" is not markup
    policed: list[RenderableType] = []
    for p in snap.get("peers", []):
        pol = policy_text(p)
        if pol is not None:
            if not policed:
                policed.append(Text("per-client policy:", style="bold"))
            policed.append(_line(str(p.get("name") or _key(p.get("public_key"))), pol))
    return [head, peers, *policed, *_tail(snap)]


def must_show(snap: dict[str, Any]) -> list[str]:
    """What a rendering of ``snap`` has to contain whole: keys, endpoints, AllowedIPs."""
    out = [_key(snap.get("public_key"))]
    for p in snap.get("peers", []):
        out.append(_key(p.get("public_key")))
        if p.get("endpoint"):
            out.append(str(p["endpoint"]))
        out.extend(str(a) for a in p.get("allowed_ips", []))
    return out


def fits(console: Console, parts: Iterable[RenderableType], whole: Iterable[str]) -> bool:
    """Whether ``parts`` rendered at ``console``'s width keep every string of ``whole`` on one line."""
    probe = Console(width=console.width, record=True, file=io.StringIO(), color_system=None, soft_wrap=False)
    for part in parts:
        probe.print(part)
    lines = probe.export_text(clear=True).splitlines()
    return all(any(s in ln for ln in lines) for s in whole)


def print_parts(console: Console, parts: Iterable[RenderableType]) -> None:
    for part in parts:
        if isinstance(part, Text):
            console.print(part, soft_wrap=True)  # never broken by rich: the terminal wraps long lines
        else:
            console.print(part)


def print_fitting(wide: Sequence[RenderableType], narrow: Sequence[RenderableType], whole: Iterable[str],
                  console: Console | None = None) -> None:
    """Print ``wide`` (tables) in a terminal where every string of ``whole`` comes out on one line, else
    ``narrow`` (one field a line: never cut, and stable for grep in a pipe)."""
    console = console or Console(highlight=False)
    use_wide = console.is_terminal and fits(console, wide, whole)
    print_parts(console, wide if use_wide else narrow)


def render(snapshots: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print ``snapshots``: the table where it fits in a terminal, else :func:`blocks`."""
    console = console or Console(highlight=False)
    for i, snap in enumerate(snapshots):
        if i:
            console.print()
        print_fitting(table(snap), blocks(snap), must_show(snap), console)


# -- pyvpn server list-clients ------------------------------------------------------------------------------
def clients_json(rows: Sequence[ClientRow]) -> list[dict[str, Any]]:
    """The clients as ``pyvpn server list-clients --json`` prints them."""
    return [{"name": r.name, "addresses": list(r.addresses), "public_key": r.public_key,
             "latest_handshake": r.latest_handshake, "endpoint": r.endpoint, "state": r.state,
             "expires": format_time(r.policy.expires) if r.policy.expires is not None else None,
             "rate_limit": r.policy.rate_limit, "allow": [str(x) for x in r.policy.allow],
             "deny": [str(x) for x in r.policy.deny], "denied": r.denied,
             "ratelimited": r.ratelimited} for r in rows]


def render_clients(rows: Sequence[ClientRow], title: str, console: Console | None = None) -> None:
    """Print the clients (``pyvpn server list-clients``): a table, and a second one of per-client policy,
    where they fit in a terminal, else one field a line, as :func:`render` does for interfaces."""
    clients = Table(title=title)
    for col in ("name", "address", "public key", "latest handshake", "endpoint"):
        clients.add_column(col, no_wrap=col != "latest handshake")
    narrow: list[Any] = [Text(f"{title}:")]
    whole: list[str] = []
    policed: list[tuple[Any, list[str], str, str, str, str]] = []
    for r in rows:
        hs = "-" if r.latest_handshake is None else ago(r.latest_handshake)
        clients.add_row(*(Text(c) for c in (r.name or "", "\n".join(r.addresses), r.public_key, hs, r.endpoint or "")))
        narrow += [Text(""), Text(f"client: {r.name or '(no name)'}"), Text(f"  public key: {r.public_key}"),
                   Text(f"  addresses: {', '.join(r.addresses) or '(none)'}"), Text(f"  latest handshake: {hs}")]
        if r.endpoint:
            narrow.append(Text(f"  endpoint: {r.endpoint}"))
        whole += [r.public_key, *r.addresses, *([r.endpoint] if r.endpoint else [])]
        if r.policy != ClientPolicy() or r.state != "active":
            rules = [f"allow {x}" for x in r.policy.allow] + [f"deny {x}" for x in r.policy.deny]
            expires = format_time(r.policy.expires) if r.policy.expires is not None else "never"
            rate = format_rate(r.policy.rate_limit) if r.policy.rate_limit is not None else "none"
            denied = "-" if r.denied is None else str(r.denied)
            over = "-" if r.ratelimited is None else str(r.ratelimited)
            policed.append((r, rules, expires, rate, denied, over))
            narrow.append(Text(f"  policy: {r.state}; expires {expires}; rate limit {rate}; "
                               f"{', '.join(rules) or 'all allowed'}; {denied} denied, {over} over the rate"))
    wide: list[Any] = [table]
    if policed:  # a second table, so that the first stays as narrow as it was
        pt = Table(title="per-client policy")
        for col in ("name", "state", "expires", "rate limit", "rules", "denied", "over rate"):
            pt.add_column(col, no_wrap=col == "rules")
        for r, rules, expires, rate, denied, over in policed:
            pt.add_row(*(Text(c) for c in (r.name or r.public_key, r.state, expires, rate,
                                            "\n".join(rules) or "all allowed", denied, over)))
        wide.append(pt)
    print_fitting(wide, narrow, whole, console)
