"""Files a run writes: every one atomically (`write_atomic`), so a reader or a killed run only
ever sees a complete file. No jax here: the readers of `.out` files use it too."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from typing import Any

# The process's umask: reading it means setting it, so it is set back at once.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str, write: Callable[[Any], None]) -> None:
    """`write(file)` into a temporary file beside `path`, then rename: a reader (or a killed
    run) only ever sees the old file or the complete new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        # The permissions of an ordinary new file, not mkstemp's 0600.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable(prefix: str) -> None:
    """Raise `OSError` unless files can be created beside `prefix` (as `write_atomic` does)."""
    directory = os.path.dirname(os.path.abspath(prefix))
    with tempfile.NamedTemporaryFile(dir=directory, prefix=os.path.basename(prefix) + "."):
        pass


def write_pickle_atomic(path: str, obj: Any) -> None:
    write_atomic(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))
