"""QR codes of client files for the WireGuard phone apps: in the terminal, or as a PNG."""

from __future__ import annotations

import io
from typing import Any

from .core import EnrollError


def _qr(text: str, **kw: Any) -> Any:
    """A ``qrcode.QRCode`` holding ``text`` at the lowest error correction (the smallest code)."""
    try:
        import qrcode  # type: ignore[import-untyped]
        from qrcode.constants import ERROR_CORRECT_L  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a dependency; say what to install
        raise EnrollError("QR codes need the qrcode package: pip install 'qrcode[pil]'") from None
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_L, **kw)
    qr.add_data(text.encode("utf-8"))
    qr.make(fit=True)
    return qr


def qr_terminal(text: str, *, color: bool = True) -> str:
    """A QR code of ``text`` in half-block characters, two modules per character cell.

    :param color: wrap each line in ANSI black-on-white so the code scans on dark terminals
        too; without it dark modules are drawn as blocks (right for a light background).
    """
    m: list[list[bool]] = [list(row) for row in _qr(text, border=2).get_matrix()]
    if len(m) % 2:
        m.append([False] * len(m[0]))
    glyph = {(False, False): " ", (True, False): "\u2580", (False, True): "\u2584", (True, True): "\u2588"}
    rows = []
    for top, bottom in zip(m[0::2], m[1::2], strict=True):
        line = "".join(glyph[(t, b)] for t, b in zip(top, bottom, strict=True))
        rows.append(f"\x1b[30;47m{line}\x1b[0m" if color else line)
    return "\n".join(rows) + "\n"


def qr_png(text: str, *, box_size: int = 8) -> bytes:
    """A PNG of the QR code of ``text`` (needs pillow: ``qrcode[pil]``)."""
    try:
        from qrcode.image.pil import PilImage  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - pillow missing
        raise EnrollError("writing a PNG needs pillow: pip install 'qrcode[pil]'") from None
    buf = io.BytesIO()
    _qr(text, box_size=box_size, border=4, image_factory=PilImage).make_image().save(buf)
    return buf.getvalue()
