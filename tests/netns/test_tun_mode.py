"""tunnel.tunmode.configure_tun on a real vnet-hdr tun: the read-side offloads are really switched off (root only).

``configure_tun`` asks the device for ``TUNSETOFFLOAD(0)`` (:meth:`tunnel.tun.PytunDevice.read_offloads_off`)
unless TSO reads are wanted; the kernel then shows TCP segmentation off on the interface (``ethtool -k``),
so it segments before our reads.  With ``tso_reads=True`` the offloads opened by ``open_tun`` stay on.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from vpn.testlab.netns import have

_SNIPPET = (
    "import json, subprocess, sys\n"
    "from tunnel.tun import open_tun\n"
    "from tunnel.tunmode import configure_tun\n"
    "dev = open_tun('pvtm0', vnet_hdr=True)\n"
    "mode = configure_tun(dev, tso_reads=sys.argv[1] == '1')\n"
    "k = subprocess.run(['ethtool', '-k', 'pvtm0'], capture_output=True, text=True, check=True).stdout\n"
    "tso = [line.split(':')[1].split()[0] for line in k.splitlines() if line.startswith('tcp-segmentation-offload')]\n"
    "print('RESULT ' + json.dumps({'vnet_hdr': dev.vnet_hdr, 'offloads': sorted(dev.offloads),\n"
    "                              'mode': mode.names(), 'tso': tso}))\n"
    "dev.close()\n"
)


def _run(ns: Any, tso_reads: bool) -> dict[str, Any]:
    proc = ns.run([sys.executable, "-c", _SNIPPET, "1" if tso_reads else "0"], timeout=30.0)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out: dict[str, Any] = json.loads(line[len("RESULT "):])
    return out


@pytest.mark.root
@pytest.mark.skipif(not have("ethtool"), reason="needs ethtool")
def test_configure_tun_switches_read_offloads_off(netns_factory: Any) -> None:
    ns = netns_factory("tm")
    kept = _run(ns, tso_reads=True)
    if not kept["vnet_hdr"] or "tso4" not in kept["offloads"]:
        pytest.skip(f"this kernel gave no TSO on a vnet-hdr tun: {kept}")
    assert kept["tso"] == ["on"] and "tun:tso" in kept["mode"], kept
    off = _run(ns, tso_reads=False)
    assert off["tso"] == ["off"], off
    assert "tun:tso" not in off["mode"] and "tun:gro" in off["mode"], off
