"""The fast path with every offload on, against the kernel: the wire must stay plain WireGuard.

Two namespaces joined by a veth (198.18.0.1/.2); the veth's own offloads are set so that a capture sees
what a real wire carries (``tx-udp-segmentation off``: UDP GSO sends are cut by the kernel before the
packet taps; ``gro off``: nothing is merged on arrival).  Each test

1. starts the daemons with the default ``Offload = auto`` (vnet-hdr tun, GRO writes, UDP GSO/GRO), once
   with the tun's TSO reads off (the default) and once on (``PYVPN_TSO_READS=1``: super-packets cut into
   standalone packets by ``tunnel.offload.segment``);
2. captures the underlay in the server's namespace with an AF_PACKET socket (a helper process, bounded in
   time and packets) while TCP transfers run both ways through the tunnel, each checked by sha256;
3. checks every captured UDP datagram of the tunnel's port: types 1/2/3 with their exact sizes (148, 92,
   64), type 4 with a padded length (``len - 32`` a multiple of 16, or the MTU), reserved bytes zero, no
   IP fragments and nothing larger than one MTU-sized message: no super-packet ever reaches the wire;
4. checks ``pyvpn show``: the offloads in use, no ``tun_bad_offload`` drops, and (tun statistics) that the
   receiving tun took GRO super-packets (bytes per write well above one MTU).

The second test does the same between ``pyvpn client`` and Debian's wireguard-go as the server: a stock
peer must accept what the offload path sends, and we must accept what it sends.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from vpn.testlab.configs import PeerSpec, WgPeer, endpoint
from vpn.testlab.keys import Keys
from vpn.testlab.netns import Netns, namespaces, veth
from vpn.testlab.pyvpn import Fleet, Pyvpn
from vpn.testlab.traffic import ping_ok, transfer
from vpn.testlab.wggo import WireguardGo

pytestmark = pytest.mark.root

PORT = 51820
MTU = 1420
SRV_UL, CLI_UL = "198.18.0.1", "198.18.0.2"
SRV4, CLI4 = "198.19.0.1", "198.19.0.2"
NBYTES = 4 << 20
CAPTURE_SECONDS = 60.0  # upper bound; the test stops the capture as soon as its traffic is done
CAPTURE_MAX = 200_000  # datagrams looked at, at most

# Runs inside the namespace: capture UDP/PORT on IFACE until STOPFILE exists (or the deadline), then print
# a JSON summary of every tunnel datagram seen.
_CAPTURE = r"""
import json, os, socket, struct, sys, time
iface, port, mtu, stopfile, seconds, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], \
    float(sys.argv[5]), int(sys.argv[6])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
s.bind((iface, 0))
s.settimeout(0.2)
print("ready", flush=True)
sizes = {1: 148, 2: 92, 3: 64}
counts, bad, seen, biggest, lengths = {}, [], 0, 0, {}
end = time.monotonic() + seconds
while time.monotonic() < end and seen < limit:
    try:
        frame, addr = s.recvfrom(70000)
    except socket.timeout:
        if os.path.exists(stopfile):
            break
        continue
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        continue
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    if ip[9] != 17:
        continue
    sport, dport, ulen = struct.unpack_from("!HHH", ip, ihl)
    if port not in (sport, dport):
        continue
    seen += 1
    d = ip[ihl + 8:(ip[2] << 8 | ip[3])]
    n = len(d)
    biggest = max(biggest, n)
    why = None
    if (ip[6] & 0x3F) or ip[7]:
        why = "IP fragment"
    elif ulen != n + 8:
        why = f"UDP length {ulen} for {n} bytes"
    elif n < 4 or d[1:4] != b"\0\0\0":
        why = "reserved bytes"
    else:
        t = d[0]
        counts[t] = counts.get(t, 0) + 1
        if t in sizes:
            if n != sizes[t]:
                why = f"type {t} of {n} bytes"
        elif t == 4:
            body = n - 32
            lengths[n] = lengths.get(n, 0) + 1
            if body < 0 or body > mtu or (body % 16 and body != mtu):
                why = f"type 4 with a {body}-byte padded packet"
        else:
            why = f"type {t}"
    if why and len(bad) < 20:
        bad.append(f"{why} ({'out' if addr[2] == 4 else 'in'}, {n} bytes)")
    elif why:
        bad.append("...")
top = sorted(lengths.items(), key=lambda kv: -kv[1])[:5]
print(json.dumps({"seen": seen, "counts": counts, "bad": bad[:21], "biggest": biggest, "top_lengths": top}),
      flush=True)
