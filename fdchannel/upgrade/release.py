"""What the next generation runs: a command line, a working directory and changes to
the environment, resolved anew at each upgrade.

Releases are often deployed each to a directory of its own
(``/srv/app/releases/N``) with a symlink naming the one to run
(``/srv/app/current``).  A ``Release`` keeps the command and the directory as
they were given, through the symlink; ``resolve()`` makes them real at the
moment of an upgrade: the directory (``os.path.realpath``), and the
directories on the way to the program (its last component is not resolved:
a virtual environment's ``python`` is a symlink that must stay one, or the
interpreter would not find the environment).  The new generation so runs
from the release the symlink names at that moment, with paths of its own
that a later flip of the symlink does not change under it (its modules,
imported late, still come from its own release); and it is handed the
release as given, to start its own successor from the symlink again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UpgradeError, UpgradeFailed

__all__ = ["Launch", "Release", "Variables", "logical_cwd", "release_from"]

#: Changes to the environment: a value sets a variable, None removes it.
Variables = Mapping[str, "str | None"]


@dataclass(frozen=True)
class Launch:
    """A release resolved at an upgrade: what is started."""

    #: The program (absolute, the directories on its way resolved) and its arguments
    #: (the first is the program).
    argv: tuple[str, ...]
    #: The directory it starts in (resolved); None: where this process is.
    cwd: str | None
    env: dict[str, str]
    #: As asked: what the new generation starts its own successor from.
    release: Release


@dataclass(frozen=True)
class Release:
    """A command line, a working directory and changes to the environment, as given."""

    command: tuple[str, ...]
    #: Absolute, as given (through a symlink, maybe); None: where this process is.
    cwd: str | None
    env: Mapping[str, str | None] = field(default_factory=dict)

    def resolve(self, environ: Mapping[str, str]) -> Launch:
        """The release as it is now: UpgradeFailed when its directory or program is missing.

        ``environ`` is the environment to change (this process's, less what
        describes it only)."""
        env = dict(environ)
        for name, value in self.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        cwd: str | None = None
        if self.cwd is not None:
            cwd = os.path.realpath(self.cwd)
            if not os.path.isdir(cwd):
                raise UpgradeFailed(
                    f"cannot start the new generation in {self.cwd}: no such directory"
                )
            env["PWD"] = self.cwd  # the directory as the shell would name it: as given
        program = _program(self.command[0], cwd or ".", env.get("PATH", os.defpath))
        return Launch((program, *self.command[1:]), cwd, env, self)

    def as_json(self) -> dict[str, Any]:
        """What the new generation is handed (the environment went with it already)."""
        return {"command": list(self.command), "cwd": self.cwd}


def release_from(
    command: Sequence[str] | None, cwd: str | os.PathLike[str] | None, env: Variables | None
) -> tuple[tuple[str, ...] | None, str | None, dict[str, str | None]]:
    """``command``, ``cwd`` and ``env`` checked: UpgradeError naming what is wrong.

    A relative ``cwd`` is taken from this process's directory (``logical_cwd``)."""
    checked_command: tuple[str, ...] | None = None
    if command is not None:
        if isinstance(command, str | bytes) or not all(isinstance(a, str) for a in command):
            raise UpgradeError("a command is a list of strings: the program and its arguments")
        checked_command = tuple(command)
        if not checked_command or not checked_command[0]:
            raise UpgradeError("a command names a program: it is empty")
        _no_nul("the command", *checked_command)
    checked_cwd: str | None = None
    if cwd is not None:
        text = os.fspath(cwd)
        if not isinstance(text, str) or not text:
            raise UpgradeError(f"a working directory is a path, not {cwd!r}")
        _no_nul("the working directory", text)
        here = logical_cwd()
        if here is None and not os.path.isabs(text):
            raise UpgradeError(f"{text} is relative, and this process's directory is gone")
        checked_cwd = os.path.normpath(os.path.join(here or "/", text))
    checked_env: dict[str, str | None] = {}
    for name, value in (env or {}).items():
        if not isinstance(name, str) or not name or "=" in name:
            raise UpgradeError(f"{name!r} is no environment variable's name")
        if value is not None and not isinstance(value, str):
            raise UpgradeError(f"${name} is set to a string (or None to remove it), not {value!r}")
        _no_nul("the environment", name, value or "")
        checked_env[name] = value
    return checked_command, checked_cwd, checked_env


def logical_cwd() -> str | None:
    """This process's directory as it was named: ``$PWD`` when that is the directory
    the process is in (a shell keeps the path it was given, symlinks and all),
    else the real one; None if it was removed."""
    pwd = os.environ.get("PWD", "")
    try:
        if os.path.isabs(pwd) and os.path.samefile(pwd, "."):
            return os.path.normpath(pwd)
    except OSError:
        pass
    try:
        return os.getcwd()
    except OSError:  # ENOENT: removed under us; a child started here starts there all the same
        return None


def _program(name: str, cwd: str, path: str) -> str:
    """``name`` as a path: found on ``path`` (a bare name) or from ``cwd`` (a relative
    one); the directories on its way resolved, its last component not."""
    if "/" in name:
        found: str | None = os.path.join(cwd, name)
    else:
        found = shutil.which(name, path=path)
        if found is not None and not os.path.isabs(found):  # a relative PATH entry
            found = os.path.join(cwd, found)
    if found is None:
        raise UpgradeFailed(f"cannot start the new generation: {name!r} is not on PATH")
    directory, base = os.path.split(found)
    return os.path.join(os.path.realpath(directory), base)


def _no_nul(what: str, *texts: str) -> None:
    if any("\0" in text for text in texts):
        raise UpgradeError(f"{what} holds a NUL character")
