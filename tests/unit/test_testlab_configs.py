"""The lab's config files are the production model written by the production writer (vpn/testlab/configs.py).

Each shape the lab, the benchmarks and the demo write round-trips: ``parse_config(text)`` gives back the model
the lab built, and writing that again gives the same text.  Files for stock ``wg``/``wg-quick`` carry no
``#pyvpn`` line.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.paths.pyvpn import client_config, server_config
from crypto.keys import encode_key, private_from_random, public_from_private
from vpn.config import ConfigError, format_config, parse_config
from vpn.demo import Demo
from vpn.testlab import configs
from vpn.testlab.configs import PeerSpec, WgPeer, conf_text, wg_conf_text, wg_quick_file


def keys(n: int) -> tuple[str, str]:
    priv = private_from_random(bytes([n]) * 32)
    return encode_key(priv), encode_key(public_from_private(priv))


(PRIV, _), (_, PUB1), (_, PUB2) = keys(1), keys(2), keys(3)
PSK = encode_key(bytes(range(1, 33)))


def round_trips(text: str) -> None:
    back = parse_config(text, "lab.conf")
    assert format_config(back) == text


def test_conf_text_with_extra_lines_is_the_model() -> None:
    text = conf_text(ifname="pvs000001", private_key=PRIV, addresses=["198.19.0.1/24", "fd00:19::1/64"],
                     listen_port=51820, mtu=1380, extra=["#pyvpn Offload = off", "#pyvpn Forward = on",
                                                         "PreDown = true %i"],
                     peers=[PeerSpec(PUB1, ["198.19.0.2/32"], name="c0", extra=["#pyvpn RateLimit = 20mbit"]),
                            PeerSpec(PUB2, ["198.19.0.0/24"], endpoint="[fd00:18::1]:51820",
                                     persistent_keepalive=25, preshared_key=PSK)])
    round_trips(text)
    c = parse_config(text)
    i = c.interface
    assert (i.name, i.listen_port, i.mtu, i.offload, i.forward, i.pre_down) == (
        "pvs000001", 51820, 1380, "off", True, ("true %i",))
    assert [str(a) for a in i.addresses] == ["198.19.0.1/24", "fd00:19::1/64"]
    a, b = c.peers
    assert (a.name, a.rate_limit, [str(n) for n in a.allowed_ips]) == ("c0", 20_000_000, ["198.19.0.2/32"])
    assert (b.endpoint, b.persistent_keepalive, encode_key(b.preshared_key or b"")) == (
        ("fd00:18::1", 51820), 25, PSK)


def test_a_mistyped_extra_line_fails_where_the_test_builds_it() -> None:
    with pytest.raises(ConfigError, match="Ofload"):
        configs.interface(PRIV, extra=["#pyvpn Ofload = off"])
    with pytest.raises(ConfigError, match="RateLimit"):
        configs.peer(PUB1, extra=["#pyvpn RateLimit = fast"])
    with pytest.raises(ValueError):
        configs.interface(PRIV, addresses=["not-an-address"])


def test_segments_round_trip() -> None:
    segs = [configs.segment(100, "tap100", "MacLimit = 8", "BroadcastRate = 0", "VLAN = 10"),
            configs.segment(200, "tap100", "VLAN = 20", "Peers = other")]
    assert segs[1].peers == ("other",) and segs[0].mac_limit == 8
    text = configs.config_text(configs.interface(PRIV), [configs.peer(PUB1, name="other")], segs)
    round_trips(text)
    assert parse_config(text).segments == tuple(segs)


def test_wg_files_are_wg_keys_only() -> None:
    peers = [WgPeer(PUB1, endpoint="198.18.0.2:51821", allowed_ips=["198.19.0.2/32"], persistent_keepalive=25,
                    preshared_key=PSK), WgPeer(PUB2, allowed_ips=["0.0.0.0/0"])]
    setconf = wg_conf_text(private_key=PRIV, listen_port=51820, fwmark=0x20, peers=peers)
    quick = wg_quick_file(private_key=PRIV, address=["198.19.0.1/24"], mtu=1420, dns=["198.19.0.53"],
                          table="off", peers=peers)
    for text in (setconf, quick):
        round_trips(text)
        assert "#" not in text
    assert not {"address", "mtu", "dns", "table"} & {ln.split("=")[0].strip().lower()
                                                     for ln in setconf.splitlines() if "=" in ln}


@pytest.mark.root
@pytest.mark.interop
def test_wg_quick_strip_takes_the_lab_file(tmp_path: Path) -> None:
    if shutil.which("wg-quick") is None:
        pytest.skip("wg-quick is not installed")
    path = tmp_path / "wg0.conf"
    wg_quick_file(path, private_key=PRIV, address=["198.19.0.1/24"], mtu=1420, listen_port=51820,
                  peers=[WgPeer(PUB1, endpoint="198.18.0.2:51821", allowed_ips=["198.19.0.2/32"])])
    proc = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"PublicKey = {PUB1}" in proc.stdout and "Address" not in proc.stdout


def test_benchmark_configs_round_trip() -> None:
    seg = [configs.segment(100, "nblaaaaaat")]
    for text in (server_config(private_key=PRIV, address=["198.19.5.2/24"], client_public=PUB1,
                               client_ips=["198.19.5.1/32"], client_vtep="198.19.5.1", segments=seg),
                 client_config(private_key=PRIV, address=["198.19.5.1/24"], server_public=PUB1,
                               server_nets=["198.19.5.0/24"], endpoint="198.18.5.2:51820")):
        round_trips(text)


def test_demo_configs_round_trip() -> None:
    demo = Demo(Console(quiet=True))
    s, c = demo.write_configs()
    try:
        for path, ifname in ((s, demo.srv_if), (c, demo.cli_if)):
            round_trips(path.read_text())
            cfg = parse_config(path.read_text())
            assert cfg.interface.name == ifname and cfg.segments[0].vni == 100
            assert path.stat().st_mode & 0o077 == 0
    finally:
        assert demo.workdir is not None
        shutil.rmtree(demo.workdir)
