"""Protocol constants (whitepaper §6, wireguard-go ``device/constants.go``)."""

from __future__ import annotations

# -- specification ------------------------------------------------------------------------
REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1  # wireguard-go's value
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.334  # wireguard-go: up to 334 ms of jitter on REKEY_TIMEOUT
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
HANDSHAKE_INITIATION_RATE = 1.0 / 50  # at most one consumed initiation per peer per 20 ms
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18

# -- implementation -----------------------------------------------------------------------
MAX_STAGED_PACKETS = 128  # wireguard-go MaxStagedPackets
# Smallest batch for which the data path's bulk branches try their C-level loops before the general loop
# (below it the checks cost more than they save): Core._decapsulate_run, Keypair.seal_batch's one-size
# branch, tunnel.offload.gro, vpn.routing.route_reads, Device._route_flow, the policy's one-verdict batch.
# Each gives exactly its loop's result or declines; each has a bulk=False switch (Device.bulk for the device's)
# that runs the loop alone, and vpn.testlab.differential compares the two on random batches.
# Defined here, the lowest layer (crypto/ imports nothing of tunnel/ or vpn/); tunnel.offload re-exports it.
BULK_MIN = 4
UNDER_LOAD_HANDSHAKES_PER_SECOND = 128  # handshakes with a valid mac1 per second that put the core under load
UNDER_LOAD_HOLD = 1.0  # stay under load this long after the rate falls (wireguard-go, kernel)
RATELIMIT_PACKETS_PER_SECOND = 20  # kernel ratelimiter.c, per source (IPv4 address, IPv6 /64)
RATELIMIT_BURST = 5
RATELIMIT_MAX_SOURCES = 1 << 16  # kernel's max_entries on hosts with > 1 GiB; a full table evicts its LRU entry
# Under load, DH work for handshakes with a valid mac2 (the costliest step of a handshake; its cost is in
# benchmarks/results-by-commit.md) is bounded in total: busy sources share one budget, sources quiet for
# QUIET_SOURCE_INTERVAL have another (crypto/ratelimiter.py).
HANDSHAKES_SHARED_PER_SECOND = 250
HANDSHAKES_QUIET_PER_SECOND = 250
QUIET_SOURCE_INTERVAL = REKEY_TIMEOUT - 1.0  # a client retries after REKEY_TIMEOUT (+ jitter); 1 s of slack
