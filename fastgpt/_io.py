"""Writing files so that a crash, Ctrl-C, ``kill -9`` or a full disk never leaves a truncated one.

A file is written to a hidden temporary ``.<name>.tmp-<pid>`` beside it, fsynced, then renamed
over it. A process killed mid-write leaves its temporary behind; the next write to the same
directory (or a training run's start) removes the temporaries of processes that no longer exist.
"""
import errno
import os
import re

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """The file system ran out of space (or quota) while writing; the target file is unchanged."""


def temporary_path(path, pid=None):
    """Where :func:`atomic_write` stages ``path`` in process ``pid`` (default: this one)."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp-{os.getpid() if pid is None else pid}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(directory, name=None):
    """Delete the temporaries that processes which no longer exist left in ``directory`` (only
    those staging ``name``, if given). A live process's temporary, this one's included, is never
    touched. Returns the paths removed."""
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        m = _TEMPORARY.match(entry)
        if not m or (name is not None and m["name"] != name):
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            os.remove(os.path.join(directory, entry))
            removed.append(os.path.join(directory, entry))
        except FileNotFoundError:  # removed by another process meanwhile
            pass
    return removed


def why_unwritable(directory):
    """None if files can be created in ``directory`` (or in the directory that would be created
    there), else the reason, e.g. 'is a file' or 'is on a read-only file system'. Creates nothing."""
    path = os.path.abspath(directory)
    while not os.path.exists(path):  # the nearest existing ancestor decides
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if not os.path.isdir(path):
        return "is a file, not a directory" if path == os.path.abspath(directory) else f"cannot be created: {path} is a file"
    if os.access(path, os.W_OK | os.X_OK):
        return None
    where = "" if path == os.path.abspath(directory) else f" ({path} cannot be written)"
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"is on a read-only file system{where}"
    return f"is not writable: permission denied{where}"


class _Recording:
    """A file object that remembers the OSError its writes raised: torch.save reports a failed
    write as a generic RuntimeError, and the errno must survive to say why."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def _is_no_space(e, recorded):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return True
        e = e.__cause__ or e.__context__
    return recorded is not None and recorded.errno in _NO_SPACE


def atomic_write(path, write):
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path``: readers see the old file or the new one, never a partial one. A full disk raises
    :class:`DiskFullError` (``path`` unchanged, no temporary left behind)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(directory, os.path.basename(path))
    tmp = temporary_path(path)
    f = None
    try:
        with open(tmp, "wb") as raw:
            f = _Recording(raw)
            write(f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        _fsync_directory(directory)  # the rename itself survives a power cut
    except BaseException as e:
        if _is_no_space(e, f.error if f is not None else None):
            raise DiskFullError(errno.ENOSPC, f"no space left on {directory}", path) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is done anyway
        pass
    finally:
        os.close(fd)
