"""The layout the imports draw: a loop-free core under both layers, and no import circles.

The blocking layer and everything both layers share that never waits (the
handoff's state machine and sides, ``Ack``, the codec choice, deadlines and
the retry policy, the socket steps) load no event-loop library: checked in
a fresh interpreter, after a whole blocking handoff.  And no module of the
package imports itself back through others, counting the imports inside
functions and under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fdchannel

#: Event-loop libraries (asyncio's modules are the standard library's: any program has them).
EVENT_LOOPS = ("anyio", "trio", "sniffio", "uvloop")

PACKAGE = Path(fdchannel.__file__).parent

#: A blocking handoff run to completion in two threads of a fresh interpreter; it
#: prints the event-loop modules loaded by then.
HANDOFF = """
import os, sys, threading
import fdchannel.blocking as blocking
from fdchannel import FdState, NamedFd

main, cpr = sys.argv[1:3]
channels = [f"main,addr.transport=socket,addr.type=unix,addr.path={main}",
            f"cpr,addr.transport=socket,addr.type=unix,addr.path={cpr}"]
listening = threading.Event()
got = []

def incoming():
    with blocking.Incoming(channels) as inc:
        inc.listen_cpr()
        listening.set()
        with inc.receive_cpr(timeout=30) as state:
            got.append(os.read(state.get("pipe"), 5))
            inc.listen_main()
        got.append(inc.receive_main(timeout=30))

thread = threading.Thread(target=incoming)
thread.start()
listening.wait(30)
r, w = os.pipe()
os.write(w, b"hello")
with blocking.Outgoing(channels) as out:
    ack = out.send_cpr(FdState([NamedFd("pipe", 0, r)]), timeout=30)
    out.send_main(b"rest", timeout=30)