"""


class Capture:
    """An AF_PACKET capture of the tunnel's UDP port on ``iface`` in ``ns`` (a helper process)."""

    def __init__(self, ns: Netns, workdir: Path, iface: str = "eth0") -> None:
        self.stopfile = workdir / f"stop-capture-{ns.name}"
        self.proc = ns.popen([sys.executable, "-c", _CAPTURE, iface, str(PORT), str(MTU), str(self.stopfile),
                              str(CAPTURE_SECONDS), str(CAPTURE_MAX)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == b"ready", line

    def stop(self) -> dict[str, Any]:
        self.stopfile.touch()
        try:
            out, err = self.proc.communicate(timeout=CAPTURE_SECONDS + 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("capture did not stop") from None
        assert self.proc.returncode == 0, err.decode(errors="replace")
        summary: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return summary

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _check_wire(summary: dict[str, Any], *, min_data: int) -> None:
    assert not summary["bad"], summary
    counts = {int(k): v for k, v in summary["counts"].items()}
    assert counts.get(4, 0) >= min_data, summary
    assert counts.get(1, 0) >= 1 and counts.get(2, 0) >= 1, summary  # the handshake was seen too
    assert summary["biggest"] <= 32 + MTU, summary
    # full-size segments dominate a bulk transfer: messages of exactly one MTU-sized packet
    assert summary["top_lengths"][0][0] == 32 + MTU, summary


@contextmanager
def underlay() -> Iterator[tuple[Netns, Netns]]:
    with namespaces("srv", "cli") as (srv, cli):
        veth(srv, "eth0", cli, "eth0")
        srv.run(f"ip addr add {SRV_UL}/24 dev eth0")
        cli.run(f"ip addr add {CLI_UL}/24 dev eth0")
        for ns in (srv, cli):
            ns.run("ethtool -K eth0 tx-udp-segmentation off gro off")
        yield srv, cli


def _offloads(d: Pyvpn) -> list[str]:
    snap = d.show_json()
    assert "tun_bad_offload" not in snap["drops"], snap["drops"]
    return list(snap.get("offloads") or [])


def _gro_bytes_per_write(d: Pyvpn) -> float:
    return d.sysfs_stat("rx_bytes") / max(1, d.sysfs_stat("rx_packets"))


@pytest.mark.parametrize("tso_reads", [False, True], ids=["kernel-segments", "tso-reads"])
def test_pyvpn_pair_offloads_keep_the_wire_standard(tso_reads: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYVPN_TSO_READS", "1" if tso_reads else "0")
    with underlay() as (srv_ns, cli_ns), Fleet() as fleet:
        sk, ck = Keys.new(), Keys.new()
        server = fleet.add(srv_ns, "server", keys=sk, listen_port=PORT, addresses=[f"{SRV4}/24"],
                           peers=[PeerSpec(ck.public, [f"{CLI4}/32"], name="cli")])
        client = fleet.add(cli_ns, "client", keys=ck, addresses=[f"{CLI4}/24"],
                           peers=[PeerSpec(sk.public, [f"{SRV4}/32"], endpoint=endpoint(SRV_UL, PORT),
                                           name="srv")])
        cap = Capture(srv_ns, fleet.workdir)
        try:
            assert ping_ok(cli_ns, SRV4)
            for src, dst, addr, port in ((cli_ns, srv_ns, SRV4, 5001), (srv_ns, cli_ns, CLI4, 5002)):
                r = transfer(src, dst, addr, NBYTES, port=port)
                assert r.ok and r.received_bytes == NBYTES, r
            summary = cap.stop()
        except BaseException:
            print(fleet.logs())
            raise
        finally:
            cap.close()
        _check_wire(summary, min_data=NBYTES // 1400)
        for d in (server, client):
            offs = _offloads(d)
            assert {"tun:vnet_hdr", "tun:gro", "udp:gso", "udp:gro"} <= set(offs), offs
            assert ("tun:tso" in offs) == tso_reads, offs
            assert "qlen 2000" in d.ns.run(["ip", "link", "show", d.ifname]).stdout  # tunnel.tun.TUN_TXQUEUELEN
            # what we wrote into each tun came as GRO super-packets, not one write per segment
            assert _gro_bytes_per_write(d) > 2 * MTU, (d.sysfs_stat("rx_bytes"), d.sysfs_stat("rx_packets"))
            assert "Traceback" not in d.log()


@pytest.mark.interop
@pytest.mark.parametrize("tso_reads", [False, True], ids=["kernel-segments", "tso-reads"])
def test_pyvpn_offloads_with_wireguard_go(tso_reads: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYVPN_TSO_READS", "1" if tso_reads else "0")
    with underlay() as (srv_ns, cli_ns), Fleet() as fleet:
        sk, ck = Keys.new(), Keys.new()
        wg = WireguardGo(srv_ns, private_key=sk.private, listen_port=PORT, address=[f"{SRV4}/24"],
                         peers=[WgPeer(ck.public, allowed_ips=[f"{CLI4}/32"])])
        cap: Capture | None = None
        try:
            client = fleet.add(cli_ns, "client", keys=ck, addresses=[f"{CLI4}/24"],
                               peers=[PeerSpec(sk.public, [f"{SRV4}/32"], endpoint=endpoint(SRV_UL, PORT))])
            cap = Capture(srv_ns, fleet.workdir)
            assert ping_ok(cli_ns, SRV4) and ping_ok(srv_ns, CLI4)
            for src, dst, addr, port in ((cli_ns, srv_ns, SRV4, 5001), (srv_ns, cli_ns, CLI4, 5002)):
                r = transfer(src, dst, addr, NBYTES, port=port)
                assert r.ok and r.received_bytes == NBYTES, r
            summary = cap.stop()
            status = wg.show()
            (peer,) = status.peers
            assert peer.latest_handshake > 0 and peer.rx_bytes > NBYTES and peer.tx_bytes > NBYTES
        except BaseException:
            print(fleet.logs())
            print(wg.log())
            raise
        finally:
            if cap is not None:
                cap.close()
            wg.close()
        _check_wire(summary, min_data=NBYTES // 1400)
        offs = _offloads(client)
        assert {"tun:vnet_hdr", "tun:gro"} <= set(offs) and ("tun:tso" in offs) == tso_reads, offs
        # wireguard-go sends in smaller bursts than pyvpn, so fewer segments meet in one receive batch
        assert _gro_bytes_per_write(client) > MTU
        assert "Traceback" not in client.log()
