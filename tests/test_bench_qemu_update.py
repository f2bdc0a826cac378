"""The qemu-update figure: a quick run on real QEMUs, its skips, errors and verdicts.

The quick run (one round per route) is not a timing test: it shows that
both updates, by hand and by ``fdchannel.blocking.update_qemu``, move a
running guest and report every measure, and that the figure leaves no
QEMU running, no directory in the roots and nothing mounted in them.  It
runs in a mount namespace of its own, so that the mounts it finds are its
own and not those of other QEMU tests running meanwhile.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench import qemu_update
from bench.__main__ import build_parser
from bench._report import Figure, Row
from bench.qemu_update import BY_HAND, FDCHANNEL, MEASURES, OVERHEAD_MS

from .interop.test_qemu_versions import QEMU10, QEMU11

TOP = Path(__file__).resolve().parent.parent
#: Every update of the quick run, QEMU start-ups included, takes well under this.
RUN_TIMEOUT = 120

#: Runs the figure (argv[2:]), then prints what was mounted in the roots
#: (argv[1], JSON) before and after, and the figure's pid.
WATCH = """
import json, subprocess, sys
from tests.interop.qemu_root import mounts_under
roots = json.loads(sys.argv[1])
before = [str(p) for r in roots for p in mounts_under(r)]
bench = subprocess.Popen([sys.executable, "-m", "bench", *sys.argv[2:]])
status = bench.wait()
after = [str(p) for r in roots for p in mounts_under(r)]
print(json.dumps({"pid": bench.pid, "status": status, "before": before, "after": after}))
"""


def qemus_named(token: str) -> list[int]:
    """Processes whose command line holds ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile
    return found


@pytest.mark.interop
@QEMU10.skip
def test_the_figure_runs_small(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("chroot and mount --bind need root")
    routes = ["10.0 -> 10.0"] + (["10.0 -> 11.1"] if os.environ.get(QEMU11.variable) else [])
    roots = [os.environ[v.variable] for v in (QEMU10, QEMU11) if os.environ.get(v.variable)]
    out = tmp_path / "qemu-update.json"
    argv = ["qemu-update", "--qemu-update-rounds", "1", "--json", str(out)]
    # Its own mount namespace: the mounts it sees are its own, not other tests'.
    unshare = ["unshare", "--mount", "--propagation", "private", "--"]
    done = subprocess.run(
        [*unshare, sys.executable, "-c", WATCH, json.dumps(roots), *argv],
        cwd=TOP,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    watched = json.loads(done.stdout.splitlines()[-1])
    assert watched["status"] == 0, done.stdout + done.stderr
    # Nothing of the run is left: its mounts, its QEMUs (named after its pid), its places.
    assert watched["after"] == watched["before"]
    token = f"fdchannel-bench-{watched['pid']}-"
    assert qemus_named(token) == []
    for root in roots:
        assert list((Path(root) / "tmp").glob(f"fdc-bench-{watched['pid']}-*")) == []

    (figure,) = json.loads(out.read_text())["figures"]
    rows = figure["rows"]
    assert [(r["QEMU"], r["measure"], r["update"]) for r in rows] == [
        (route, measure, update)
        for route in routes
        for measure, _ in MEASURES
        for update in (BY_HAND, FDCHANNEL)
    ]
    for row in rows:
        assert row["error"] is None
        (sample,) = row["samples"]
        assert sample > 0
        assert row["ratio"] > 0
    for route in routes:
        for update in (BY_HAND, FDCHANNEL):
            value = {
                r["measure"]: r["value"]
                for r in rows
                if (r["QEMU"], r["update"]) == (route, update)
            }
            assert value["total - start-up"] == pytest.approx(
                value["total"] - value["new QEMU start-up"]
            )
            (total,) = [
                r
                for r in rows
                if (r["QEMU"], r["measure"], r["update"]) == (route, "total", update)
            ]
            assert set(qemu_update.STARTUP_STEPS) <= set(total["steps_ms"])
    assert figure["parameters"]["rounds"] == 1
    verdicts = [note for note in figure["notes"] if "'at most" in note]
    assert len(verdicts) == 2 * len(routes)


@pytest.mark.parametrize(
    ("euid", "variables", "reason"),
    [
        (1000, {QEMU10.variable: "/somewhere"}, "needs root"),
        (0, {}, f"{QEMU10.variable} is not set"),
    ],
)
def test_without_a_root_the_figure_is_skipped(
    monkeypatch: pytest.MonkeyPatch, euid: int, variables: dict[str, str], reason: str
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    for variable in (QEMU10.variable, QEMU11.variable):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    figure = qemu_update.run(build_parser().parse_args(["qemu-update"]))
    assert figure.rows == []
    assert not figure.failed
    (skipped,) = [note for note in figure.notes if note.startswith("skipped: ")]
    assert reason in skipped


def test_a_directory_that_is_no_root_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv(QEMU11.variable, raising=False)
    (tmp_path / "root").mkdir()
    monkeypatch.setenv(QEMU10.variable, str(tmp_path / "root"))
    figure = qemu_update.run(build_parser().parse_args(["qemu-update"]))
    assert figure.failed
    assert len(figure.rows) == len(MEASURES) * 2
    for row in figure.rows:
        assert row.error is not None
        assert "is not a QEMU 10.0 root" in row.error


TABLE_HEADER = "Num       RefCount Protocol Flags    Type St Inode Path\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0000000000000000: 00000002 00000000 00010000 0001 01 4242 @fdc-x-cpr\n", True),
        # Bound but not listening (a connected or unconnected socket).
        ("0000000000000000: 00000002 00000000 00000000 0001 01 4242 @fdc-x-cpr\n", False),
        # A path, not the abstract name.
        ("0000000000000000: 00000002 00000000 00010000 0001 01 4242 fdc-x-cpr\n", False),
        ("0000000000000000: 00000002 00000000 00010000 0001 01 4242 @fdc-x-cpr2\n", False),
        ("0000000000000000: 00000002 00000000 00010000 0001 01 4242\n", False),
    ],
)
def test_listening_reads_the_table(tmp_path: Path, line: str, expected: bool) -> None:
    table = tmp_path / "unix"
    table.write_text(TABLE_HEADER + line)
    assert qemu_update.listening("fdc-x-cpr", str(table)) is expected


