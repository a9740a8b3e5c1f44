#!/usr/bin/env bash
# One entry point for a fresh Linux machine (run as root):
#   ./run.sh demo    set everything up, then run the two-namespace demo
#   ./run.sh test    set everything up, then lint (ruff, mypy --strict) and run the whole test suite;
#                    pytest arguments pass through: ./run.sh test -m "not netns" is the fast rootless part
#   ./run.sh lint    set everything up, then only ruff and mypy --strict
#   ./run.sh setup   only set up (apt packages, .venv, pip install)
# Set-up is idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(iproute2 iperf3 wireguard-go wireguard-tools procps kmod tcpdump nftables iputils-ping python3-venv zbar-tools)

setup() {
    if [ "$(id -u)" != 0 ]; then
        echo "run.sh: pyvpn creates tun devices and network namespaces; run it as root (sudo ./run.sh $*)" >&2
        exit 1
    fi
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "run.sh: installing ${missing[*]}"
        apt-get update -qq
        # --no-install-recommends: wireguard-tools would otherwise pull in a whole kernel image.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    if ! .venv/bin/python -c "import vpn, crypto, tunnel, pytest, hypothesis, matplotlib, mypy" 2>/dev/null \
        || [ ! -x .venv/bin/ruff ] || [ pyproject.toml -nt .venv/.installed ]; then
        .venv/bin/pip install -q --upgrade pip >/dev/null
        .venv/bin/pip install -q -e ".[test,bench]"  # bench: matplotlib, for pyvpn bench's PNG chart and its test
        touch .venv/.installed
    fi
}

# ruff and mypy --strict over what pyproject.toml holds to them; a finding fails like a failing test.
lint() {
    local rc=0
    echo "run.sh: ruff check"
    .venv/bin/ruff check --quiet . || rc=1
    echo "run.sh: mypy --strict (crypto, tunnel, vpn)"
    .venv/bin/mypy || rc=1
    return "$rc"
}

cmd="${1:-demo}"
shift || true
case "$cmd" in
    setup) setup ;;
    demo) setup; exec .venv/bin/pyvpn demo "$@" ;;
    lint) setup; lint ;;
    test)
        setup
        rc=0
        lint || rc=$?
        .venv/bin/python -m pytest "$@" || rc=$?
        if [ "$rc" -ne 0 ]; then echo "run.sh: FAILED (lint or tests, see above)" >&2; fi
        exit "$rc" ;;
    *) echo "usage: ./run.sh [demo|test|lint|setup] [args...]" >&2; exit 2 ;;
esac
