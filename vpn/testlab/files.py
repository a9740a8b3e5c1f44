"""Files the lab writes: configs and keys, readable by their owner only."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: str | os.PathLike[str], text: str, mode: int = 0o600) -> Path:
    """Write ``text`` to ``path`` created with ``mode`` (0600: never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)  # an existing file keeps its old mode through O_CREAT
    return Path(path)
