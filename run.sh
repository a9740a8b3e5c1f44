#!/usr/bin/env bash
# One entry point for a fresh Linux machine (run as root):
#   ./run.sh demo    set everything up, then run the two-namespace demo
#   ./run.sh test    set everything up, then run the whole test suite
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
    if ! .venv/bin/python -c "import vpn, crypto, tunnel, pytest, hypothesis, matplotlib" 2>/dev/null \
        || [ pyproject.toml -nt .venv/.installed ]; then
        .venv/bin/pip install -q --upgrade pip >/dev/null
        .venv/bin/pip install -q -e ".[test,bench]"  # bench: matplotlib, for pyvpn bench's PNG chart and its test
        touch .venv/.installed
    fi
}

cmd="${1:-demo}"
shift || true
case "$cmd" in
    setup) setup ;;
    demo) setup; exec .venv/bin/pyvpn demo "$@" ;;
    test) setup; exec .venv/bin/python -m pytest "$@" ;;
    *) echo "usage: ./run.sh [demo|test|setup] [args...]" >&2; exit 2 ;;
esac
