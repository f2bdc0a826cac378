"""The public names: one list, every name resolves, nothing loads before it is used."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fdchannel


def test_every_exported_name_resolves() -> None:
    names = fdchannel.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(fdchannel, name) is not None, name
    assert set(names) <= set(dir(fdchannel))


def test_star_import_gives_the_exports() -> None:
    namespace: dict[str, object] = {}
    exec("from fdchannel import *", namespace)
    assert {"Outgoing", "Incoming", "FdState", "relay", "parse_channel"} <= set(namespace)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(fdchannel, "no_such_name")  # noqa: B009


def test_importing_the_package_loads_no_event_loop() -> None:
    code = (
        "import sys, fdchannel; print('anyio' in sys.modules, 'fdchannel.address' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.split() == ["False", "False"]


def test_the_line_scan_reads_what_ast_reads() -> None:
    """fdchannel._exports scans the TYPE_CHECKING block line by line; ast is the truth."""
    import ast

    with open(fdchannel.__file__, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    guard = next(
        node for node in tree.body if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
    )
    truth = {
        alias.name: "." * node.level + (node.module or "")
        for node in guard.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert fdchannel._exports() == truth
    assert len(truth) > 40
