"""The sandbox's file-system lockdown, run by the launcher inside its private mount namespace.

``lockdown`` makes every mount private, puts a size-capped tmpfs over the working directory, hides ``/root``
and ``/home`` (except the Python install) and remounts everything else read-only, then fails closed if a
shared writable directory is still writable. Standard library only (see ``sandbox.common``).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

__all__ = ["lockdown"]

_MS = {"RDONLY": 1, "NOSUID": 2, "NODEV": 4, "NOEXEC": 8, "REMOUNT": 32, "NOATIME": 1024, "NODIRATIME": 2048}
_MS.update({"BIND": 4096, "REC": 16384, "PRIVATE": 1 << 18, "RELATIME": 1 << 21, "STRICTATIME": 1 << 24})
_CARRIED_MOUNT_FLAGS = ("NODEV", "NOEXEC", "NOATIME", "NODIRATIME", "RELATIME", "STRICTATIME")
_HIDDEN_DIRS = ("/root", "/home")


def lockdown(workdir: str, owner: int, file_size_bytes: int) -> list[str]:
    """Private mounts; a tmpfs of 4 x ``file_size_bytes`` owned by ``owner`` as the working directory;
    everything else read-only. Returns warnings for mounts that could not be made read-only."""
    _mount(None, "/", None, _MS["REC"] | _MS["PRIVATE"])
    options = f"size={4 * file_size_bytes},mode=0700,uid={owner},gid={owner}"
    _mount("tmpfs", workdir, "tmpfs", _MS["NOSUID"] | _MS["NODEV"], options)
    _hide_private_dirs(workdir)
    warnings = _remount_readonly(keep=workdir)
    _check_readonly(["/", os.path.dirname(workdir), "/dev/shm", "/var/tmp"])
    return warnings


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    args = [None if s is None else s.encode() for s in (source, target, fstype)]
    if libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), None if data is None else data.encode()):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _python_paths() -> list[str]:
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path}
    real = sorted({os.path.realpath(p) for p in found if p and os.path.isdir(p)})
    return [p for p in real if not any(p.startswith(q.rstrip("/") + "/") for q in real if q != p)]


def _hide_private_dirs(workdir: str) -> None:
    """Cover /root and /home with an empty tmpfs, then bind back only the Python install under them."""
    for hidden in _HIDDEN_DIRS:
        if not os.path.isdir(hidden) or workdir.startswith(hidden + "/"):
            continue
        inside = [p for p in _python_paths() if p.startswith(hidden + "/")]
        handles = [(path, os.open(path, os.O_PATH)) for path in inside]
        _mount("tmpfs", hidden, "tmpfs", _MS["NOSUID"] | _MS["NODEV"], "size=1m,mode=0755")
        for path, fd in handles:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, _MS["BIND"] | _MS["REC"])
            os.close(fd)


def _mountinfo() -> list[tuple[str, list[str]]]:
    import re  # only the fallback lockdown reads the mount table

    rows = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            rows.append((point, fields[5].split(",")))
    return rows


def _remount_readonly(keep: str) -> list[str]:
    warnings = []
    for point, options in _mountinfo():
        if point == keep:
            continue
        flags = _MS["REMOUNT"] | _MS["BIND"] | _MS["RDONLY"] | _MS["NOSUID"]
        flags |= sum(_MS[o.upper()] for o in set(options) if o.upper() in _CARRIED_MOUNT_FLAGS)
        try:
            _mount(None, point, None, flags)
        except OSError as exc:
            warnings.append(f"{point}: {exc.strerror}")
    return warnings


def _check_readonly(directories: list[str]) -> None:
    """Fail closed: refuse to run anything if a shared writable directory is still writable."""
    for directory in directories:
        probe = os.path.join(directory, f".sandbox-probe-{os.getpid()}-{time.time_ns()}")
        try:
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except OSError:
            continue  # expected: EROFS or ENOENT
        os.close(fd)
        os.unlink(probe)
        raise PermissionError(f"{directory} is still writable after the read-only remount")


# ---------------------------------------------------------------------------------------------------------
# The minimal root: an empty tmpfs with only the interpreter, its standard library, the shared libraries,
# /dev/null, /dev/urandom and the work dir bound in, entered with pivot_root (the host's tree is detached).

INNER_WORKDIR = "/sandbox"
_ST_CARRIED = {4: "NODEV", 8: "NOEXEC", 1024: "NOATIME", 2048: "NODIRATIME", 4096: "RELATIME"}


def _carried_flags(path: str) -> int:
    flags = os.statvfs(path).f_flag
    return sum(_MS[name] for bit, name in _ST_CARRIED.items() if flags & bit)


def _bind_readonly(source: str, target: str) -> None:
    if os.path.isdir(source):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, _MS["BIND"] | _MS["REC"])
    flags = _MS["REMOUNT"] | _MS["BIND"] | _MS["RDONLY"] | _MS["NOSUID"] | _carried_flags(source)
    _mount(None, target, None, flags)


def _system_paths() -> list[str]:
    """What the interpreter needs: its install (site-packages hidden later), the loader's cache and the
    shared-library folders; /lib and /lib64 are recreated as the symlinks they are on merged-/usr systems."""
    base = os.path.realpath(sys.base_prefix)
    paths = [base, "/etc/ld.so.cache", "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/lib32", "/usr/lib32"]
    return [p for p in dict.fromkeys(paths) if os.path.lexists(p)]


def minimal_root(root: str, owner: int, file_size_bytes: int) -> None:
    """Build the minimal root on the (empty) directory ``root`` and pivot into it. Raises OSError on any
    failure; the caller then falls back to ``lockdown``."""
    _mount(None, "/", None, _MS["REC"] | _MS["PRIVATE"])
    _mount("tmpfs", root, "tmpfs", _MS["NOSUID"] | _MS["NODEV"], "size=4m,mode=0755")
    base = os.path.realpath(sys.base_prefix)
    for path in _system_paths():
        target = root + path
        if os.path.islink(path) and not path.startswith(base):
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            os.symlink(os.readlink(path), target)
        else:
            _bind_readonly(path, target)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for hidden in ("site-packages", "dist-packages"):  # the interpreter and its standard library only
        folder = os.path.join(root + base, "lib", version, hidden)
        if os.path.isdir(folder):
            _mount(
                "tmpfs", folder, "tmpfs", _MS["NOSUID"] | _MS["NODEV"] | _MS["RDONLY"], "size=4k,mode=0555"
            )
    for device in ("/dev/null", "/dev/urandom"):
        os.makedirs(root + "/dev", mode=0o755, exist_ok=True)
        open(root + device, "a").close()
        _mount(device, root + device, None, _MS["BIND"])
        _mount(None, root + device, None, _MS["REMOUNT"] | _MS["BIND"] | _MS["NOSUID"] | _MS["NOEXEC"])
    work = root + INNER_WORKDIR
    os.makedirs(work, mode=0o755)
    options = f"size={4 * file_size_bytes},mode=0700,uid={owner},gid={owner}"
    _mount("tmpfs", work, "tmpfs", _MS["NOSUID"] | _MS["NODEV"], options)
    libc = ctypes.CDLL(None, use_errno=True)
    os.chdir(root)
    if libc.syscall(155, b".", b"."):  # pivot_root(".", "."): the old root now sits under the new one
        raise OSError(ctypes.get_errno(), "pivot_root failed")
    if libc.umount2(b".", 2):  # MNT_DETACH: the host's tree is gone from this namespace
        raise OSError(ctypes.get_errno(), "detaching the old root failed")
    os.chdir("/")
    _mount(None, "/", None, _MS["REMOUNT"] | _MS["RDONLY"] | _MS["NOSUID"] | _MS["NODEV"])
    _check_readonly(["/", "/dev"])
