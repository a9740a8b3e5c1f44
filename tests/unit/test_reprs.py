"""No key material in any repr (issue 13): every object reachable from a pair of cores in the middle of a
handshake and after it, and the application objects that carry keys or files holding them.

A repr ends up in logs, tracebacks and debugger output; private keys, preshared keys and the handshake's
chaining key must never be among them, in any form (bytes literal, hex or base64).
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import inspect
import pkgutil
from collections import deque
from collections.abc import Iterator
from typing import Any

from crypto.keys import encode_key, private_from_random
from crypto.noise import SymmetricState
from vpn.testlab.pair import Pair


def forms(secret: bytes) -> list[str]:
    """How ``secret`` could show up in a repr."""
    return [repr(secret)[2:-1], secret.hex(), base64.b64encode(secret).decode()[:40], repr(list(secret))[1:-1]]


def reachable(root: Any, depth: int = 5) -> Iterator[Any]:
    """``root`` and the objects its attributes, slots and containers hold (bounded, no repeats)."""
    seen: set[int] = set()
    todo: deque[tuple[Any, int]] = deque([(root, 0)])
    while todo:
        obj, d = todo.popleft()
        if id(obj) in seen or isinstance(obj, (bytes, str, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        yield obj
        if d >= depth or inspect.isroutine(obj) or inspect.ismodule(obj) or isinstance(obj, type):
            continue
        children: list[Any] = []
        if isinstance(obj, dict):
            children += list(obj.keys()) + list(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset, deque)):
            children += list(obj)
        children += list(getattr(obj, "__dict__", {}).values())
        for cls in type(obj).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if hasattr(obj, slot):
                    children.append(getattr(obj, slot))
        todo.extend((c, d + 1) for c in children)


def assert_hidden(obj: Any, secrets: list[bytes]) -> None:
    text = repr(obj)
    for s in secrets:
        for f in forms(s):
            assert f not in text, f"{type(obj).__name__} shows key material: {text[:200]}"


def test_symmetric_state_repr_hides_the_chaining_key() -> None:
    ck, h = bytes(range(32)), bytes(range(32, 64))
    text = repr(SymmetricState(ck, h))
    assert text == "SymmetricState(chain_key=(hidden), hash=(hidden))"
    assert_hidden(SymmetricState(ck, h), [ck, h])


def test_no_core_object_shows_key_material() -> None:
    psk = bytes(range(100, 132))
    pair = Pair(seed=3, psk=psk)
    pair.a.tunnel.initiate(now=pair.now)  # a handshake in flight: _Handshake with its SymmetricState
    hs = pair.a.tunnel.handshake
    assert hs is not None
    secrets = [pair.a_private, pair.b_private, psk, hs.state.chain_key, hs.ephemeral_private]
    objects = list(reachable(pair.a.core)) + list(reachable(pair.b.core))
    assert any(isinstance(o, SymmetricState) for o in objects)
    for o in objects:
        assert_hidden(o, secrets)
    pair.roundtrip()
    assert pair.a.tunnel.current is not None
    for o in list(reachable(pair.a.core)) + list(reachable(pair.b.core)):
        assert_hidden(o, secrets)


def test_application_objects_hide_keys() -> None:
    from vpn import enroll, uapi
    from vpn.config import parse_config

    priv, psk = private_from_random(bytes([7]) * 32), bytes([9]) * 32
    cfg = parse_config(f"[Interface]\nPrivateKey = {encode_key(priv)}\nAddress = 100.64.0.1/24\n"
                       "#pyvpn Pool4 = 100.64.0.0/24\n#pyvpn PublicEndpoint = 198.18.0.1:51820\n")
    e = enroll.enroll(cfg, "alice", private_key=private_from_random(bytes([8]) * 32), preshared_key=psk)
    client_priv = e.client.interface.private_key
    result = enroll.AddResult(enrollment=e, client_text=enroll.client_config_text(e.client), running=None,
                              error=None)
    assert encode_key(client_priv) in result.client_text  # the file does hold it ...
    for o in reachable(result):  # ... but no repr shows it
        assert_hidden(o, [priv, client_priv, psk])
    lines = [f"public_key={(bytes([1]) * 32).hex()}", f"preshared_key={psk.hex()}", "allowed_ip=100.64.0.2/32"]
    req = uapi.parse_set([f"private_key={priv.hex()}", *lines])
    for o in reachable(req):
        assert_hidden(o, [priv, psk])
    builder = uapi._PeerBuilder(bytes([1]) * 32, {"preshared_key": psk})
    assert_hidden(builder, [psk])


def test_no_generated_repr_on_a_dataclass_with_a_secret_field() -> None:
    """Every dataclass in crypto/, tunnel/ and vpn/ with a field that can hold a key (or a file that holds
    one) has its own repr, never the generated one that prints every field."""
    secretish = ("private", "preshared", "chain_key", "secret", "client_text")
    import crypto
    import tunnel
    import vpn

    checked = 0
    for pkg in (crypto, tunnel, vpn):
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            mod = importlib.import_module(m.name)
            for cls in vars(mod).values():
                if not (inspect.isclass(cls) and cls.__module__ == mod.__name__ and dataclasses.is_dataclass(cls)):
                    continue
                names = [f.name for f in dataclasses.fields(cls)]
                if any(s in n for n in names for s in secretish):
                    checked += 1
                    assert not cls.__dataclass_params__.repr, f"{mod.__name__}.{cls.__name__} prints {names}"  # type: ignore[attr-defined]
    assert checked >= 7
