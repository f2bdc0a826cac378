"""The files an upgrader keeps beside its pidfile, written and read safely in a
directory that other users may write to.

A file is replaced atomically: written under an unpredictable temporary name,
created with ``O_EXCL|O_NOFOLLOW`` (nothing planted at that name is ever
opened), then renamed over the target, both relative to one opened
descriptor of the directory.  Whatever is at the target must be a regular
file: a symlink, a directory or a FIFO there is an UpgradeError naming the
path (a rename replaces a symlink without following it; the check makes
what was planted visible).  Reading opens with ``O_NOFOLLOW|O_NONBLOCK`` (a
FIFO does not block the open) and reads a regular file only, and only so
much of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

from ..errors import UpgradeError

__all__ = ["LIMIT", "read", "read_stat", "replace", "warn_if_shared"]

log = logging.getLogger("fdchannel.upgrade")

#: The most read from one of these files (a pidfile, a status file).
LIMIT = 1 << 16
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
#: Directories already warned about: once each per process.
_warned: set[Path] = set()


def replace(path: Path, text: str, mode: int = 0o644) -> None:
    """Make ``path`` a regular file holding ``text``, atomically."""
    directory = _open_directory(path)
    try:
        _check(path, _lstat(path.name, directory))
        temporary = f".{path.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temporary, _CREATE, mode, dir_fd=directory)
        try:
            with open(fd, "w", encoding="utf-8") as file:
                file.write(text)
            os.replace(temporary, path.name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=directory)
            raise
    except OSError as exc:
        raise UpgradeError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(directory)


def read(path: Path, limit: int = LIMIT) -> str:
    """The text of the regular file ``path``; FileNotFoundError if there is none."""
    return read_stat(path, limit)[0]


def read_stat(path: Path, limit: int = LIMIT) -> tuple[str, os.stat_result]:
    """``read``, and the file's status as it was read (its mtime: when it was written)."""
    try:
        fd = os.open(path, _OPEN)
    except FileNotFoundError:
        raise
    except OSError as exc:  # ELOOP for a symlink, ENXIO for a socket
        with contextlib.suppress(OSError):
            _check(path, os.lstat(path))
        raise UpgradeError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        found = os.fstat(fd)
        _check(path, found)
        data = os.read(fd, limit + 1)  # a regular file: all of it, up to the limit
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UpgradeError(f"{path} is larger than {limit} bytes: not one of ours")
    return data.decode("utf-8", errors="replace"), found


def warn_if_shared(path: Path) -> None:
    """Warn (once per directory) when others may replace what lies beside ``path``."""
    try:
        found = os.stat(path.parent)
    except OSError:
        return
    writable = found.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not found.st_mode & stat.S_ISVTX
    foreign = found.st_uid not in (0, os.geteuid())
    if path.parent in _warned or not (writable or foreign):
        return
    _warned.add(path.parent)
    whose = f"owned by uid {found.st_uid}" if foreign else f"mode {found.st_mode & 0o7777:o}"
    log.warning(
        "%s is writable by others (%s): keep pidfiles and control sockets in a "
        "directory of their own, such as /run/APP/",
        path.parent,
        whose,
    )


def _open_directory(path: Path) -> int:
    try:
        return os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UpgradeError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _lstat(name: str, directory: int) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=directory)
    except FileNotFoundError:
        return None


def _check(path: Path, found: os.stat_result | None) -> None:
    """UpgradeError unless ``found`` (what is at ``path``) is a regular file or nothing."""
    if found is not None and not stat.S_ISREG(found.st_mode):
        kind = _KINDS.get(stat.S_IFMT(found.st_mode), "something else")
        raise UpgradeError(f"{path} is {kind}, not a regular file")