def test_listening_sees_a_real_listener() -> None:
    name = f"fdc-bench-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(b"\0" + name.encode())
        assert not qemu_update.listening(name)
        sock.listen(1)
        assert qemu_update.listening(name)
    assert not qemu_update.listening(name)


def figure_of(values: dict[tuple[str, str], tuple[float, ...]]) -> Figure:
    figure = Figure("f", "t", ("QEMU", "measure", "update"), "ms", "vs by hand", paired=True)
    for (measure, update), samples in values.items():
        figure.rows.append(
            Row(("10.0 -> 10.0", measure, update), samples, baseline=update == BY_HAND)
        )
    return figure


@pytest.mark.parametrize(
    ("ours", "expected"),
    [
        (
            ((3.0, 3.0, 3.0), (40.0, 45.0, 50.0)),
            [
                "10.0 -> 10.0: downtime 3.0 ms with fdchannel, 3.0 ms by hand "
                "(+0.0 ms; by hand 2.0-4.0 ms): 'at most by hand's' holds",
                "10.0 -> 10.0: total minus start-up 45.0 ms with fdchannel (+15.0 ms next to "
                f"by hand's): 'at most {OVERHEAD_MS:.0f} ms' holds",
            ],
        ),
        (
            ((5.0, 5.0, 5.0), (60.0, 60.0, 60.0)),
            [
                "10.0 -> 10.0: downtime 5.0 ms with fdchannel, 3.0 ms by hand "
                "(+2.0 ms; by hand 2.0-4.0 ms): 'at most by hand's' does NOT hold",
                "10.0 -> 10.0: total minus start-up 60.0 ms with fdchannel (+30.0 ms next to "
                f"by hand's): 'at most {OVERHEAD_MS:.0f} ms' does NOT hold",
            ],
        ),
    ],
)
def test_verdicts(ours: tuple[tuple[float, ...], tuple[float, ...]], expected: list[str]) -> None:
    downtime, beyond = ours
    figure = figure_of(
        {
            ("downtime", BY_HAND): (2.0, 3.0, 4.0),
            ("downtime", FDCHANNEL): downtime,
            ("total - start-up", BY_HAND): (30.0, 30.0, 30.0),
            ("total - start-up", FDCHANNEL): beyond,
        }
    )
    assert qemu_update.verdicts(figure) == expected


def test_no_verdict_for_a_row_that_failed() -> None:
    figure = figure_of({("downtime", BY_HAND): (3.0,)})
    figure.rows.append(
        Row(("10.0 -> 10.0", "downtime", FDCHANNEL), baseline=False, error="UpdateFailed: no")
    )
    assert qemu_update.verdicts(figure) == []


RESUME = {"event": "RESUME", "timestamp": {"seconds": 100, "microseconds": 250000}}


def status(name: str) -> dict[str, object]:
    return {"return": {"status": name, "running": name == "running"}, "id": 1}


@pytest.mark.parametrize(
    ("sent_at_once", "answers", "expected"),
    [
        # RESUME came: its timestamp, nothing asked.
        ([RESUME], [], 100.25),
        # None came yet, the guest still migrating: RESUME is waited for.
        ([], [status("inmigrate"), RESUME], 100.25),
        # None came and the guest runs: QEMU sent RESUME to nobody.
        ([], [status("running")], None),
    ],
    ids=["came", "comes-later", "lost"],
)
def test_a_missing_resume_is_looked_into(
    monkeypatch: pytest.MonkeyPatch,
    sent_at_once: list[dict[str, object]],
    answers: list[dict[str, object]],
    expected: float | None,
) -> None:
    monkeypatch.setattr(qemu_update, "RESUME_LOOK", 0.05)
    ours, qemu = socket.socketpair()
    with ours, qemu:
        qemu.settimeout(10)
        qemu.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in sent_at_once))

        def answer() -> None:
            if answers:
                with qemu.makefile("rb") as reader:
                    request = json.loads(reader.readline())
                assert request == {"execute": "query-status", "id": 1}
                qemu.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in answers))

        with ThreadPoolExecutor(1) as pool:
            answered = pool.submit(answer)
            monitor = qemu_update.Monitor(ours, "the new QEMU", time.monotonic() + 10)
            if expected is None:
                with pytest.raises(qemu_update.ResumeMissed, match="no RESUME"):
                    qemu_update.resumed(monitor)
            else:
                assert qemu_update.resumed(monitor) == expected
            answered.result(timeout=10)
