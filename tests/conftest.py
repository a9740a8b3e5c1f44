from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from netns import Netns, is_root, namespaces  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if is_root():
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, tun/tap)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def netns_factory() -> Iterator[object]:
    """Call it with tags to get fresh namespaces; all are removed at teardown."""
    made: list[Netns] = []

    def make(tag: str = "ns") -> Netns:
        ns = Netns(tag)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(made):
            ns.close()


__all__ = ["namespaces"]
