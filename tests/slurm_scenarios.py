"""The Figure 4 driver against what a shared cluster does to its jobs
(`tests/test_slurm_driver.py`): each scenario runs `faulty_figure4_driver.py` (the driver as a
user runs it, its jobs with an injected fault) on the quick ER ProcMaze cells and returns what
the test checks. They mostly wait (for SLURM to forget a job, for a time limit), so they start
in threads when the test session starts (`slurm_jobs.start_background`) and run beside the rest
of the suite; a test then takes its scenario's result.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

import background

from training import checkpoint

TESTS = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(TESTS, "faulty_figure4_driver.py")
# --gpus-per-job is left at its default: the driver finds that the test cluster has no GPUs.
QUICK_FINAL = ["--quick", "--agents", "ER", "--envs", "ProcMaze", "--stage", "final"]
ON_THE_CLUSTER = ["--executor", "slurm", "--cpus-per-job", "1"]
# Longer than SLURM keeps a cancelled job listed (MinJobAge 60 s, then up to 60 s more).
LONG_POLL = 130
TIMEOUT = 900  # no scenario takes this long; a hang fails its test instead of the session's

POOL = concurrent.futures.ThreadPoolExecutor(max_workers=5, thread_name_prefix="scenario")
FUTURES: dict[str, concurrent.futures.Future] = {}
DRIVERS: list[subprocess.Popen] = []  # every driver started, stopped at the session's end
FOLDERS: list[str] = []  # every --out-dir: its recorded jobs are cancelled at the end
CACHE = tempfile.mkdtemp(prefix="scenario_jax_cache_")  # the scenarios' jobs share programs
STOPPING = threading.Event()  # the session ends: a scenario still waiting gives up


class Line(NamedTuple):
    at: float  # time.time() when the driver printed it
    text: str


class Run(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    lines: list  # of Line: stdout's, timed
    seconds: float


class Driver:
    """A driver process whose stdout is read as it comes, each line timed."""

    def __init__(self, out_dir: str, *flags: str, faults: dict | None = None, start_at=0.0):
        env = {
            **os.environ,
            "FIGURE4_FAULTS": json.dumps(faults or {}),
            "FIGURE4_START_AT": str(start_at),
            "JAX_COMPILATION_CACHE_DIR": CACHE,
        }
        command = [sys.executable, DRIVER, *QUICK_FINAL, *ON_THE_CLUSTER, "--out-dir", out_dir]
        self.started = time.time()
        self.process = subprocess.Popen(
            [*command, *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        DRIVERS.append(self.process)
        FOLDERS.append(out_dir)
        self.lines: list[Line] = []
        self.errors: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, timed: bool) -> None:
        for text in stream:
            if timed:
                self.lines.append(Line(time.time(), text.rstrip("\n")))
            else:
                self.errors.append(text)

    def wait(self, timeout: float = TIMEOUT) -> Run:
        returncode = self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        stdout = "".join(line.text + "\n" for line in self.lines)
        seconds = time.time() - self.started
        return Run(returncode, stdout, "".join(self.errors), list(self.lines), seconds)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline or STOPPING.is_set():
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(1.0)


def cell_prefix(out_dir: str, regime: str) -> str:
    return os.path.join(out_dir, "final", f"ER_ProcMaze_{regime}")


def steps(out_dir: str, regime: str) -> int:
    return checkpoint.steps_done(cell_prefix(out_dir, regime) + ".ckpt")


def recorded_ids(out_dir: str) -> list[str]:
    try:
        with open(os.path.join(out_dir, "logs", "final", "submitted.json")) as f:
            return [record["job_id"] for record in json.load(f).values()]
    except (OSError, ValueError):
        return []


def slurm_forgot(job_id: str) -> bool:
    """SLURM no longer knows the job: `squeue --jobs` refuses its id."""
    done = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
    return done.returncode != 0 and "Invalid job id" in done.stderr


# --------------------------------------------------------------------------------------------
# The scenarios
# --------------------------------------------------------------------------------------------


def forgotten(folder: str) -> dict:
    """Two drivers, each on one cell, their jobs slowed (2 s after each chunk). Once both have
    a checkpoint, driver A dies (an ssh session dropped) and both jobs are cancelled. Driver C
    looks only every LONG_POLL seconds, so SLURM forgets its job between two looks. When SLURM
    has forgotten A's job, A's command starts again (B)."""
    a_dir, c_dir = os.path.join(folder, "restarted"), os.path.join(folder, "watching")
    slow = {"pause": 2.0}
    a = Driver(a_dir, "--regimes", "high", "--poll", "2", faults=slow)
    c = Driver(c_dir, "--regimes", "low", "--poll", str(LONG_POLL), faults=slow)
    wait_until(lambda: steps(a_dir, "high") >= 40 and steps(c_dir, "low") >= 40, 600, "checkpoints")
    a.process.kill()
    first = a.wait()
    a_job, c_job = recorded_ids(a_dir)[0], recorded_ids(c_dir)[0]
    cancelled_at = time.time()
    subprocess.run(["scancel", a_job, c_job], check=True)
    wait_until(lambda: slurm_forgot(a_job), 400, f"SLURM forgetting job {a_job}")
    forgot_after = time.time() - cancelled_at
    restart = Driver(a_dir, "--regimes", "high", "--poll", "2").wait()
    return {
        "first": first,
        "restart": restart,
        "watching": c.wait(),
        "a_dir": a_dir,
        "c_dir": c_dir,
        "jobs": (a_job, c_job),
        "cancelled_at": cancelled_at,
        "forgot_after": forgot_after,
    }


def stalled(folder: str) -> dict:
    """One cell under a one-minute limit whose run needs more (5 s after each chunk); once
    SLURM warns it, the chunk it is in takes 5 minutes more than the warning gives it."""
    out = os.path.join(folder, "stalled")
    faults = {"pause": 5.0, "stall": 300.0}
    flags = ["--regimes", "high", "--time", "1", "--signal-delay", "5", "--poll", "5"]
    flags += ["--retries", "5"]  # a try warned before its first checkpoint makes no progress
    return {"run": Driver(out, *flags, faults=faults).wait(), "out": out}


def killed(folder: str) -> dict:
    """Both regimes with one retry: the high cell's run is killed (SIGKILL) on its first try,
    the low cell's on every try; then a second shell's `--status`."""
    out = os.path.join(folder, "killed")
    deaths = {"ER_ProcMaze_high": 1, "ER_ProcMaze_low": 9}
    run = Driver(out, "--poll", "2", "--retries", "1", faults={"deaths": deaths}).wait()
    status = subprocess.run(
        [sys.executable, DRIVER, "--status", "--out-dir", out], capture_output=True, text=True
    )
    return {"run": run, "status": status, "out": out}


def two_at_once(folder: str) -> dict:
    """Two drivers of the same command on one folder, released at the same instant (both
    have imported everything by then)."""
    out = os.path.join(folder, "two")
    at = time.time() + 30
    drivers = [Driver(out, "--regimes", "high", "--poll", "2", start_at=at) for _ in range(2)]
    pids = [d.process.pid for d in drivers]
    return {"runs": [d.wait() for d in drivers], "pids": pids, "out": out}


def uninterrupted(folder: str) -> dict:
    """The quick ER ProcMaze high-data cell run by the inline driver, never interrupted: what
    the interrupted runs must equal byte for byte."""
    out = os.path.join(folder, "uninterrupted")
    command = [sys.executable, os.path.join(os.path.dirname(TESTS), "reproduce_figure4.py")]
    command += [*QUICK_FINAL, "--regimes", "high", "--out-dir", out]
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": ""}  # compiled afresh
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    return {"run": done, "prefix": cell_prefix(out, "high")}


# test -> the scenarios it takes results of
SCENARIOS = {
    "test_a_cancelled_job_slurm_forgot_is_resumed_by_the_restarted_driver": (
        forgotten,
        uninterrupted,
    ),
    "test_a_job_cancelled_and_forgotten_between_two_looks_is_reported_not_awaited": (forgotten,),
    "test_a_chunk_longer_than_the_warning_still_finishes": (stalled, uninterrupted),
    "test_killed_jobs_are_retried_and_a_cell_that_keeps_failing_is_reported": (killed,),
    "test_two_drivers_released_at_once_on_one_folder_submit_once": (two_at_once,),
}


def start(tests: set[str] | None) -> None:
    """Start the scenarios of the selected tests (every one without a selection), once each; a
    parallel session's controller posts each result for the workers (`tests/background.py`)."""
    for test, scenarios in SCENARIOS.items():
        for scenario in scenarios if tests is None or test in tests else ():
            name = scenario.__name__
            if name not in FUTURES:
                folder = tempfile.mkdtemp(prefix=f"slurm_{name}_")
                FUTURES[name] = POOL.submit(scenario, folder)
                if background.hosting():
                    FUTURES[name].add_done_callback(lambda done, name=name: post(name, done))


def post(name: str, done: concurrent.futures.Future) -> None:
    if not done.cancelled():
        background.post(name, done.exception() or done.result())


def result(test: str, scenario=None) -> dict:
    """The result of the test's (first) scenario: from the controller in a parallel session,
    else from this process, started now when the session did not."""
    name = (scenario or SCENARIOS[test][0]).__name__
    if background.hosted_elsewhere():
        return background.wait_for(name, timeout=TIMEOUT)
    start({test})
    return FUTURES[name].result(timeout=TIMEOUT)


def stop() -> None:
    """Stop the drivers still running and cancel the jobs they recorded."""
    STOPPING.set()
    for process in DRIVERS:
        if process.poll() is None:
            process.kill()
    jobs = [job_id for folder in FOLDERS for job_id in recorded_ids(folder)]
    if jobs:
        subprocess.run(["scancel", *jobs], check=False, capture_output=True)
    POOL.shutdown(wait=False, cancel_futures=True)