thread.join(30)
assert got == [b"hello", b"rest"] and ack.descriptors == 1, (got, ack)
print(sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[3].split(",")))
"""


def test_a_blocking_handoff_loads_no_event_loop(sockdir: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            HANDOFF,
            str(sockdir / "main"),
            str(sockdir / "cpr"),
            ",".join(EVENT_LOOPS),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


#: What both layers share and never waits: each loads no event loop on import.
LOOP_FREE = [
    "fdchannel.blocking",
    "fdchannel.protocol.machine",
    "fdchannel.protocol.side",
    "fdchannel.protocol.outgoing_side",
    "fdchannel.protocol.incoming_side",
    "fdchannel.protocol.ack",
    "fdchannel.protocol.received",
    "fdchannel.protocol.actions",
    "fdchannel.protocol.exchange",
    "fdchannel.protocol.main_framing",
    "fdchannel.handoff.machine",
    "fdchannel.handoff.sides",
    "fdchannel.codec_choice",
    "fdchannel.deadlines",
    "fdchannel.retry",
    "fdchannel.unix_sockets",
    "fdchannel.tcp_sockets",
    "fdchannel.fd_names",
    "fdchannel.state",
    "fdchannel.transfer_driver",
    "fdchannel.transitions",
    "fdchannel.lazy",
    "fdchannel.upgrade.control",
    "fdchannel.upgrade.handshake",
    "fdchannel.upgrade.lines",
]


def test_the_shared_core_loads_no_event_loop() -> None:
    """Each module of the core, imported in a fresh interpreter, loads no event loop."""
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {EVENT_LOOPS!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *LOOP_FREE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


#: Where the shared pieces lived before they moved to the loop-free core: each old
#: path still imports the very same object.
OLD_PATHS = [
    ("fdchannel.transfer", "Codec", "fdchannel.codec_choice"),
    ("fdchannel.transfer", "check_qemu_target", "fdchannel.codec_choice"),
    ("fdchannel.transfer", "ensure_fd_room", "fdchannel.fds"),
    ("fdchannel.codecs", "CODECS", "fdchannel.codec_choice"),
    ("fdchannel.codecs.encoder", "Codec", "fdchannel.codec_choice"),
    ("fdchannel.handoff.cpr", "Ack", "fdchannel.protocol.ack"),
    ("fdchannel.handoff", "Ack", "fdchannel.protocol.ack"),
    ("fdchannel.handoff.ack", "Ack", "fdchannel.protocol.ack"),
    ("fdchannel.handoff.machine", "State", "fdchannel.protocol.machine"),
    ("fdchannel.handoff.machine", "Machine", "fdchannel.protocol.machine"),
    ("fdchannel.handoff.sides", "OutgoingSide", "fdchannel.protocol.outgoing_side"),
    ("fdchannel.handoff.sides", "IncomingSide", "fdchannel.protocol.incoming_side"),
    ("fdchannel.handoff.sides", "fail_step", "fdchannel.protocol.side"),
    ("fdchannel.handoff.received", "ReceivedCprCore", "fdchannel.protocol.received"),
    ("fdchannel.transports", "Target", "fdchannel.channel"),
    ("fdchannel.transports", "resolve_target", "fdchannel.channel"),
    ("fdchannel.transports.unix", "BACKLOG", "fdchannel.unix_sockets"),
    ("fdchannel.transports.unix", "Connecting", "fdchannel.unix_sockets"),
    ("fdchannel.transports.unix", "bind_listening", "fdchannel.unix_sockets"),
    ("fdchannel.transports.unix", "new_socket", "fdchannel.unix_sockets"),
    ("fdchannel.transports.unix", "sockaddr", "fdchannel.unix_sockets"),
    ("fdchannel.transports.fd", "register_fd", "fdchannel.fd_names"),
    ("fdchannel.transports.fd", "unregister_fd", "fdchannel.fd_names"),
    ("fdchannel.transports.fd", "registered_fds", "fdchannel.fd_names"),
    ("fdchannel.transports.fd", "inherited_fds", "fdchannel.fd_names"),
    ("fdchannel.transports.fd", "SD_LISTEN_FDS_START", "fdchannel.fd_names"),
    ("fdchannel.transports.fd", "duplicate", "fdchannel.fd_names"),
    ("fdchannel.state", "Limits", "fdchannel.limits"),
    ("fdchannel.state", "DEFAULT_LIMITS", "fdchannel.limits"),
    ("fdchannel.codecs.qemu", "Subsection", "fdchannel.qemu.vmstate"),
    ("fdchannel.codecs.qemu", "VfioDevice", "fdchannel.qemu.vmstate"),
    ("fdchannel.codecs.qemu", "VFIO_DEVICES", "fdchannel.qemu.vmstate"),
    ("fdchannel.codecs.qemu", "PREFIX", "fdchannel.qemu.vmstate"),
    ("fdchannel.codecs.qemu", "MAY_END", "fdchannel.parsing"),
    ("fdchannel.blocking", "Ack", "fdchannel.protocol.ack"),
    ("fdchannel", "Ack", "fdchannel.protocol.ack"),
    ("fdchannel", "Limits", "fdchannel.limits"),
]


@pytest.mark.parametrize(("old", "name", "home"), OLD_PATHS)
def test_the_old_import_paths_still_work(old: str, name: str, home: str) -> None:
    assert getattr(importlib.import_module(old), name) is getattr(
        importlib.import_module(home), name
    )


@pytest.mark.parametrize("package", ["fdchannel.handoff", "fdchannel.upgrade"])
def test_a_lazy_package_imports_each_name_on_first_use(package: str) -> None:
    """Its table of names is the TYPE_CHECKING block type checkers read, name for name."""
    lazy = importlib.import_module(package)
    assert lazy.__file__ is not None
    tree = ast.parse(Path(lazy.__file__).read_text(encoding="utf-8"))
    guard = next(node for node in tree.body if isinstance(node, ast.If))
    declared = {
        alias.name: "." * node.level + (node.module or "")
        for node in guard.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert declared == lazy._WHERE
    assert sorted(lazy.__all__) == sorted(declared)
    namespace: dict[str, object] = {}
    exec(f"from {package} import *", namespace)
    assert set(declared) <= set(namespace) and set(declared) <= set(dir(lazy))
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(lazy, "no_such_name")  # noqa: B009


# --- import circles --------------------------------------------------------------------------


def _modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own)."""
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


