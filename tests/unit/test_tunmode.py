"""tunnel.tunmode.configure_tun: when it asks the device to switch read offloads off, and what a refusal means."""

from __future__ import annotations

import errno

from tunnel.testing import MemoryTun
from tunnel.tunmode import TunMode, configure_tun


class _Device(MemoryTun):
    """A vnet-hdr fake that, like :class:`tunnel.tun.PytunDevice`, can switch its read offloads off."""

    def __init__(self, *, refuse: bool = False) -> None:
        super().__init__("vt0", vnet_hdr=True, offloads={"csum", "tso4", "tso6"})
        self.calls = 0
        self.refuse = refuse

    def read_offloads_off(self) -> None:
        self.calls += 1
        if self.refuse:
            raise OSError(errno.EINVAL, "Invalid argument")


def test_read_offloads_switched_off_unless_tso_reads() -> None:
    dev = _Device()
    assert configure_tun(dev) == TunMode(vnet_hdr=True, tso_reads=False, gro_tcp=True, gro_udp=False)
    assert dev.calls == 1
    kept = _Device()
    assert configure_tun(kept, tso_reads=True).tso_reads
    assert kept.calls == 0


def test_refused_switch_keeps_tso_reads() -> None:
    """The kernel refuses TUNSETOFFLOAD(0): the reads keep their offloads, so segment() must cut them."""
    dev = _Device(refuse=True)
    assert configure_tun(dev) == TunMode(vnet_hdr=True, tso_reads=True, gro_tcp=True, gro_udp=False)
    assert dev.calls == 1


def test_plain_device_is_left_alone() -> None:
    assert configure_tun(MemoryTun("p0")) == TunMode()
