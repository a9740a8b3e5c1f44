"""Dropping root once the interface is up (``--user NAME`` or ``#pyvpn User = NAME``).

What needs root, and when
-------------------------
Everything privileged happens during start-up: opening ``/dev/net/tun`` (``TUNSETIFF``),
moving the link into a namespace, addresses, routes and policy rules (netlink writes),
``SO_MARK`` on the UDP socket, binding a port below 1024 and creating the sockets in
``/run/pyvpn`` and ``/run/wireguard``.  After that the data path only reads and writes file
descriptors it already holds, the control and UAPI sockets accept connections on listening
sockets it already holds, and the interface watch reads links over netlink, which needs no
privilege.  So :func:`drop_privileges` keeps **no capabilities at all**: it sets the
supplementary groups, then the real, effective and saved gid and uid, then
``PR_SET_NO_NEW_PRIVS``, and checks that root cannot be regained.

What the exit needs root for (PreDown/PostDown hooks, wg-quick's ``/0`` policy rules and nft
tables, DNS, the socket files in root-owned directories) is handed, just before the drop, to a
small root helper process that does only that (:mod:`vpn.cleanup`); the log says so.

What stops working after the drop (documented, not worked around):

- the interface watch with ``Namespace`` (entering a namespace needs ``CAP_SYS_ADMIN``);
- ``SaveConfig`` (skipped, with a warning: the unprivileged daemon would choose what root writes
  into a file whose hooks root runs), UAPI ``listen_port`` changes to a port below 1024 or with
  an ``fwmark``.

``setresuid`` in CPython goes through glibc, which applies it to every thread of the
process (the metrics HTTP thread too).  Python imports modules lazily in places: the Python
installation must be readable by the user (a warning says so when it is not, e.g. under
``/root``), and a few codecs are imported before the drop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import logging
import os
import pwd
from dataclasses import dataclass

from .interface import DaemonError

log = logging.getLogger("pyvpn.privileges")

PR_SET_NO_NEW_PRIVS = 38  # <linux/prctl.h>


class PrivilegeError(DaemonError):
    """An unknown user, or a drop that did not take."""


@dataclass(frozen=True, slots=True)
class Account:
    """Who the daemon becomes.

    :ivar groups: supplementary groups (the user's groups from ``/etc/group``, primary included).
    """

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def lookup_user(user: str) -> Account:
    """Resolve a user name (or a numeric uid) with its primary and supplementary groups.

    :raises PrivilegeError: no such user.
    """
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        if user.isdigit():  # a uid without a passwd entry: nogroup, no supplementary groups
            uid = int(user)
            if uid > 0xFFFFFFFE:
                raise PrivilegeError(f"uid {user} is out of range") from None
            gid = nogroup()
            return Account(name=user, uid=uid, gid=gid, groups=(gid,))
        raise PrivilegeError(f"no such user {user!r} (for '--user' / '#pyvpn User')") from None
    try:
        groups = sorted({pw.pw_gid, *os.getgrouplist(pw.pw_name, pw.pw_gid)})
    except OSError:
        groups = [pw.pw_gid]
    return Account(name=pw.pw_name, uid=pw.pw_uid, gid=pw.pw_gid, groups=tuple(groups))


#: The overflow gid (``/proc/sys/kernel/overflowgid``), when neither ``nogroup`` nor ``nobody`` exists.
NOGROUP_GID = 65534


def nogroup() -> int:
    """The gid of ``nogroup`` (Debian), else of the group ``nobody`` (Fedora, Arch), else 65534.

    A numeric ``User`` without a passwd entry runs with this group, never with a gid equal to its uid
    (which may be some real group's).
    """
    for name in ("nogroup", "nobody"):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    return NOGROUP_GID


def _no_new_privs() -> bool:
    """``prctl(PR_SET_NO_NEW_PRIVS, 1)``: no setuid binary or file capability can raise us again."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False


def effective_capabilities() -> int:
    """``CapEff`` of this process from ``/proc/self/status`` (0 when it cannot be read)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def drop_privileges(user: str) -> Account:
    """Become ``user`` for good: groups, gid, uid (real, effective, saved), no capabilities.

    :raises PrivilegeError: unknown user, not running as root (and not already ``user``), or
        the drop could be undone.
    """
    acct = lookup_user(user)
    if os.geteuid() != 0:
        if os.getuid() == os.geteuid() == acct.uid:
            return acct
        raise PrivilegeError(f"cannot switch to user {acct.name!r}: not running as root")
    if acct.uid == 0:
        log.warning("User = %s is root: not dropping privileges", acct.name)
        return acct
    _preload()
    try:
        os.setgroups(list(acct.groups))
        os.setresgid(acct.gid, acct.gid, acct.gid)
        os.setresuid(acct.uid, acct.uid, acct.uid)
    except OSError as e:
        raise PrivilegeError(f"cannot switch to user {acct.name!r}: {e.strerror or e}") from None
    if os.getresuid() != (acct.uid,) * 3 or os.getresgid() != (acct.gid,) * 3:
        raise PrivilegeError(f"switching to user {acct.name!r} did not take")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError(f"after switching to {acct.name!r}, root could be regained")
    nnp = _no_new_privs()
    caps = effective_capabilities()
    if caps:
        raise PrivilegeError(f"after switching to {acct.name!r} capabilities {caps:#x} are still effective")
    libdir = os.path.dirname(os.__file__)
    if not os.access(libdir, os.R_OK | os.X_OK):
        log.warning("user %s cannot read the Python library in %s: a module imported from now on would fail "
                    "(install Python where every user can read it)", acct.name, libdir)
    group = _group_name(acct.gid)
    log.info("dropped privileges to user %s (uid %d, group %s); no capabilities kept%s", acct.name, acct.uid,
             group, "" if nnp else " (PR_SET_NO_NEW_PRIVS not available)")
    return acct


def _preload() -> None:
    """Import what later code may import lazily, while the library is surely readable.

    Codecs are looked up on first use (``encodings.ascii``, ``encodings.idna`` for host names).
    """
    import encodings.ascii
    import encodings.idna  # noqa: F401


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


__all__ = ["NOGROUP_GID", "Account", "PrivilegeError", "drop_privileges", "effective_capabilities", "lookup_user",
           "nogroup"]
