"""L2 segments in the running daemon: tap devices, one learning switch per VNI, VXLAN inside the tunnel.

Theory of operation
-------------------
A segment (``#pyvpn [Segment]`` in the config, :class:`vpn.config.SegmentConfig`) is one VXLAN network
(VNI) with a local port, a tap device (usually a port of a Linux bridge), and one port per member peer.
Each VNI is a :class:`vpn.l2.switch.Switch`; ``pyvpn server`` is the hub of its star (``hub=True``: it relays
frames between clients), clients are spokes (they never relay).  One daemon carries its L3 traffic and any
number of segments over the same peers and sessions.

The package, by concern:

* :mod:`vpn.l2.plan`: the segments of a config validated into taps, MTUs, hubs, VLAN maps (pure).
* :mod:`vpn.l2.switch`, :mod:`vpn.l2.mactable`, :mod:`vpn.l2.ethernet`: the learning switch of one VNI, its
  MAC table, and Ethernet/802.1Q helpers (pure, time comes in as ``now=``).
* :mod:`vpn.l2.runtime`: the running segments (taps and plain sockets in, VXLAN in and out of the device);
  :mod:`vpn.l2.ports` the state it holds per tap, socket, segment and member; :mod:`vpn.l2.status` its log
  lines, counters and ``pyvpn show`` entries.
* :mod:`vpn.l2.start`: opening the real taps, bridges and sockets (root).

Untrusted members
-----------------
Every member of a segment may be hostile; the switch (:mod:`vpn.l2.switch`) enforces the rules: MACs of the
local tap are sticky (``l2_local_mac_claim``), MAC moves between peers are damped (``l2_mac_move_limited``)
and logged (each housekeeping tick, at most :data:`vpn.l2.status.MAX_EVENT_LINES` lines per segment), each peer holds
at most ``MacLimitPerPeer`` MACs (``l2_mac_quota``), flooded frames are rate-limited per peer on the hub
and per segment (``l2_broadcast_rate_peer``, ``l2_broadcast_rate_segment``), and on a tap that maps VLANs
peers' tagged frames are dropped (``l2_peer_vlan_tag``).

Counters: device-level drops (merged into ``Device.drop_counts``, so ``pyvpn show`` lists them) are
``l2_bad_vxlan``, ``l2_unknown_vni``, ``l2_vni_not_member``, ``l2_unmapped_vlan``,
``l2_plain_unknown_source``, ``l2_tap_bad_offload``, ``l2_tap_write_<errno>`` and each switch's ``drop_*``
reasons as ``l2_*``.
"""

from .ethernet import VlanMap
from .mactable import LOCAL, MacTable
from .plan import L2ConfigError, SegmentPlan, TapPlan, choose_vtep, local_vteps, plan_segments
from .ports import PlainSocket, TapDevice
from .runtime import BATCH, L2Runtime
from .start import open_segments
from .switch import Forward, Switch

__all__ = [
    "BATCH",
    "LOCAL",
    "Forward",
    "L2ConfigError",
    "L2Runtime",
    "MacTable",
    "PlainSocket",
    "SegmentPlan",
    "Switch",
    "TapDevice",
    "TapPlan",
    "VlanMap",
    "choose_vtep",
    "local_vteps",
    "open_segments",
    "plan_segments",
]
