"""Enrolling clients into a server: ``pyvpn server init|add-client|remove-client|list-clients``.

Theory of operation
-------------------
The server's wg-quick file is the single source of truth.  ``init`` writes it with fresh keys,
``ListenPort``, the first address of each pool as ``Address``, and pyvpn's own keys
``#pyvpn Pool4``, ``#pyvpn Pool6`` and ``#pyvpn PublicEndpoint`` (what clients connect to).

``add-client NAME``:

1. Under an exclusive lock on the config's directory, read and parse the server file.
2. Refuse a name that is already used; take the lowest free host address of each pool (not
   the network or broadcast address, not the server's, not any peer's allowed IPs).
3. Append a ``[Peer]`` section (``#pyvpn Name = NAME``, public key, preshared key, the
   client's /32 and /128) to the file's text, so comments and layout survive; check that the
   new text parses to exactly the old peers plus the new one; write it atomically (0600).
4. If a pyvpn server with this interface name (and this public key) is running, add the peer
   through its control socket (op ``add_peer``): other sessions are untouched.
5. The caller writes the client's wg-quick file (:func:`client_config_text`) and, on request,
   a QR code of it for the WireGuard phone apps (:func:`qr_terminal`, :func:`qr_png`).

``remove-client`` does the reverse: it cuts the section from the text (or rewrites the file
from the parsed config if the cut does not parse back as expected) and removes the peer from
the running server.

``set-client``, ``disable-client`` and ``enable-client`` change a client's policy
(:mod:`vpn.policy`: access rules, rate limit, expiry, disabled): the section's policy lines
are replaced in the text, the same check and atomic write follow, and the running server gets
the new policy through its control socket (op ``set_policy``), other sessions untouched.
``add-client`` takes the same policy options.

The pure steps (:func:`new_server_config`, :func:`allocate`, :func:`enroll`,

The package, by concern: :mod:`vpn.enroll.core` (the pure steps), :mod:`vpn.enroll.text` (editing the
server file's text, comments and layout kept), :mod:`vpn.enroll.files` (the commands: lock, read, edit,
write), :mod:`vpn.enroll.live` (the running server, through its control socket) and :mod:`vpn.enroll.qr`
(QR codes of client files).
"""

from .core import (
    CLIENT_KEEPALIVE,
    DEFAULT_CONFIG,
    DEFAULT_POOL4,
    DEFAULT_POOL6,
    DEFAULT_PORT,
    SERVER_HEADER,
    EnrollError,
    Enrollment,
    allocate,
    check_name,
    client_config_text,
    enroll,
    find_peer,
    new_server_config,
    next_free,
    parse_pool,
    parse_public_endpoint,
    policy_change,
    pools,
    unenroll,
    used_addresses,
)
from .files import (
    AddResult,
    ClientRow,
    PolicyResult,
    add_client,
    init_server,
    list_clients,
    locked,
    remove_client,
    set_client,
)
from .live import interface_name, pull_peer, push_peer, push_policy, running_snapshot
from .qr import qr_png, qr_terminal
from .text import append_peer_text, cut_peer_text, edited_text, set_policy_text

__all__ = [
    "CLIENT_KEEPALIVE",
    "DEFAULT_CONFIG",
    "DEFAULT_POOL4",
    "DEFAULT_POOL6",
    "DEFAULT_PORT",
    "SERVER_HEADER",
    "AddResult",
    "ClientRow",
    "EnrollError",
    "Enrollment",
    "PolicyResult",
    "add_client",
    "allocate",
    "append_peer_text",
    "check_name",
    "client_config_text",
    "cut_peer_text",
    "edited_text",
    "enroll",
    "find_peer",
    "init_server",
    "interface_name",
    "list_clients",
    "locked",
    "new_server_config",
    "next_free",
    "parse_pool",
    "parse_public_endpoint",
    "policy_change",
    "pools",
    "pull_peer",
    "push_peer",
    "push_policy",
    "qr_png",
    "qr_terminal",
    "remove_client",
    "running_snapshot",
    "set_client",
    "set_policy_text",
    "unenroll",
    "used_addresses",
]
