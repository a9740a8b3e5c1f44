"""vpn.testlab.differential: the bulk-against-loop check fails when a bulk branch is wrong."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from vpn.testlab.differential import check_bulk_matches_loop, random_batches


def _stage(packets: list[int], bulk: bool) -> list[int]:
    """A toy stage: doubles each item; its 'bulk branch' is wrong for batches that start with 13."""
    if bulk and packets and packets[0] == 13:
        return [2 * p for p in packets[1:]]
    return [2 * p for p in packets]


def test_agreeing_branches_pass_and_are_counted() -> None:
    rng = random.Random(1)
    batches = random_batches(lambda r: [r.randrange(10) for _ in range(r.randrange(8))], rng, 50)
    assert check_bulk_matches_loop(lambda b, bulk: [2 * p for p in b], batches) == 50


def test_a_wrong_output_names_the_batch() -> None:
    with pytest.raises(AssertionError, match=r"batch 2: the bulk branch gave \[4\], the loop \[26, 4\]"):
        check_bulk_matches_loop(_stage, [[1], [2, 3], [13, 2], [4]])


def test_different_drop_counters_fail() -> None:
    twins = {True: Counter[str](), False: Counter[str]()}

    def run(batch: list[int], bulk: bool) -> int:
        twins[bulk]["short"] += sum(1 for p in batch if p < 0) if bulk else sum(1 for p in batch if p <= 0)
        return len(batch)

    assert check_bulk_matches_loop(run, [[1, -1], [-2]], drops=lambda bulk: twins[bulk]) == 2
    with pytest.raises(AssertionError, match=r"batch 1: drops with the bulk branch \{'short': 2\}, "
                                             r"with the loop \{'short': 3\}"):
        check_bulk_matches_loop(run, [[5], [0, 3]], drops=lambda bulk: twins[bulk])


def test_each_setting_gets_its_own_copy_of_the_batch() -> None:
    def run(batch: list[int], bulk: bool) -> list[int]:
        out = list(batch)
        batch.clear()  # a stage that consumes its input must not change what the other setting sees
        return out

    assert check_bulk_matches_loop(run, [[1, 2, 3]]) == 1
