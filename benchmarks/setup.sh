#!/usr/bin/env bash
# Install what benchmarks/netbench.py needs (idempotent; run as root on Debian).
#
#   bash benchmarks/setup.sh            # apt packages + matplotlib
#   SKIP_PIP=1 bash benchmarks/setup.sh # apt packages only
#
# Packages: openvpn (2.6 on bookworm), fastd, tinc (1.0), iperf3, wireguard-go, wireguard-tools (wg), ethtool
# (veth offload settings), iputils-ping, iproute2 (ip netns, vxlan), util-linux (taskset, for --pin).
# Python: matplotlib for the PNG chart (optional: the benchmark runs without it and says so).
#
# Debian trixie's wireguard-go (0.0.20231211, with TUN and UDP offloads) is fetched with apt's own client into
# the git-ignored benchmarks/.cache/trixie and unpacked there, never installed: bookworm's wireguard-go stays
# the installed package (the interop tests use it).  See benchmarks/paths/trixie.py.
set -euo pipefail

APT_PACKAGES=(openvpn fastd tinc iperf3 wireguard-go wireguard-tools ethtool iputils-ping iproute2 util-linux)

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: run as root (apt-get install)" >&2
    exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq
    timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "setup.sh: apt packages already installed"
fi

# The openvpn, fastd and tinc packages ship systemd units; the benchmark starts its own daemons, never the services.

HERE=$(cd "$(dirname "$0")" && pwd)
# trixie's wireguard-go into benchmarks/.cache/trixie (idempotent: a second run only checks the binary).
# Without it the benchmark still runs and reports that one path as "not available".
if ! timeout 900 python3 "$HERE/paths/trixie.py"; then
    echo "setup.sh: trixie's wireguard-go not fetched: the wireguard-go-trixie path will be 'not available'" >&2
fi

if [[ -z "${SKIP_PIP:-}" ]]; then
    PY=${PYTHON:-python3}
    if "$PY" -c "import matplotlib" 2>/dev/null; then
        echo "setup.sh: matplotlib already installed"
    else
        echo "setup.sh: pip install matplotlib"
        timeout 600 "$PY" -m pip install --quiet matplotlib
    fi
fi

for tool in openvpn fastd tincd iperf3 wireguard-go wg ethtool ping ip taskset; do
    command -v "$tool" >/dev/null || { echo "setup.sh: $tool still missing" >&2; exit 1; }
done
echo "setup.sh: ready ($(openvpn --version 2>/dev/null | head -1 | cut -d' ' -f1-2), $(iperf3 --version 2>/dev/null | head -1))"
