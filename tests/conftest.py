from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpn.testlab.netns import Netns, is_root, namespaces

# Tests that start processes in namespaces: every test below these folders, and every `root` test.
_NETNS_DIRS = ("netns", "interop", "hostile")


def installation_bin() -> Path:
    """The bin directory of the installation under test: the one that holds this very Python."""
    return Path(sys.executable).parent


def pytest_configure(config: pytest.Config) -> None:
    """Put the installation under test first on PATH, for this process and every process it starts.

    Tests, harnesses and third-party tools (``wg-quick`` with ``WG_QUICK_USERSPACE_IMPLEMENTATION=pyvpn-wg``)
    start ``pyvpn`` and ``pyvpn-wg`` by name, so the PATH decides which pyvpn runs: it must be the one installed
    beside ``sys.executable`` (./run.sh's .venv), never one that happens to be elsewhere on the machine.
    """
    bindir = installation_bin()
    missing = [exe for exe in ("pyvpn", "pyvpn-wg") if not (bindir / exe).exists()]
    if missing:
        raise pytest.UsageError(f"{', '.join(missing)} not installed beside {sys.executable}: run the tests "
                                "with ./run.sh test (or from a venv with `pip install -e .[test]`)")
    os.environ["PATH"] = os.pathsep.join([str(bindir), *(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                                          if p and Path(p) != bindir)])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    netns = pytest.mark.netns
    for item in items:
        rel = Path(str(item.path)).relative_to(tests) if Path(str(item.path)).is_relative_to(tests) else None
        if "root" in item.keywords or (rel is not None and rel.parts[0] in _NETNS_DIRS):
            item.add_marker(netns)
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
