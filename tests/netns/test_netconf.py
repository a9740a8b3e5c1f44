"""tunnel/netconf.py against the kernel, inside fresh network namespaces (the test process never moves)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from tunnel import netconf
from tunnel.netconf import NetconfError


def _ip_json(ns: Any, args: str) -> Any:
    return json.loads(ns.run(f"ip -j {args}").stdout or "[]")


@pytest.mark.root
def test_bridge_mtu_up_addresses_routes(netns_factory: Any) -> None:
    ns = netns_factory("nc")
    name = ns.name
    netconf.create_bridge("br0", netns=name)
    assert netconf.link_exists("br0", netns=name)
    info = _ip_json(ns, "link show br0")[0]
    assert netconf.link_index("br0", netns=name) == info["ifindex"]

    netconf.set_mtu("br0", 1400, netns=name)
    netconf.set_up("br0", netns=name)
    info = _ip_json(ns, "link show br0")[0]
    assert info["mtu"] == 1400 and "UP" in info["flags"]

    netconf.add_address("br0", "198.19.0.1/24", netns=name)
    netconf.add_address("br0", "fd00:19::1/64", netns=name)
    addrs = netconf.addresses("br0", netns=name)
    assert addrs[0] == "198.19.0.1/24" and "fd00:19::1/64" in addrs
    v6 = next(a for a in _ip_json(ns, "addr show br0")[0]["addr_info"] if a["local"] == "fd00:19::1")
    assert not v6.get("tentative") and v6.get("nodad")  # usable at once, no DAD wait

    netconf.add_route("br0", "198.19.1.0/24", netns=name)
    netconf.add_route("br0", "198.19.2.0/24", table=100, netns=name)
    netconf.add_route("br0", "fd00:20::/64", netns=name)
    assert any(r["dst"] == "198.19.1.0/24" and r["dev"] == "br0" for r in _ip_json(ns, "route show"))
    assert [r["dst"] for r in _ip_json(ns, "route show table 100")] == ["198.19.2.0/24"]
    assert any(r["dst"] == "fd00:20::/64" for r in _ip_json(ns, "-6 route show"))

    netconf.del_route("br0", "198.19.1.0/24", netns=name)
    netconf.del_route("br0", "198.19.2.0/24", table=100, netns=name)
    assert not any(r["dst"] == "198.19.1.0/24" for r in _ip_json(ns, "route show"))
    assert _ip_json(ns, "route show table 100") == []

    netconf.del_address("br0", "198.19.0.1/24", netns=name)
    assert "198.19.0.1/24" not in netconf.addresses("br0", netns=name)
    netconf.set_down("br0", netns=name)
    assert "UP" not in _ip_json(ns, "link show br0")[0]["flags"]
    netconf.delete_link("br0", netns=name)
    assert not netconf.link_exists("br0", netns=name)


@pytest.mark.root
def test_enslave_and_move_to_netns(netns_factory: Any) -> None:
    ns1, ns2 = netns_factory("nc1"), netns_factory("nc2")
    ns1.run("ip link add v0 type veth peer name v1")
    netconf.create_bridge("br0", netns=ns1.name)
    netconf.enslave("v0", "br0", netns=ns1.name)
    assert _ip_json(ns1, "link show v0")[0]["master"] == "br0"

    netconf.move_to_netns("v1", ns2.name, netns=ns1.name)
    assert not netconf.link_exists("v1", netns=ns1.name)
    assert netconf.link_exists("v1", netns=ns2.name)
    netconf.set_up("v1", netns=ns2.name)
    netconf.add_address("v1", "198.18.5.2/24", netns=ns2.name)
    assert netconf.addresses("v1", netns=ns2.name)[0] == "198.18.5.2/24"


@pytest.mark.root
def test_kernel_errors_are_netconf_errors_with_context(netns_factory: Any) -> None:
    ns = netns_factory("ncerr")
    with pytest.raises(NetconfError) as info:
        netconf.set_up("nope0", netns=ns.name)
    assert info.value.errno == errno.ENODEV
    assert "set_up(nope0)" in str(info.value) and ns.name in str(info.value)

    netconf.create_bridge("br0", netns=ns.name)
    with pytest.raises(NetconfError) as info:
        netconf.create_bridge("br0", netns=ns.name)
    assert info.value.errno == errno.EEXIST and "create_bridge(br0)" in str(info.value)

    netconf.add_address("br0", "198.19.0.1/24", netns=ns.name)
    with pytest.raises(NetconfError) as info:
        netconf.add_address("br0", "198.19.0.1/24", netns=ns.name)
    assert info.value.errno == errno.EEXIST and "EEXIST" in str(info.value)

    with pytest.raises(NetconfError) as info:
        netconf.set_mtu("br0", 10, netns=ns.name)  # below the device minimum: the kernel says why
    assert info.value.errno == errno.EINVAL and "mtu" in str(info.value).lower()

    with pytest.raises(NetconfError) as info:
        netconf.del_route("br0", "198.19.9.0/24", netns=ns.name)
    assert info.value.errno == errno.ESRCH

    missing = ns.name + "-missing"
    with pytest.raises(NetconfError) as info:
        netconf.link_exists("lo", netns=missing)
    assert info.value.errno == errno.ENOENT and missing in str(info.value)
    assert not os.path.exists(f"/var/run/netns/{missing}")  # never created as a side effect

    with pytest.raises(NetconfError) as info:
        netconf.move_to_netns("br0", missing, netns=ns.name)
    assert info.value.errno == errno.ENOENT
    assert netconf.link_exists("br0", netns=ns.name)


def test_bad_arguments_raise_value_error_before_netlink() -> None:
    bad_calls: list[Callable[[], object]] = [
        lambda: netconf.add_address("br0", "198.19.0.1"),  # no prefix length
        lambda: netconf.add_address("br0", "not-an-ip/24"),
        lambda: netconf.add_route("br0", "198.19.1.1/24"),  # host bits set
        lambda: netconf.add_route("br0", "198.19.1.0/24", table=0),
        lambda: netconf.set_mtu("br0", -1),
        lambda: netconf.set_up("a-name-that-is-far-too-long"),
        lambda: netconf.set_up("lo", netns="../etc"),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()


@pytest.mark.root
@pytest.mark.parametrize("flavour", ["asyncio", "uvloop"])
def test_usable_inside_a_running_event_loop(netns_factory: Any, flavour: str) -> None:
    ns = netns_factory("ncloop")

    async def main() -> tuple[bool, int]:
        netconf.create_bridge("br1", netns=ns.name)
        return netconf.link_exists("br1", netns=ns.name), netconf.link_index("lo", netns=ns.name)

    def run(coro: Any) -> Any:
        if flavour == "uvloop":
            loop = uvloop.new_event_loop()
            try:
                return loop.run_until_complete(coro)
            finally:
                loop.close()
        return asyncio.run(coro)

    assert run(main()) == (True, 1)
    with pytest.raises(NetconfError):
        run(_set_up_missing(ns.name))


async def _set_up_missing(netns: str) -> None:
    netconf.set_up("nope1", netns=netns)
