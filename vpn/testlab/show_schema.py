"""Checks ``pyvpn show --json`` output against docs/show-json.md (shared by tests/unit and tests/netns)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the checkout: docs/show-json.md
Schema = dict[str, dict[str, tuple[str, bool]]]


def documented_schema(version: int) -> Schema:
    """docs/show-json.md's tables: object → field → (type, optional)."""
    text = (ROOT / "docs" / "show-json.md").read_text()
    assert f"schema version {version}" in text
    objects: Schema = {}
    current: dict[str, tuple[str, bool]] | None = None
    for line in text.splitlines():
        m = re.match(r"## (\w+)$", line)
        if m:
            current = objects.setdefault(m.group(1), {})
            continue
        m = re.match(r"\| `(\w+)` \| ([^|]+?(?:\\\|[^|]+?)*) \| (.*) \|$", line)
        if m and current is not None:
            current[m.group(1)] = (m.group(2).replace("\\|", "|"), "present only" in m.group(3))
    return objects


def check(value: Any, typ: str, schema: Schema, where: str) -> None:
    if typ.endswith("|null"):
        if value is not None:
            check(value, typ[:-5], schema, where)
        return
    if typ.startswith("list["):
        assert isinstance(value, list), where
        for i, v in enumerate(value):
            check(v, typ[5:-1], schema, f"{where}[{i}]")
        return
    if typ == "dict[str,int]":
        assert isinstance(value, dict) and all(isinstance(k, str) and type(v) is int for k, v in value.items()), where
        return
    if typ in schema:
        check_object(value, typ, schema, where)
        return
    types: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
    assert typ in types, f"{where}: undocumented type {typ!r}"
    assert isinstance(value, types[typ]) and (typ == "bool" or type(value) is not bool), f"{where}: {value!r}"


def check_object(obj: Any, name: str, schema: Schema, where: str) -> None:
    assert isinstance(obj, dict), where
    fields = schema[name]
    undocumented = set(obj) - set(fields)
    assert not undocumented, f"{where}: fields not in docs/show-json.md ({name}): {sorted(undocumented)}"
    missing = {f for f, (_, optional) in fields.items() if not optional} - set(obj)
    assert not missing, f"{where}: documented {name} fields missing: {sorted(missing)}"
    for f, v in obj.items():
        check(v, fields[f][0], schema, f"{where}.{f}")