#: Every module of the package by its dotted name.
MODULES = _modules()


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement: at module level, in functions, under TYPE_CHECKING."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The dotted names an import statement loads: ``from .x import y`` is ``x.y`` if
    that is a module, else ``x``."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    parts = module.split(".")
    if node.level:
        parts = parts[: len(parts) - node.level + int(is_package)]
        source = ".".join([*parts, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    for alias in node.names:
        yield f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source


def import_graph() -> dict[str, set[str]]:
    """Which of the package's modules each one imports (parents implied are left out:
    a package's ``__init__`` importing its modules is no circle)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        named = {target for node in _imports(tree) for target in _targets(name, is_package, node)}
        graph[name] = (named & set(MODULES)) - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                other = stack.pop()
                group.append(other)
                if other == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 80
    assert graph["fdchannel.blocking._unix"] >= {"fdchannel.address"}
    assert circles(graph) == []


#: Event-loop libraries as a module imports them.
LOOP_IMPORTS = {"anyio", "trio", "sniffio", "uvloop", "asyncio"}


def layers() -> dict[str, str]:
    """Each module's floor, from the imports alone: "blocking" (the package
    ``fdchannel.blocking``), "async" (reaches an event-loop library through its
    imports), "top" (reaches the blocking layer from outside it: the command
    line, say), or "core" (neither)."""
    direct: dict[str, bool] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        loaded = set()
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                loaded |= {alias.name.split(".")[0] for alias in node.names}
            elif node.level == 0 and node.module:
                loaded.add(node.module.split(".")[0])
        direct[name] = bool(loaded & LOOP_IMPORTS)
    graph = import_graph()

    def blocking_layer(name: str) -> bool:
        return name == "fdchannel.blocking" or name.startswith("fdchannel.blocking.")

    def reaches(name: str, test: Callable[[str], bool]) -> bool:
        seen, todo = {name}, [name]
        while todo:
            for other in graph[todo.pop()] - seen:
                if test(other):
                    return True
                seen.add(other)
                todo.append(other)
        return False

    floor: dict[str, str] = {}
    for name in MODULES:
        if blocking_layer(name):
            floor[name] = "blocking"
        elif reaches(name, blocking_layer):
            floor[name] = "top"
        elif direct[name] or reaches(name, lambda other: direct[other]):
            floor[name] = "async"
        else:
            floor[name] = "core"
    return floor


#: Imports that would put a layer above the other, or the core above either.
FORBIDDEN = {
    ("blocking", "async"),
    ("async", "blocking"),
    ("core", "blocking"),
    ("core", "async"),
    ("core", "top"),
    ("async", "top"),
    ("blocking", "top"),
}


#: The floors each package's modules stand on (the rest of the package is on top).
FLOORS = {
    "fdchannel.protocol": {"core"},
    "fdchannel.codecs": {"core"},
    "fdchannel.qemu": {"core"},
    # A transport's loop-free helper (its errors' wording) may live beside it.
    "fdchannel.transports": {"async", "core"},
    "fdchannel.blocking": {"blocking"},
}


def test_the_layers_stand_side_by_side_on_the_core() -> None:
    """The blocking layer imports nothing of the async one, nor the async layer of
    the blocking one, and the core neither; the packages are on their floors."""
    floor, graph = layers(), import_graph()
    crossing = sorted(
        f"{name} -> {other}"
        for name, imported in graph.items()
        for other in imported
        if (floor[name], floor[other]) in FORBIDDEN
    )
    assert crossing == []
    misplaced = sorted(
        name
        for name in MODULES
        for package, expected in FLOORS.items()
        if (name == package or name.startswith(package + ".")) and floor[name] not in expected
    )
    assert misplaced == []
    handoff = [name for name in MODULES if name.startswith("fdchannel.handoff.")]
    # Only the names kept for old imports are not the async layer's.
    assert sorted(n for n in handoff if floor[n] == "core") == [
        f"fdchannel.handoff.{old}" for old in ("ack", "machine", "received", "sides")
    ]


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c"]]),
    ],
)
def test_circles_are_found(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert circles(graph) == expected
