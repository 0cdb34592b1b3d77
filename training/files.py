"""Files a run writes: every one atomically (`write_atomic`), so a reader or a killed run only
ever sees a complete file; the checks on an output prefix before anything is compiled
(`check_output`); and the lock that keeps one writer per prefix (`OutputLock`). No jax here: the
readers of `.out` files use it too."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from typing import Any

from training import paths

# The process's umask: reading it means setting it, so it is set back at once.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class WriteError(OSError):
    """A file that could not be written (a full disk, a lost mount): `filename` names it."""


def write_atomic(path: str, write: Callable[[Any], None], keep: str | None = None) -> None:
    """`write(file)` into a temporary file beside `path`, then rename: a reader (or a killed
    run) only ever sees the old file or the complete new one. With `keep`, the old file is
    renamed to `keep` first (a second generation). Raises `WriteError` naming `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp"
        )
        # The permissions of an ordinary new file, not mkstemp's 0600.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep is not None and os.path.exists(path):
            os.replace(path, keep)
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(error.errno, error.strerror, path) from None
        raise


def write_pickle_atomic(path: str, obj: Any) -> None:
    write_atomic(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def save_png_atomic(path: str, fig, **savefig_kwargs) -> None:
    """A matplotlib figure saved as a PNG atomically: an interrupted save leaves the old
    picture, not half of a new one."""
    write_atomic(path, lambda f: fig.savefig(f, format="png", **savefig_kwargs))


def make_writable_dir(directory: str, prefix: str = ".write-test.", probe_bytes: int = 0) -> None:
    """Create `directory` if needed and prove that it takes a new file (a temporary one named
    `prefix...`, made and removed) of `probe_bytes` bytes, written to the disk; raises `OSError`
    when it cannot (read-only, full, not a folder)."""
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=prefix) as f:
        if probe_bytes:
            f.write(b"\0" * probe_bytes)
            f.flush()
            os.fsync(f.fileno())


class OutputError(ValueError):
    """An output prefix the run cannot write to: the message is one line."""


def check_output(prefix: str, written: list[str]) -> None:
    """Before anything compiles: the prefix names files, not a folder; its folder exists (it is
    created) and takes new files; none of the run's files (`written`, and the lock) is a folder,
    a symbolic link (a run writes only its own files, never through a link to another) or
    anything but a plain file."""
    if not os.path.basename(prefix):
        raise OutputError(
            f"--output: {prefix!r} names a folder; give a file prefix in it, such as "
            f"{os.path.join(prefix, 'run')!r}"
        )
    for path in [*written, paths.lock(prefix)]:
        check_own_file(path)
    directory = os.path.dirname(os.path.abspath(prefix))
    try:
        make_writable_dir(directory, prefix=os.path.basename(prefix) + ".")
    except OSError as error:
        raise OutputError(f"--output: cannot write {prefix!r}: {error.strerror}") from None


def check_own_file(path: str) -> None:
    """`path`, which a run writes, is absent or a plain file of its own: not a folder, not a
    symbolic link (whose target lies outside the run's files), not a FIFO or a device."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise OutputError(f"--output: cannot use {path}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise OutputError(f"--output: {path} is a folder, where the run writes a file")
    if stat.S_ISLNK(mode):
        raise OutputError(
            f"--output: {path} is a symbolic link (to {os.readlink(path)}), where the run writes "
            "a file of its own; a run never writes through a link: remove it"
        )
    if not stat.S_ISREG(mode):
        raise OutputError(
            f"--output: {path} is not a plain file (a FIFO, socket or device), where the run "
            "writes a file; remove it"
        )


def holder_line() -> str:
    """Who holds a lock: this process, its host and its SLURM job, and since when."""
    job = os.environ.get("SLURM_JOB_ID")
    where = f"pid {os.getpid()} on {socket.gethostname()}" + (f", SLURM job {job}" if job else "")
    return f"{where}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


class LockedError(OutputError):
    """Another live process holds the lock of an output prefix."""


class OutputLock:
    """The lock a run holds on its output prefix (`<prefix>.lock`) while it trains, so that two
    processes never write one set of files. `flock` is dropped by the kernel when its holder
    dies, so a lock file left by a killed run never blocks. The file holds `holder_line` for the
    message a second process prints."""

    def __init__(self, prefix: str):
        self.path = paths.lock(prefix)
        self.fd = None

    def _open(self) -> int:
        """The lock file, opened without following a link (one planted there since
        `check_output` is refused) and only when it is a plain file."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o666 & ~_UMASK)
        except OSError as error:
            check_own_file(self.path)  # the one line for a link or a folder
            raise OutputError(f"--output: cannot open {self.path}: {error.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            check_own_file(self.path)
            raise OutputError(f"--output: {self.path} is not a plain file; remove it")
        return fd

    def __enter__(self) -> OutputLock:
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise LockedError(
                    f"--output: {self.path} is held by {holder}, which is training into the "
                    "same files; wait for it, or stop it"
                ) from None
            # A holder that just finished removed the file it locked: lock the one there now.
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, holder_line().encode())
        except OSError as error:  # a full disk already: no lock, and no empty lock file left
            os.unlink(self.path)
            os.close(fd)
            raise OutputError(f"--output: cannot write {self.path}: {error.strerror}") from None
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
