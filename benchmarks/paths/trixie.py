"""Debian trixie's wireguard-go for the benchmark, fetched with apt's own client and never installed.

Bookworm ships wireguard-go 0.0.20220316; trixie ships 0.0.20231211, the version with TUN TSO/GRO and UDP
GSO/GRO that users of current distributions get.  The interop tests keep using bookworm's package, so the
newer one is only unpacked into a git-ignored directory (``benchmarks/.cache/trixie``):

1. The mirror is the machine's own: the first ``deb`` entry of ``/etc/apt/sources.list`` or
   ``/etc/apt/sources.list.d/*.list|*.sources`` (one-line or deb822 format) whose suite is the machine's
   codename (``/etc/os-release``) and that has the ``main`` component; its ``Signed-By`` keyring is kept
   (Debian's archive keyring on bookworm already holds the trixie keys).
2. A private sources file names that mirror with suite ``trixie``; ``apt-get update`` and ``apt-get
   download wireguard-go`` run with ``Dir::State``, ``Dir::Cache``, ``Dir::Etc::SourceList`` and
   ``Dir::Etc::SourceParts`` (and an empty dpkg status file) inside the private directory, so the
   machine's package lists, cache and installed packages are never touched.
3. ``dpkg-deb -x`` unpacks the package there; the binary is ``.cache/trixie/root/usr/bin/wireguard-go``
   (a Go binary, static apart from libc).  A second run finds it and only checks that it runs.

Run as root: ``python3 benchmarks/paths/trixie.py [--refresh]`` (``benchmarks/setup.sh`` does).  Stdlib
only, so the system Python can run it before any venv exists.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "trixie"
SUITE = "trixie"
PACKAGE = "wireguard-go"
ROOT_DIR = CACHE_DIR / "root"  # dpkg-deb -x target
VERSION_FILE = "package-version"  # the .deb's Version field (the binary's --version lags behind it)
#: Where the package puts the binary (Debian: /usr/bin/wireguard-go); looked up in both places.
BINARY_CANDIDATES = ("usr/bin/wireguard-go", "usr/sbin/wireguard-go")
APT_TIMEOUT = 600.0


class FetchError(RuntimeError):
    """A step of the fetch failed; the message names it."""


@dataclass(frozen=True, slots=True)
class AptSource:
    """One ``deb`` entry of the machine's apt sources.

    :param uri: archive root, e.g. ``http://deb.debian.org/debian``.
    :param suites: suite names of the entry.
    :param components: components (``main``, ...).
    :param signed_by: the ``Signed-By`` keyring path, or None.
    """

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None


# -- pure parsing ---------------------------------------------------------------------------------------------
def parse_one_line(text: str) -> list[AptSource]:
    """``deb [opt=val ...] URI SUITE COMPONENT...`` lines (``deb-src`` and comments skipped)."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        words = line.split()[1:]
        options: dict[str, str] = {}
        if words and words[0].startswith("["):
            opts = []
            while words:
                w = words.pop(0)
                opts.append(w)
                if w.endswith("]"):
                    break
            for opt in " ".join(opts).strip("[]").split():
                k, _, v = opt.partition("=")
                options[k] = v
        if len(words) < 2:
            continue
        out.append(AptSource(words[0].rstrip("/"), (words[1],), tuple(words[2:]), options.get("signed-by")))
    return out


def parse_deb822(text: str) -> list[AptSource]:
    """Stanzas of a ``.sources`` file with ``Types: deb`` (``Enabled: no`` stanzas skipped)."""
    out = []
    for stanza in _stanzas(text):
        if "deb" not in stanza.get("types", "").split() or stanza.get("enabled", "yes").lower() == "no":
            continue
        signed = stanza.get("signed-by", "").strip()
        for uri in stanza.get("uris", "").split():
            out.append(AptSource(uri.rstrip("/"), tuple(stanza.get("suites", "").split()),
                                 tuple(stanza.get("components", "").split()),
                                 signed if signed and "\n" not in signed else None))
    return out


