"""Check a bulk branch against its general loop on the same input.

Every stage of the data path that has a bulk branch (C-level loops for the common batch) also has the
general loop it must agree with, and a public ``bulk=`` switch (``Device.bulk`` for the device's own
stages).  :func:`check_bulk_matches_loop` runs each batch through the stage twice, bulk on and bulk off,
and fails on the first batch whose outputs or drop counters differ.  A stateful stage (a core with replay
windows, a device) is given as two twins built alike, one per setting; a pure one simply ignores which
twin it is.

    rng = random.Random(7)
    check_bulk_matches_loop(lambda batch, bulk: gro(batch, bulk=bulk),
                            random_batches(lambda r: tcp_run(r), rng, 300))
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["check_bulk_matches_loop", "random_batches"]

T = TypeVar("T")
R = TypeVar("R")


def random_batches(make: Callable[[random.Random], list[T]], rng: random.Random, count: int) -> Iterator[list[T]]:
    """``count`` batches, each ``make(rng)``: seeded, so a failure names a batch that can be made again."""
    for _ in range(count):
        yield make(rng)


def _short(value: Any, limit: int = 600) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _nonzero(counts: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in sorted(counts.items()) if v}


def check_bulk_matches_loop(run: Callable[[list[T], bool], R], batches: Iterable[list[T]], *,
                            drops: Callable[[bool], Mapping[str, int]] | None = None) -> int:
    """Run every batch with the bulk branch on and off; the outputs and drop counters must be equal.

    :param run: ``run(batch, bulk)`` passes a copy of ``batch`` to the stage (to its ``bulk`` twin if it
        keeps state) with its bulk switch set to ``bulk`` and returns what the stage produced, in a form
        that compares with ``==`` (packets in order, counters, window state).
    :param batches: the input, e.g. :func:`random_batches`; each batch is given to both settings in turn.
    :param drops: ``drops(bulk)``: that twin's drop counters (cumulative), compared after every batch.
    :returns: the number of batches compared.
    :raises AssertionError: naming the first batch (by index) whose results differ, and how.
    """
    n = 0
    for i, batch in enumerate(batches):
        got = run(list(batch), True)
        want = run(list(batch), False)
        if got != want:
            raise AssertionError(f"batch {i}: the bulk branch gave {_short(got)}, the loop {_short(want)} "
                                 f"(batch of {len(batch)}: {_short(batch, 300)})")
        if drops is not None:
            bulk_drops, loop_drops = Counter(drops(True)), Counter(drops(False))
            if bulk_drops != loop_drops:
                raise AssertionError(f"batch {i}: drops with the bulk branch {_nonzero(bulk_drops)}, with the "
                                     f"loop {_nonzero(loop_drops)} (batch of {len(batch)}: {_short(batch, 300)})")
        n += 1
    return n
