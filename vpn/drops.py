"""What each drop reason means, and which ones are expected rather than trouble.

Every dropped packet is counted by a short reason (``Device.drops``, ``Core.drops``, ``Peer.drops``,
the L2 runtime's and switches' counters).  ``pyvpn show`` prints these explanations beside the
counts; ``tests/unit/test_show.py`` checks that every reason the code counts is explained here.

Reasons in :data:`EXPECTED` are traffic a healthy interface always sees and drops on purpose (the
kernel's own IPv6 router solicitations and MLD reports on a fresh tun, with no peer for them; a
server's handshake towards a client that has not connected yet):
:func:`split_expected` keeps them out of the drop counts and reports them as "ignored".
"""

from __future__ import annotations

from collections.abc import Mapping

# -- reasons and their explanations (one line each, for `pyvpn show`) ---------------------------------------
DROP_REASONS: dict[str, str] = {
    # device: packets read from the tun
    "tun_short_packet": "a packet from the tun shorter than an IP header",
    "tun_not_ip": "a packet from the tun that is neither IPv4 nor IPv6",
    "tun_bad_offload": "a super-packet from the tun whose offload header could not be segmented",
    "no_route": "a packet from the tun to an address no peer's AllowedIPs covers "
                "(wg: 'Required key not available')",
    "link_local_no_peer": "a multicast or link-local packet from the tun (the kernel's own IPv6 router "
                          "solicitations and MLD reports, mDNS, ...) that no peer's AllowedIPs covers; expected",
    "spoofed_source": "a decrypted packet whose source address is not in the sending peer's AllowedIPs",
    # protocol core: datagrams from the UDP socket, handshakes, sessions
    "malformed": "a datagram that is not a well-formed WireGuard message",
    "short": "a datagram too short for a WireGuard message",
    "bad_size": "a handshake or cookie message of the wrong size",
    "unknown_type": "a datagram with an unknown WireGuard message type",
    "invalid_mac1": "a handshake message whose mac1 does not match our public key (not for us, or a scan)",
    "decrypt_failed": "a message that did not authenticate (wrong key, corrupted or forged)",
    "replayed_counter": "a data message with a counter already seen or too old (replay window)",
    "unknown_index": "a message for a session index we do not have (an old or foreign session)",
    "unknown_peer": "a handshake initiation from a public key that is not a configured peer",
    "stale_timestamp": "a handshake initiation not newer than the last one from that peer (a replay)",
    "handshake_flood": "a handshake initiation sooner than allowed after the peer's previous one",
    "expired_keypair": "a data message for a session past its lifetime (REJECT_AFTER_TIME/MESSAGES)",
    "invalid_inner_packet": "a decrypted packet that is not valid IPv4/IPv6 or has a bad length",
    "invalid_public_key": "a handshake with a peer whose key gives no shared secret (a low-order point)",
    "no_private_key": "a handshake while this interface has no private key yet",
    "bad_cookie_reply": "a cookie reply that did not decrypt",
    "unexpected_cookie": "a cookie reply with no handshake of ours to answer",
    "no_endpoint": "a packet for a peer whose endpoint is not known yet (it has not contacted us)",
    "handshake_no_endpoint": "a handshake we could not start: the peer has no endpoint yet (it initiates "
                             "when it comes); expected",
    "staged_overflow": "a packet queued for a peer while its handshake was pending, pushed out by newer ones",
    "handshake_gave_up": "packets queued for a peer that never answered the handshake (REKEY_ATTEMPT_TIME)",
    "cookie_reply_sent": "a handshake answered with a cookie reply instead (under load; not an error)",
    "cookie_reply_limited": "a handshake under load from a source past its cookie-reply rate limit",
    "rate_limited": "a handshake from a source past its handshake rate limit (flood protection)",
    "handshake_budget": "a handshake under load past the interface's total budget of handshakes per second "
                        "(flood protection)",
    "handshake_shed": "a handshake under load while the receive queue was deep, from a source not quiet "
                      "lately (flood protection; quiet sources are still served)",
    "policy_denied": "a packet from a client to a destination its Allow/Deny rules do not let it reach",
    "ratelimit_in": "a packet from a client over its RateLimit (token bucket, client to server)",
    "ratelimit_out": "a packet to a client over its RateLimit (token bucket, server to client)",
    "refused_handshake": "a handshake from a client that is disabled or past its Expires",
    "refused_peer": "a packet for a client that is disabled or past its Expires (its session was dropped)",
    "ttl_exceeded": "a packet forwarded between peers inside the daemon whose TTL/hop limit ran out",
    # L2 segments (VXLAN inside the tunnel, or plain VXLAN)
    "l2_bad_vxlan": "a VXLAN packet with a malformed header",
    "l2_unknown_vni": "a VXLAN packet for a VNI this interface has no segment for",
    "l2_vni_not_member": "a VXLAN packet from a peer that is not a member of that segment",
    "l2_unmapped_vlan": "a frame whose VLAN tag has no VNI mapped (or a VNI with no VLAN) on a trunk",
    "l2_plain_unknown_source": "a plain VXLAN packet from an address not among the segment's remotes",
    "l2_frame_too_big": "a frame too big to encapsulate within the tunnel MTU",
    "l2_tap_write_error": "frames the tap device refused",
    "l2_tap_bad_offload": "a tap read with a malformed virtio_net_hdr or a super-frame that cannot be cut",
    "l2_peer_gone": "frames for a peer removed while they were queued",
    "l2_runt": "an Ethernet frame shorter than its header",
    "l2_bad_source": "a frame with a multicast or all-zero source MAC",
    "l2_unknown_peer": "a frame from a peer that is not a member of the segment",
    "l2_local_destination": "a frame from the tap for a MAC on the tap's own side",
    "l2_hairpin": "a frame from a peer for a MAC behind that same peer",
    "l2_local_mac_claim": "a frame from a peer claiming a MAC of the local tap's side (sticky: refused)",
    "l2_mac_move_limited": "a frame from a peer moving a MAC between peers faster than allowed (damped)",
    "l2_mac_quota": "a frame from a peer that already holds its MacLimitPerPeer MACs",
    "l2_broadcast_rate_peer": "a flooded frame from a peer over BroadcastRatePerPeer (storm control)",
    "l2_broadcast_rate_segment": "a flooded frame over the segment's BroadcastRate (storm control)",
    "l2_peer_vlan_tag": "a VLAN-tagged frame from a peer on a segment that maps a VLAN on its tap",
    "l2_other_peer": "a frame from a peer for a MAC behind another peer (not a hub: that peer got its own copy)",
}

# Reasons made of a prefix and a variable part (an errno name).
PREFIX_REASONS: dict[str, str] = {
    "l2_tap_write_": "frames the tap device refused with this error",
}

# Expected, not trouble: kept out of the drop counts (see the module docstring).
EXPECTED: frozenset[str] = frozenset({"link_local_no_peer", "handshake_no_endpoint"})


def explain(reason: str) -> str:
    """One line saying what a drop reason means ("" for a reason nobody documented)."""
    text = DROP_REASONS.get(reason)
    if text is not None:
        return text
    for prefix, text in PREFIX_REASONS.items():
        if reason.startswith(prefix):
            return f"{text} ({reason[len(prefix):]})"
    return ""


def split_expected(counts: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """``(drops, ignored)``: the counts without and with only the :data:`EXPECTED` reasons (zeros left out)."""
    drops = {k: v for k, v in counts.items() if v and k not in EXPECTED}
    ignored = {k: v for k, v in counts.items() if v and k in EXPECTED}
    return drops, ignored
