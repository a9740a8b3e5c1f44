"""The replay window (RFC 6479) against the kernel's and wireguard-go's self-test tables.

Sources: WireGuard/wireguard-linux-compat ``src/selftest/counter.c`` (34 numbered scripted cases
and 6 loops, commit 3d3c92b) and its port wireguard-go ``replay/replay_test.go`` (the same 34
cases; its loops 3-6 differ by one at the low end, and are run here too).  ``T_LIM`` is
``COUNTER_WINDOW_SIZE + 1`` = 8129.  The limit is REJECT_AFTER_MESSAGES as wireguard-go's
``device/constants.go`` defines it (2^64 - 2^13 - 1); the table is written relative to it.
"""

from __future__ import annotations

import random

import pytest

from crypto.constants import REJECT_AFTER_MESSAGES
from crypto.replay import WINDOW_SIZE, ReplayWindow

T_LIM = WINDOW_SIZE + 1
RAM = REJECT_AFTER_MESSAGES

# (case number as in counter.c, counter, expected)
SCRIPTED = [
    (1, 0, True),
    (2, 1, True),
    (3, 1, False),
    (4, 9, True),
    (5, 8, True),
    (6, 7, True),
    (7, 7, False),
    (8, T_LIM, True),
    (9, T_LIM - 1, True),
    (10, T_LIM - 1, False),
    (11, T_LIM - 2, True),
    (12, 2, True),
    (13, 2, False),
    (14, T_LIM + 16, True),
    (15, 3, False),
    (16, T_LIM + 16, False),
    (17, T_LIM * 4, True),
    (18, T_LIM * 4 - (T_LIM - 1), True),
    (19, 10, False),
    (20, T_LIM * 4 - T_LIM, False),
    (21, T_LIM * 4 - (T_LIM + 1), False),
    (22, T_LIM * 4 - (T_LIM - 2), True),
    (23, T_LIM * 4 + 1 - T_LIM, False),
    (24, 0, False),
    (25, RAM, False),
    (26, RAM - 1, True),
    (27, RAM, False),
    (28, RAM - 1, False),
    (29, RAM - 2, True),
    (30, RAM + 1, False),
    (31, RAM + 2, False),
    (32, RAM - 2, False),
    (33, RAM - 3, True),
    (34, 0, False),
]


def test_window_size_matches_kernel_and_wireguard_go() -> None:
    # kernel messages.h: COUNTER_WINDOW_SIZE = 8192 - BITS_PER_LONG (64); wg-go: (128 - 1) * 64
    assert WINDOW_SIZE == 8128
    assert REJECT_AFTER_MESSAGES == 2**64 - 2**13 - 1


def test_scripted_cases_in_order() -> None:
    """The 34 cases run in sequence on one window, as in counter.c; each failure names its number."""
    w = ReplayWindow(limit=REJECT_AFTER_MESSAGES)
    failures = []
    for number, n, expected in SCRIPTED:
        predicted = w.check(n)
        got = w.accept(n)
        if got != expected:
            failures.append(f"case {number}: accept({n}) = {got}, expected {expected}")
        if predicted != expected:
            failures.append(f"case {number}: check({n}) = {predicted}, expected {expected}")
        # check() must never change anything: a second check agrees with a fresh accept result
        if w.check(n):
            failures.append(f"case {number}: check({n}) still True after it was accepted/refused")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("number", [n for n, _, _ in SCRIPTED])
def test_scripted_case_numbered(number: int) -> None:
    """Each case on its own, after replaying the cases before it (for a precise failure id)."""
    w = ReplayWindow()
    for k, n, expected in SCRIPTED[:number]:
        got = w.accept(n)
        if k == number:
            assert got == expected, f"counter.c case {number}: T({n}, {expected})"


def _run(w: ReplayWindow, script: list[tuple[int, bool]]) -> list[str]:
    errors = []
    for i, (n, expected) in enumerate(script, 1):
        if w.accept(n) != expected:
            errors.append(f"step {i}: T({n}, {expected})")
    return errors


W = WINDOW_SIZE


