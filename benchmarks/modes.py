"""Shared and pinned runs of ``netbench.py`` side by side: one Markdown table and one chart from two JSONs.

A run measures one mode (``--pin`` or not).  This module reads the JSON documents of a shared and a pinned
run (``schema pyvpn-netbench/1``, written by ``netbench.write_outputs``) and renders both modes together:

1. :func:`markdown`: the machine line, then one row per path with ``shared / pinned`` in each cell
   (median and min–max spread), then the ratio rows of the pyvpn paths against their peers in both modes.
   This is the README's table, so the README and the JSON cannot disagree.
2. :func:`write_chart`: one panel per metric, two bars per path (shared, pinned) with min–max error bars.

``netbench.py --both-modes`` runs shared then pinned and writes these; ``netbench.py --combine SHARED.json
PINNED.json`` renders them again from the files (no root).  Pure apart from the file writes; reads only
what the JSON holds, so it does not import netbench.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA = "pyvpn-netbench/1"
MODES = ("shared", "pinned")
#: The README's columns: key and format of each metric.
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("tcp1_gbps", "{:.2f}"), ("tcp4_gbps", "{:.2f}"), ("udp_kpps", "{:.1f}"), ("rtt_ms", "{:.3f}"),
    ("tcp1_cpu_s_per_gb", "{:.1f}"))
PENDING = "pending"


class ModesError(ValueError):
    """The JSON files are not one shared and one pinned netbench run."""


def load(path: Path) -> dict[str, Any]:
    """A netbench JSON document, checked for the schema and a mode.

    :raises ModesError: unreadable, another schema, or no mode.
    """
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModesError(f"{path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ModesError(f"{path}: not a {SCHEMA} document")
    if doc_mode(doc) not in MODES:
        raise ModesError(f"{path}: mode {doc.get('mode')!r} is not one of {', '.join(MODES)}")
    return doc


def doc_mode(doc: Mapping[str, Any]) -> str:
    """``shared`` or ``pinned``; runs from before ``--pin`` existed were shared."""
    mode = doc.get("mode", "shared")
    return mode if isinstance(mode, str) else "?"


def by_mode(docs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """``{mode: doc}`` for one or two documents of different modes.

    :raises ModesError: two documents of the same mode, or none.
    """
    out: dict[str, Mapping[str, Any]] = {}
    for doc in docs:
        mode = doc_mode(doc)
        if mode in out:
            raise ModesError(f"two {mode} runs: give one shared and one pinned run")
        out[mode] = doc
    if not out:
        raise ModesError("no runs")
    return out


def path_order(docs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(key, title)`` of every path in any document, in the order the run with most paths lists them
    (then the others' extra paths)."""
    seen: dict[str, str] = {}
    for doc in sorted(docs, key=lambda d: -len(d.get("paths") or ())):
        paths = doc.get("paths")
        if isinstance(paths, Mapping):
            for key, rec in paths.items():
                if key not in seen and isinstance(rec, Mapping):
                    seen[key] = str(rec.get("title", key))
    return list(seen.items())


def cell(doc: Mapping[str, Any] | None, key: str, metric: str, fmt: str) -> str:
    """One mode's figure of one path: ``median (min–max)``, ``kernel`` (daemon CPU of a kernel path),
    ``pending`` (no such run or path), or the first word of a failed path's status."""
    if doc is None:
        return PENDING
    rec = doc.get("paths", {}).get(key)
    if not isinstance(rec, Mapping):
        return PENDING
    stats = rec.get("summary", {}).get(metric)
    if isinstance(stats, Mapping) and isinstance(stats.get("median"), (int, float)):
        text = fmt.format(stats["median"])
        if stats.get("n", 1) > 1 and "min" in stats and "max" in stats:
            text += f" ({fmt.format(stats['min'])}–{fmt.format(stats['max'])})"
        return text
    if not rec.get("is_vpn", True) and "cpu" in metric:
        return "kernel"
    status = str(rec.get("status", "ok"))
    return "–" if status == "ok" else status.split(":", 1)[0]


def machine_line(docs: Sequence[Mapping[str, Any]]) -> str:
    """Where and how the runs were made: CPU model, CPUs, kernel, Python, rounds, times, pyvpn's git."""
    first = docs[0]
    m = first.get("machine", {})
    opts = first.get("options", {})
    pyvpn = first.get("paths", {}).get("pyvpn", {}).get("version", "")
    runs = "; ".join(f"{doc_mode(d)} {d.get('started', '?')}"
                     + (f" (CPUs {d['pin_cpus'][0]}/{d['pin_cpus'][1]})" if d.get("pin_cpus") else "")
                     for d in docs)
    return (f"Machine: {m.get('cpu_model') or '?'}, {m.get('nproc', '?')} CPUs, Linux {m.get('kernel', '?')}, "
            f"Python {m.get('python', '?')}, cryptography {m.get('cryptography', '?')}. "
            f"{opts.get('rounds', '?')} interleaved rounds of {opts.get('seconds', '?')} s per iperf3 run. "
            f"Runs: {runs}." + (f" pyvpn: {pyvpn}." if pyvpn else ""))


