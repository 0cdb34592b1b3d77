"""Carries the SLURM background work of a parallel test session (`python -m pytest`, whose
pyproject options start two workers) from the controller to the workers.

The time-limit job and the driver's scenarios (`slurm_jobs.start_background`) wait for minutes,
so they start with the session and run beside the suite. In a parallel session the controller
starts them once, and each result is posted, pickled, in a folder the workers inherit through
the environment; the test that needs one, in whichever worker, waits for it there. A session of
one process (`-n 0`) keeps them in memory, as before."""

import os
import pickle
import shutil
import tempfile
import time

ENV = "TEST_BACKGROUND_DIR"
_STARTED: list[bool] = []  # the controller has started the session's background work


def host() -> None:
    """The controller: make the folder, before the workers start (they inherit it)."""
    os.environ[ENV] = tempfile.mkdtemp(prefix="test_background_")


def remove() -> None:
    """The controller, at the session's end: the folder and what was posted in it."""
    if hosting():
        shutil.rmtree(folder(), ignore_errors=True)


def folder() -> str | None:
    return os.environ.get(ENV)


def hosted_elsewhere() -> bool:
    """This is a worker whose controller hosts the background work."""
    return "PYTEST_XDIST_WORKER" in os.environ and folder() is not None


def hosting() -> bool:
    """This is the controller that hosts it."""
    return "PYTEST_XDIST_WORKER" not in os.environ and folder() is not None


def started() -> bool:
    return bool(_STARTED)


def mark_started() -> None:
    _STARTED.append(True)


def post(name: str, value) -> None:
    """Post `value` (a result, or the exception that ended its work) under `name`, atomically."""
    path = os.path.join(folder(), f"{name}.pickle")
    with open(path + ".tmp", "wb") as f:
        pickle.dump(value, f)
    os.replace(path + ".tmp", path)


def wait_for(name: str, timeout: float):
    """The value posted under `name` (raised again if it is an exception), once posted."""
    path = os.path.join(folder(), f"{name}.pickle")
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < deadline, f"the session's {name} posted nothing in {timeout} s"
        time.sleep(1.0)
    with open(path, "rb") as f:
        value = pickle.load(f)
    if isinstance(value, BaseException):
        raise value
    return value
