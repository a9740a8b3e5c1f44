"""L2 segments under hostile input: VXLAN injection through the tunnel, garbage frames into a tap.

The server has VNI 100 (client and a second peer "other") and VNI 200 (only "other"); the client
has VNI 100; both MAC tables are limited to 64 entries.

- From the client namespace, plain UDP datagrams to the server's VTEP (198.19.0.1:4789) ride the
  client's real session, so they pass the AllowedIPs check and reach the L2 layer: an unknown
  VNI (``l2_unknown_vni``), a VNI the client is not a member of (``l2_vni_not_member``), the I
  flag clear, headers shorter than 8 bytes and runt frames (``l2_bad_vxlan``), multicast source
  MACs (``l2_bad_source``), and frames from 200 random source MACs (the table stops at its limit
  and counts the refusals).
- Into the client's tap (AF_PACKET), frames with multicast sources and from 200 random MACs: the
  client counts the bad ones, both tables stay bounded, the flooded ones reach the hub.
(The kernel refuses to send frames shorter than an Ethernet header on a tap, so tap runts cannot
be injected this way.)
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hostile_harness import SERVER_TUN, Daemon, Lab, assert_no_traceback, keypair, report
from netns import wait_for

from crypto.keys import encode_key

LIMIT = 64


def segment(vni: int, tap: str, *extra: str) -> str:
    lines = ["", "#pyvpn [Segment]", f"#pyvpn VNI = {vni}", f"#pyvpn Tap = {tap}", *(f"#pyvpn {e}" for e in extra)]
    return "\n".join(lines) + "\n"


def vni100(d: Daemon) -> dict[str, Any]:
    segs = [s for s in d.show().get("segments") or [] if s["vni"] == 100]
    assert segs, d.show()
    return dict(segs[0])


@pytest.mark.root
def test_vxlan_injection_and_tap_garbage_are_counted_and_bounded() -> None:
    other = f"\n[Peer]\n#pyvpn Name = other\nPublicKey = {encode_key(keypair()[1])}\nAllowedIPs = 198.19.0.50/32\n"
    with Lab(log_level="debug") as lab:
        lab.start(server_extra_peers=other + segment(100, "hstap0", f"MacLimit = {LIMIT}")
                  + segment(200, "hstap1", "Peers = other"),
                  client_extra=segment(100, "hstap0", f"MacLimit = {LIMIT}"))
        srv, cli = lab.server, lab.client
        time.sleep(0.5)
        # -- VXLAN injection through the tunnel
        d0 = srv.drops()
        res = lab.run_tool(lab.cli_ns, "vxlan-inject", "--to", f"{SERVER_TUN}:4789", "--count", "1400")
        sent = res["sent"]
        expected = {"l2_unknown_vni": sent["unknown_vni"], "l2_vni_not_member": sent["not_member"],
                    "l2_bad_vxlan": sent["bad_flags"] + sent["short"] + sent["runt"],
                    "l2_bad_source": sent["group_src"]}
        wait_for(lambda: all(srv.drops()[k] - d0[k] >= v for k, v in expected.items()), timeout=5)
        inj = {k: v for k, v in (srv.drops() - d0).items() if k.startswith("l2_")}
        seg_srv = vni100(srv)
        # -- garbage frames into the client's tap
        c0 = cli.drops()
        tap = lab.run_tool(lab.cli_ns, "tap-inject", "--ifname", "hstap0", "--count", "600", "--classes",
                           "group_src,valid")
        wait_for(lambda: cli.drops()["l2_bad_source"] - c0["l2_bad_source"] >= tap["sent"]["group_src"],
                 timeout=5)
        time.sleep(0.5)
        tap_drops = {k: v for k, v in (cli.drops() - c0).items() if k.startswith("l2_")}
        seg_cli, seg_srv2 = vni100(cli), vni100(srv)
        report("l2", vxlan_sent=sent, server_l2_drops=inj, server_vni100=seg_srv, tap_sent=tap["sent"],
               tap_errors=tap["errors"], client_l2_drops=tap_drops, client_vni100=seg_cli,
               server_vni100_after_tap=seg_srv2)

        assert inj == expected, (inj, expected)
        assert seg_srv["macs"] <= LIMIT and seg_srv["table"].get("refused", 0) > 0
        assert not tap["errors"], tap
        assert tap_drops == {"l2_bad_source": tap["sent"]["group_src"]}, tap_drops
        assert seg_cli["macs"] <= LIMIT and seg_cli["table"].get("refused", 0) > 0
        assert seg_cli["counters"].get("flood_group", 0) + seg_cli["counters"].get("flood_unknown", 0) \
            >= tap["sent"]["valid"]
        assert seg_srv2["macs"] <= LIMIT
        assert seg_srv2["counters"].get("flood_unknown", 0) > seg_srv["counters"].get("flood_unknown", 0)
        assert srv.alive() and cli.alive()
        assert lab.ping(count=2, interval=0.05) == 2
        assert_no_traceback(srv, cli)
