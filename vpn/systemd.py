"""systemd integration: the service units, and readiness notification (sd_notify) without a library.

:func:`unit_text` is the one source of the units: ``configs/systemd/*.service`` are its output with a
bare ``pyvpn`` (a test keeps them equal), and ``pyvpn systemd-unit ROLE`` prints it with the absolute
path of the ``pyvpn`` that runs it, so a unit finds a pyvpn installed in a virtualenv too.

The units are ``Type=notify``: :func:`notify` sends ``READY=1`` once the interface is up and
``STOPPING=1`` at shutdown.  The protocol (sd_notify(3)) is one datagram of ``KEY=VALUE`` lines to the
UNIX socket named by ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).
``systemctl reload`` sends SIGHUP (``ExecReload``), which the daemon takes as "re-read the peers".
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("pyvpn")

ROLES = ("server", "client")


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager; False when not run by one.

    Failures are logged at debug and otherwise ignored: a missing manager must not stop the VPN.
    """
    environ = os.environ if environ is None else environ
    addr = environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    elif addr[0] != "/":  # vsock: addresses are not for us
        log.debug("NOTIFY_SOCKET %r is not a UNIX socket; not notifying", addr)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        log.debug("sd_notify to %s failed: %s", environ.get("NOTIFY_SOCKET"), e)
        return False
    return True


_HEAD = {
    "server": """\
# pyvpn server for /etc/pyvpn/<instance>.conf, e.g.:
#   pyvpn server init --config /etc/pyvpn/wg0.conf --endpoint vpn.example.com
#   pyvpn systemd-unit server > /etc/systemd/system/pyvpn@.service && systemctl enable --now pyvpn@wg0
# Clients are added while it runs (no restart): pyvpn server add-client NAME --config /etc/pyvpn/wg0.conf
""",
    "client": """\
# pyvpn client for /etc/pyvpn/<instance>.conf (a file from `pyvpn server add-client`), e.g.:
#   pyvpn systemd-unit client > /etc/systemd/system/pyvpn-client@.service
#   systemctl enable --now pyvpn-client@wg0
""",
}

_BODY = """\
#
# `pyvpn systemd-unit {role}` prints this unit with the full path of the installed pyvpn.
# The daemon starts as root with a small capability set (tun device, netlink, UDP socket) and,
# with '#pyvpn User = pyvpn' in the config or '--user', drops to that user once the interface is up.
# Configs that use '#pyvpn Namespace = NAME' also need CAP_SYS_ADMIN (entering the namespace):
# add it to CapabilityBoundingSet in a drop-in (systemctl edit {unit}@wg0).

[Unit]
Description=pyvpn WireGuard-compatible VPN {role} on %i
After=network-online.target nss-lookup.target
Wants=network-online.target nss-lookup.target
ConditionPathExists=/etc/pyvpn/%i.conf

[Service]
# notify: pyvpn says READY=1 once the interface is up (sd_notify), so `After=pyvpn@wg0` means "tunnel up".
Type=notify
NotifyAccess=main
ExecStart={exe} {role} /etc/pyvpn/%i.conf
# systemctl reload: SIGHUP, re-read the peers from the config without dropping sessions.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2s
TimeoutStopSec=15s

# Sockets live in /run/pyvpn (control) and /run/wireguard (wg(8) UAPI), shared by every instance:
# keep the directories when one instance stops.
RuntimeDirectory=pyvpn wireguard
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
{rw}

# Hardening.  CAP_NET_ADMIN: tun device, addresses, routes, rules, SO_MARK.  CAP_NET_BIND_SERVICE:
# ports below 1024.  CAP_SETUID/CAP_SETGID: dropping to '#pyvpn User'.
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID
DeviceAllow=/dev/net/tun rw
DevicePolicy=closed
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=yes
ProtectClock=yes
ProtectHostname=yes
ProtectKernelLogs=yes
ProtectKernelModules=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=net
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
UMask=0077

[Install]
WantedBy=multi-user.target
"""

_RW = {
    "server": "# SaveConfig = true writes the config back on shutdown.\nReadWritePaths=/etc/pyvpn",
    "client": "# SaveConfig = true writes the config back on shutdown; DNS = ... runs resolvconf.\n"
              "ReadWritePaths=/etc/pyvpn -/run/resolvconf -/etc/resolvconf",
}


def unit_name(role: str) -> str:
    """``pyvpn@.service`` (server) or ``pyvpn-client@.service``."""
    return "pyvpn@.service" if role == "server" else "pyvpn-client@.service"


def unit_text(role: str, exe: str = "pyvpn") -> str:
    """The template unit for ``role`` (``server`` or ``client``) running ``exe``.

    :param exe: the pyvpn command; a bare ``pyvpn`` is looked up in systemd's own PATH
        (/usr/local/bin, /usr/bin, ...), an absolute path works wherever pyvpn is installed.
    :raises ValueError: an unknown role, or an ``exe`` systemd would split (whitespace).
    """
    if role not in ROLES:
        raise ValueError(f"role must be server or client, not {role!r}")
    if not exe or any(c.isspace() for c in exe) or "%" in exe:
        raise ValueError(f"{exe!r} cannot be put in ExecStart= as it is")
    return _HEAD[role] + _BODY.format(role=role, exe=exe, unit=unit_name(role).split("@")[0], rw=_RW[role])