def markdown(docs: Sequence[Mapping[str, Any]]) -> str:
    """The README table of both modes (see the module docstring); a missing mode shows ``pending``."""
    modes = by_mode(docs)
    ordered = [modes[m] for m in MODES if m in modes]
    metrics = ordered[0].get("metrics", {})
    head = ["path (shared / pinned)"] + [
        f"{metrics.get(k, {}).get('title', k)} {metrics.get(k, {}).get('unit', '')}".strip() for k, _ in TABLE_METRICS]
    lines = [machine_line(ordered), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, title in path_order(ordered):
        cells = [f"{cell(modes.get('shared'), key, k, f)} / {cell(modes.get('pinned'), key, k, f)}"
                 for k, f in TABLE_METRICS]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    ratio_lines = _ratio_lines(modes)
    if ratio_lines:
        lines += ["", "| ratio (shared / pinned) | " + " | ".join(head[1:]) + " |", "|" + "---|" * len(head),
                  *ratio_lines]
    return "\n".join(lines) + "\n"


def _ratio_lines(modes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    titles = dict(path_order(list(modes.values())))
    rows: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for mode, doc in modes.items():
        for r in doc.get("ratios", []):
            if isinstance(r, Mapping) and r.get("num") in ("pyvpn", "pyvpn-l2") and r.get("den") != "veth":
                rows.setdefault((str(r["num"]), str(r["den"])), {})[mode] = r.get("ratios", {})
    out = []
    for (num, den), per_mode in rows.items():
        cells = [" / ".join(_ratio_cell(per_mode, mode, k) for mode in MODES) for k, _ in TABLE_METRICS]
        out.append(f"| {titles.get(num, num)} ÷ {titles.get(den, den)} | " + " | ".join(cells) + " |")
    return out


def _ratio_cell(per_mode: Mapping[str, Mapping[str, Any]], mode: str, key: str) -> str:
    v = per_mode.get(mode, {}).get(key)
    if isinstance(v, (int, float)):
        return f"{v:.2f}×"
    return "–" if mode in per_mode else PENDING


def write_chart(docs: Sequence[Mapping[str, Any]], path: Path) -> str | None:
    """Grouped bars (shared, pinned) per path for every table metric; None, or why no chart was made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install matplotlib): no chart"
    modes = by_mode(docs)
    ordered = [modes[m] for m in MODES if m in modes]
    paths = path_order(ordered)
    metrics = ordered[0].get("metrics", {})
    cols = 3
    rows = len(TABLE_METRICS) // cols + 1  # a spare panel for the legend and the machine
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    width = 0.4
    colors = {"shared": "#9ecae1", "pinned": "#08519c"}
    for ax, (key, fmt) in zip(axes.flat, TABLE_METRICS, strict=False):
        positive: list[float] = []
        for i, mode in enumerate(MODES):
            doc = modes.get(mode)
            xs, med, lo, hi = [], [], [], []
            for j, (pkey, _title) in enumerate(paths):
                s = (doc or {}).get("paths", {}).get(pkey, {}).get("summary", {}).get(key)
                if not isinstance(s, Mapping) or not isinstance(s.get("median"), (int, float)):
                    continue
                xs.append(j + (i - 0.5) * width)
                med.append(float(s["median"]))
                lo.append(float(s["median"]) - float(s.get("min", s["median"])))
                hi.append(float(s.get("max", s["median"])) - float(s["median"]))
            if xs:
                bars = ax.bar(xs, med, width, yerr=[lo, hi], color=colors[mode], capsize=2, label=mode)
                ax.bar_label(bars, labels=[fmt.format(v) for v in med], fontsize=6, padding=1, rotation=90)
                positive += [v for v in med if v > 0]
        if positive and max(positive) / min(positive) > 20:
            ax.set_yscale("log")
        info = metrics.get(key, {})
        ax.set_title(f"{info.get('title', key)} ({info.get('unit', '')})"
                     + (", log" if ax.get_yscale() == "log" else ""), fontsize=9)
        ax.set_xticks(range(len(paths)), [t for _k, t in paths], rotation=35, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    spare = list(axes.flat)[len(TABLE_METRICS):]
    for ax in spare:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    spare[0].legend(handles, labels, loc="upper left", fontsize=8, title="mode")
    spare[0].text(0.0, 0.55, textwrap.fill(machine_line(ordered), 60), va="top", ha="left", fontsize=7,
                  transform=spare[0].transAxes)
    m = ordered[0].get("machine", {})
    fig.suptitle(f"pyvpn netbench, shared and pinned CPUs — {m.get('cpu_model') or '?'}, {m.get('nproc', '?')} CPUs, "
                 f"Linux {m.get('kernel', '?')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(docs: Sequence[Mapping[str, Any]], out: Path, stem: str, *,
          chart: bool = True) -> tuple[Path, Path | None, str | None]:
    """Write ``<stem>.md`` (and ``<stem>.png``) into ``out``; return the paths and a chart note."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{stem}.md"
    md.write_text(markdown(docs))
    png = out / f"{stem}.png"
    note = write_chart(docs, png) if chart else "chart not requested"
    return md, (png if note is None else None), note