def _kernel_loops() -> list[tuple[str, list[tuple[int, bool]]]]:
    """The six loops of counter.c, each on a fresh window (``T_INIT``)."""
    return [
        # for (i = 1; i <= COUNTER_WINDOW_SIZE; ++i) T(i, true); T(0, true); T(0, false);
        ("kernel-1", [(i, True) for i in range(1, W + 1)] + [(0, True), (0, False)]),
        # for (i = 2; i <= COUNTER_WINDOW_SIZE + 1; ++i) T(i, true); T(1, true); T(0, false);
        ("kernel-2", [(i, True) for i in range(2, W + 2)] + [(1, True), (0, False)]),
        # for (i = COUNTER_WINDOW_SIZE + 1; i-- > 0;) T(i, true);   i.e. W down to 0
        ("kernel-3", [(i, True) for i in range(W, -1, -1)]),
        # for (i = COUNTER_WINDOW_SIZE + 2; i-- > 1;) T(i, true); T(0, false);   W+1 down to 1
        ("kernel-4", [(i, True) for i in range(W + 1, 0, -1)] + [(0, False)]),
        # for (i = COUNTER_WINDOW_SIZE + 1; i-- > 1;) T(i, true); T(W + 1, true); T(0, false);
        ("kernel-5", [(i, True) for i in range(W, 0, -1)] + [(W + 1, True), (0, False)]),
        # for (i = COUNTER_WINDOW_SIZE + 1; i-- > 1;) T(i, true); T(0, true); T(W + 1, true);
        ("kernel-6", [(i, True) for i in range(W, 0, -1)] + [(0, True), (W + 1, True)]),
    ]


def _wireguard_go_loops() -> list[tuple[str, list[tuple[int, bool]]]]:
    """replay_test.go's bulk tests 3-5 start one higher than the kernel's (1 and 2 are identical)."""
    return [
        # for i := windowSize + 1; i > 0; i-- { T(i, true) }
        ("wg-go-3", [(i, True) for i in range(W + 1, 0, -1)]),
        # for i := windowSize + 2; i > 1; i-- { T(i, true) }; T(0, false)
        ("wg-go-4", [(i, True) for i in range(W + 2, 1, -1)] + [(0, False)]),
        # for i := windowSize; i > 0; i-- { T(i, true) }; T(windowSize+1, true); T(0, false)
        ("wg-go-5", [(i, True) for i in range(W, 0, -1)] + [(W + 1, True), (0, False)]),
        # for i := windowSize; i > 0; i-- { T(i, true) }; T(0, true); T(windowSize+1, true)
        ("wg-go-6", [(i, True) for i in range(W, 0, -1)] + [(0, True), (W + 1, True)]),
    ]


@pytest.mark.parametrize("name,script", _kernel_loops() + _wireguard_go_loops(),
                         ids=[n for n, _ in _kernel_loops() + _wireguard_go_loops()])
def test_bulk_loops(name: str, script: list[tuple[int, bool]]) -> None:
    errors = _run(ReplayWindow(), script)
    assert not errors, f"{name}: {errors[:5]}"


def test_reset() -> None:
    w = ReplayWindow()
    assert w.accept(5) and not w.accept(5)
    w.reset()
    assert w.accept(5) and w.accept(0)


def test_small_limit() -> None:
    w = ReplayWindow(limit=10)
    assert w.accept(9)
    assert not w.accept(10) and not w.check(10)


def _reference(seen: set[int], last: int, n: int, limit: int) -> bool:
    """A slow model: refuse ≥ limit, repeats, and anything more than WINDOW_SIZE behind the highest."""
    if n >= limit or n in seen:
        return False
    return last - n <= WINDOW_SIZE


@pytest.mark.parametrize("seed", range(3))
def test_against_a_set_model(seed: int) -> None:
    """Random walks near the window edge agree with a set-based model.

    The ring may forget counters between WINDOW_SIZE and 8192 behind the newest (RFC 6479
    trades exactness for speed there); the model is only asked about counters it can decide.
    """
    rnd = random.Random(seed)
    w = ReplayWindow()
    seen: set[int] = set()
    recent: list[int] = []
    last = 0
    for _ in range(3000):
        base = max(0, last - WINDOW_SIZE - 50)
        n = rnd.choice([
            rnd.randrange(base, last + 200),
            last + rnd.randrange(1, 3 * 64),
            max(0, last - WINDOW_SIZE + rnd.randrange(-3, 3)),
            rnd.choice(recent[-50:]) if recent else 0,
        ])
        expected = _reference(seen, last, n, REJECT_AFTER_MESSAGES)
        assert w.check(n) == expected, (n, last)
        assert w.accept(n) == expected, (n, last)
        if expected:
            seen.add(n)
            recent.append(n)
            last = max(last, n)
