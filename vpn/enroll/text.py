"""Editing the server file's text for ``add-client``, ``remove-client`` and ``set-client``: a section
appended, cut or its policy lines replaced, every other line (comments, layout) kept; the edit is used only
if it parses back to the intended config, else the file is rewritten from the config."""

from __future__ import annotations

import re
from dataclasses import replace

from ..config import Config, ConfigError, PeerConfig, format_config, format_peer, format_policy, parse_config
from .core import EnrollError


def append_peer_text(text: str, peer: PeerConfig) -> str:
    """``text`` with ``peer``'s section appended after one blank line."""
    body = text.rstrip("\n")
    return f"{body}\n\n{format_peer(peer)}" if body else format_peer(peer)


_SECTION = re.compile(r"\s*(#\s*pyvpn\s*)?\[", re.IGNORECASE)
_PLAIN_COMMENT = re.compile(r"\s*(#(?!\s*pyvpn\b).*)?$", re.IGNORECASE)


def _section_span(lines: list[str], peer: PeerConfig) -> tuple[int, int]:
    """``(start, end)``: ``peer``'s section in ``lines``, from its header line to its last line that
    is neither blank nor a plain comment (those just before the next section stay with it)."""
    start = peer.line - 1
    if not 0 <= start < len(lines) or not _SECTION.match(lines[start]):
        raise EnrollError("the config changed while it was being edited; try again")
    end = start + 1
    while end < len(lines) and not _SECTION.match(lines[end]):
        end += 1
    while end - 1 > start and _PLAIN_COMMENT.fullmatch(lines[end - 1].rstrip("\n")):
        end -= 1
    return start, end


def cut_peer_text(text: str, peer: PeerConfig) -> str:
    """``text`` without ``peer``'s section (from its header line to the next section).

    Blank and plain comment lines just before the next section stay (they are more likely
    about that section).
    """
    lines = text.splitlines(keepends=True)
    start, end = _section_span(lines, peer)
    if start > 0 and not lines[start - 1].strip():
        start -= 1  # the blank line that separated this section from the one before
    return "".join(lines[:start] + lines[end:])


_POLICY_LINE = re.compile(r"\s*#pyvpn\s+(allow|deny|ratelimit|expires|disabled)\s*=", re.IGNORECASE)


def set_policy_text(text: str, peer: PeerConfig, new: PeerConfig) -> str:
    """``text`` with the policy lines of ``peer``'s section replaced by ``new``'s (:func:`format_policy`),
    written where the first old one was, else at the end of the section; every other line stays."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start, end = _section_span(lines, peer)
    body = lines[start:end]
    kept = [ln for ln in body if not _POLICY_LINE.match(ln)]
    at = next((i for i, ln in enumerate(body) if _POLICY_LINE.match(ln)), None)
    at = len(kept) if at is None else sum(1 for ln in body[:at] if not _POLICY_LINE.match(ln))
    fresh = [ln + "\n" for ln in format_policy(new)]
    return "".join(lines[:start] + kept[:at] + fresh + kept[at:] + lines[end:])


def _same(a: Config, b: Config) -> bool:
    """Equal but for path and line numbers."""
    def strip(c: Config) -> Config:
        return replace(c, path="", peers=tuple(replace(p, line=0) for p in c.peers),
                       segments=tuple(replace(s, line=0) for s in c.segments))

    return strip(a) == strip(b)


def edited_text(old_text: str, new_cfg: Config, edit: str) -> str:
    """The new file text: ``edit`` applied to ``old_text`` if it parses to ``new_cfg``, else a rewrite."""
    try:
        if _same(parse_config(edit, new_cfg.path), new_cfg):
            return edit
    except ConfigError:
        pass
    return format_config(new_cfg)
