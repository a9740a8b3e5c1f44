"""Rendering of device snapshots for ``pyvpn show``: a rich table like ``wg show``, or JSON."""

from __future__ import annotations

import base64
import time
from typing import Any

from rich.console import Console
from rich.table import Table


def to_jsonable(obj: Any) -> Any:
    """Snapshot → JSON-ready data: keys as base64 strings (never private keys: none are in it)."""
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


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


def data_path_text(stall: dict[str, Any]) -> str:
    """The ``data path`` row: ``ok``, or ``STALLED`` with what is waiting and for how long."""
    if stall.get("state") == "stalled":
        queued = " and ".join(stall.get("queued") or ()) or "its inputs"
        seconds = stall.get("seconds", 0)
        text = f"[bold red]STALLED[/]: packets waiting on {queued}, nothing taken in for {seconds:.0f} s"
    else:
        text = "ok"
    extra = []
    if stall.get("stalls"):
        extra.append(f"{stall['stalls']} stall(s) so far")
    if stall.get("loop_blocked"):
        extra.append(f"event loop blocked {stall['loop_blocked']} time(s)")
    return text + (f" ({', '.join(extra)})" if extra else "")


def render(snapshots: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    for snap in snapshots:
        pub = snap.get("public_key")
        head = Table.grid(padding=(0, 2))
        head.add_row("[bold]interface[/]", f"[bold green]{snap['interface']}[/]")
        head.add_row("public key", to_jsonable(pub) if pub else "(none)")
        head.add_row("listening port", str(snap.get("listen_port")))
        head.add_row("mode", str(snap.get("mode", "l3")))
        if snap.get("offloads") is not None:
            head.add_row("offloads", ", ".join(snap["offloads"]) or "none")
        fwd = ("inside the daemon (Forward = on: bypasses the host firewall)" if snap.get("forward")
               else "via the kernel (ip_forward and the host firewall decide)")
        if snap.get("forwarded_packets"):
            fwd += f" ({snap['forwarded_packets']} packets so far)"
        head.add_row("forwarding", fwd)
        stall = snap.get("stall")
        if stall is not None:
            head.add_row("data path", data_path_text(stall))
        console.print(head)
        peers = Table(title=None, show_lines=False)
        for col in ("peer", "endpoint", "allowed ips", "latest handshake", "received", "sent", "keepalive"):
            peers.add_column(col)
        for p in snap.get("peers", []):
            label = to_jsonable(p["public_key"])
            if p.get("name"):
                label = f"{p['name']}\n{label}"
            peers.add_row(label, p.get("endpoint") or "(none)", ", ".join(p.get("allowed_ips", [])) or "(none)",
                          ago(p.get("latest_handshake", 0)), human_bytes(p.get("rx_bytes", 0)),
                          human_bytes(p.get("tx_bytes", 0)),
                          f"every {p['persistent_keepalive']} s" if p.get("persistent_keepalive") else "off")
        console.print(peers)
        render_policy(snap, console)
        for seg in snap.get("segments", []):
            limits = f" (at most {seg['mac_limit_per_peer']} per peer)" if seg.get("mac_limit_per_peer") else ""
            console.print(f"segment vni {seg['vni']} on {seg['tap']}: {seg['macs']} MACs learned"
                          f"{' (plain VXLAN, unencrypted)' if seg.get('plain') else ''}{limits}")
        drops = snap.get("drops") or {}
        if drops:
            dt = Table(title="drops by reason")
            dt.add_column("reason")
            dt.add_column("count", justify="right")
            for k, v in sorted(drops.items(), key=lambda kv: -kv[1]):
                dt.add_row(k, str(v))
            console.print(dt)
        console.print()


def _has_policy(p: dict[str, Any]) -> bool:
    pol = p.get("policy") or {}
    return bool(pol.get("allow") or pol.get("deny") or pol.get("rate_limit") or pol.get("expires")
                or pol.get("disabled") or p.get("denied") or p.get("ratelimited") or p.get("refused_handshakes"))


def render_policy(snap: dict[str, Any], console: Console) -> None:
    """The per-client policy of the peers that have one, one line each and never cut (a pipe or a narrow
    terminal must still show every rule): state, expiry, rate limit, rules, and the ``denied``,
    over-the-rate and refused-handshake counters.  Nothing when no peer has a policy."""
    from .policy import format_rate, format_time

    rows = [p for p in snap.get("peers", []) if _has_policy(p)]
    if not rows:
        return
    console.print("per-client policy:", style="bold")
    for p in rows:
        pol = p.get("policy") or {}
        parts = [str(pol.get("state", "active"))]
        if pol.get("expires") is not None:
            parts.append(f"expires {format_time(pol['expires'])}")
        if pol.get("rate_limit"):
            parts.append(f"rate limit {format_rate(pol['rate_limit'])}")
        parts += [f"allow {r}" for r in pol.get("allow", [])] + [f"deny {r}" for r in pol.get("deny", [])]
        parts.append(f"{p.get('denied', 0)} denied, {p.get('ratelimited', 0)} over the rate, "
                     f"{p.get('refused_handshakes', 0)} refused handshakes")
        label = p.get("name") or to_jsonable(p["public_key"])
        console.print(f"  {label}: {'; '.join(parts)}", soft_wrap=True, markup=False, highlight=False)