def _stanzas(text: str) -> Iterable[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif raw[0] in " \t" and key:
            fields[key] += "\n" + raw.strip()  # continuation (an inline key block)
        elif ":" in raw:
            k, _, v = raw.partition(":")
            key = k.strip().lower()
            fields[key] = v.strip()


def find_mirror(sources: Iterable[AptSource], codename: str) -> AptSource:
    """The first source that serves ``codename`` itself (not ``-updates``/``-security``) with ``main``.

    :raises FetchError: no such source.
    """
    for src in sources:
        if codename in src.suites and "main" in src.components:
            return src
    raise FetchError(f"no apt source serves suite {codename!r} with component main "
                     "(looked in /etc/apt/sources.list and /etc/apt/sources.list.d)")


def private_sources(mirror: AptSource, *, suite: str, arch: str) -> str:
    """The private sources file: the machine's mirror, ``suite``, component main, one architecture."""
    opts = [f"arch={arch}"] + ([f"signed-by={mirror.signed_by}"] if mirror.signed_by else [])
    return f"deb [{' '.join(opts)}] {mirror.uri} {suite} main\n"


def apt_options(cache_dir: Path) -> list[str]:
    """``-o`` options that keep every apt file (lists, caches, sources, status) inside ``cache_dir``."""
    return ["-o", f"Dir::State={cache_dir / 'state'}",
            "-o", f"Dir::State::status={cache_dir / 'state' / 'status'}",
            "-o", f"Dir::Cache={cache_dir / 'cache'}",
            "-o", f"Dir::Etc::SourceList={cache_dir / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={cache_dir / 'sources.list.d'}",
            "-o", f"Dir::Etc::PreferencesParts={cache_dir / 'preferences.d'}",
            "-o", "Acquire::Languages=none"]


# -- the machine ------------------------------------------------------------------------------------------------
def machine_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every ``deb`` entry of the machine's apt sources, in apt's order (list file first, then parts)."""
    out: list[AptSource] = []
    main_list = etc / "sources.list"
    if main_list.is_file():
        out += parse_one_line(main_list.read_text(errors="replace"))
    for name in sorted(glob.glob(str(etc / "sources.list.d" / "*"))):
        p = Path(name)
        if p.suffix == ".list":
            out += parse_one_line(p.read_text(errors="replace"))
        elif p.suffix == ".sources":
            out += parse_deb822(p.read_text(errors="replace"))
    return out


def os_codename(os_release: Path = Path("/etc/os-release")) -> str:
    """``VERSION_CODENAME`` of the running system."""
    for line in os_release.read_text().splitlines():
        k, _, v = line.partition("=")
        if k == "VERSION_CODENAME" and v.strip('"'):
            return v.strip('"')
    raise FetchError(f"{os_release} has no VERSION_CODENAME")


def find_binary(root: Path | None = None) -> Path | None:
    """The unpacked wireguard-go under ``root`` (default :data:`ROOT_DIR`), or None."""
    for rel in BINARY_CANDIDATES:
        p = (root or ROOT_DIR) / rel
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def package_version(cache_dir: Path | None = None) -> str | None:
    """The Debian version of the unpacked package (``0.0.20231211-1+b9``), or None before a fetch.

    The binary's own ``--version`` says ``v0.0.20230223`` (upstream did not bump it for the 20231211
    snapshot), so the package version is what names the row.
    """
    try:
        return ((cache_dir or CACHE_DIR) / VERSION_FILE).read_text().strip() or None
    except OSError:
        return None


def binary_version(binary: Path) -> str | None:
    """First line of ``binary --version``, or None when it does not run."""
    try:
        r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10.0, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = r.stdout.strip().splitlines()[:1]
    return line[0] if r.returncode == 0 and line else None


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> None:
    print("trixie:", " ".join(argv), flush=True)
    try:
        r = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"{argv[0]}: {e}") from None
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
        words = [w for w in argv if w != "-o" and "::" not in w]  # the private Dir:: options are long
        raise FetchError(f"{' '.join(words)} exited {r.returncode}: {' / '.join(tail)}")


def fetch(cache_dir: Path | None = None, *, refresh: bool = False) -> Path:
    """Make sure trixie's wireguard-go is unpacked under ``cache_dir``; return the binary.

    :param refresh: fetch again even if a working binary is there.
    :raises FetchError: a step failed (message says which).
    """
    cache_dir = cache_dir or CACHE_DIR
    root = cache_dir / "root"
    have = find_binary(root)
    if have is not None and binary_version(have) and package_version(cache_dir) and not refresh:
        return have
    mirror = find_mirror(machine_sources(), os_codename())
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    for sub in ("state/lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d", "deb"):
        (cache_dir / sub).mkdir(parents=True, exist_ok=True)
    (cache_dir / "state" / "status").touch()
    (cache_dir / "sources.list").write_text(private_sources(mirror, suite=SUITE, arch=arch))
    opts = apt_options(cache_dir)
    _run(["apt-get", *opts, "-qq", "update"])
    debs = cache_dir / "deb"
    for old in debs.glob("*.deb"):
        old.unlink()
    _run(["apt-get", *opts, "-qq", "download", f"{PACKAGE}/{SUITE}"], cwd=debs)
    got = sorted(debs.glob(f"{PACKAGE}_*.deb"))
    if not got:
        raise FetchError(f"apt-get download left no {PACKAGE}_*.deb in {debs}")
    shutil.rmtree(root, ignore_errors=True)
    (cache_dir / VERSION_FILE).unlink(missing_ok=True)
    _run(["dpkg-deb", "-x", str(got[-1]), str(root)])
    binary = find_binary(root)
    if binary is None:
        raise FetchError(f"{got[-1].name} has no {' or '.join(BINARY_CANDIDATES)}")
    if binary_version(binary) is None:
        raise FetchError(f"{binary} --version does not run here")
    version = subprocess.run(["dpkg-deb", "-f", str(got[-1]), "Version"], capture_output=True, text=True,
                             timeout=30.0, check=False).stdout.strip()
    (cache_dir / VERSION_FILE).write_text((version or got[-1].name) + "\n")
    return binary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fetch Debian trixie's wireguard-go into benchmarks/.cache/trixie.")
    p.add_argument("--refresh", action="store_true", help="fetch again even if it is there")
    a = p.parse_args(argv)
    try:
        binary = fetch(refresh=a.refresh)
    except (FetchError, OSError, subprocess.CalledProcessError) as e:
        print(f"trixie: {e}", file=sys.stderr)
        return 1
    print(f"trixie: {binary}: {PACKAGE} {package_version()} ({binary_version(binary)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
