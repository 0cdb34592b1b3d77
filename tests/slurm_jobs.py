"""SLURM jobs for the tests on the one-node cluster (`tests/test_slurm.py`); the jobs import
this module by name, so it holds nothing but what they run and how they are submitted.

A long run costs the 2-core test machine little when it waits rather than computes:
`SlowTrainingJob` is the driver's own `TrainingJob` (same run, same signals, same requeue)
whose run sleeps after each chunk, so that it needs minutes of wall time and seconds of CPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import background
import slurm_scenarios
import submitit

from figure4 import jobs
from training import experiment

TESTS = os.path.dirname(os.path.abspath(__file__))
# The time-limit test's run: 180 chunks, each followed by a second's sleep: about three
# minutes under a one-minute limit.
TIME_LIMIT_RUN = {"num_steps": 3600, "eval_frequency": 20, "training_start_time": 0}
BACKGROUND: dict = {}  # the session's background job: handle, config, prefix


def cluster_answers() -> bool:
    """A SLURM cluster takes jobs here: `sbatch` exists and `sinfo` answers."""
    if shutil.which("sbatch") is None:
        return False
    done = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20)
    return done.returncode == 0 and bool(done.stdout.strip())


class SlowTrainingJob(jobs.TrainingJob):
    """`TrainingJob` whose run sleeps `pause` seconds after each chunk."""

    def __init__(self, pause: float):
        self.pause = pause

    def __call__(self, *args, **kwargs):
        show = experiment.show_progress

        def show_then_wait(*a, **k):
            show(*a, **k)
            time.sleep(self.pause)

        experiment.show_progress = show_then_wait
        return super().__call__(*args, **kwargs)


class FaultyTrainingJob(jobs.TrainingJob):
    """`TrainingJob` with the faults a cluster brings, for the driver's tests: its run sleeps
    `pause` seconds after each chunk; once SLURM has warned it (SIGUSR2), the chunk it is in
    takes `stall` seconds more (a chunk longer than the warning); and a cell named in `deaths`
    kills itself with SIGKILL on that many first tries, before any checkpoint (counted in
    `<prefix>.tries`)."""

    def __init__(self, pause: float = 0.0, stall: float = 0.0, deaths: dict | None = None):
        self.pause, self.stall, self.deaths = pause, stall, deaths or {}

    def __call__(self, agent, raw, prefix, *args, **kwargs):
        tries = count_try(prefix + ".tries")
        if tries <= self.deaths.get(os.path.basename(prefix), 0):
            os.kill(os.getpid(), signal.SIGKILL)
        show, record, handle = (
            experiment.show_progress,
            experiment.record_evaluation,
            experiment.StopSignals._handle,
        )
        warned = []

        def show_then_wait(*a, **k):
            show(*a, **k)
            time.sleep(self.pause)

        def record_then_stall(*a, **k):
            if warned:
                time.sleep(self.stall)
            record(*a, **k)

        def note_warning(stop, signum, frame):
            warned.append(signum)
            handle(stop, signum, frame)

        experiment.show_progress = show_then_wait
        experiment.record_evaluation = record_then_stall
        experiment.StopSignals._handle = note_warning
        return super().__call__(agent, raw, prefix, *args, **kwargs)


def count_try(path: str) -> int:
    """This try's number (1 for the first), counted in `path`."""
    try:
        with open(path) as f:
            tries = int(f.read() or 0) + 1
    except FileNotFoundError:
        tries = 1
    with open(path, "w") as f:
        f.write(str(tries))
    return tries


def options(minutes: int | None = None, signal_delay: int = 5) -> jobs.Options:
    """SLURM options for the test cluster: no GPUs, one CPU per job (two jobs at once)."""
    return jobs.Options("slurm", 0, 1, minutes, 0, 1, None, None, 4, signal_delay, 2.0, False)


def submit(folder: str, job, raw: dict, prefix: str, minutes: int | None = None):
    """Submit `job` (a `TrainingJob`) of ER on `raw` into `prefix`; its log under `folder`."""
    paths = [TESTS, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)  # the job imports us
    executor = jobs.make_executor(options(minutes), os.path.join(folder, "%j"))
    return executor.submit(job, "ER", raw, prefix, 0, False, False)


def wait_for_result(handle, timeout: float):
    """The job's result once its result file is written (no `sacct` on the test cluster)."""
    deadline = time.time() + timeout
    while not handle.paths.result_pickle.exists():
        assert time.time() < deadline, f"job {handle.job_id} gave no result in {timeout} s"
        time.sleep(1.0)
    return handle.result()


def start_background(raw: dict, tests: set[str] | None = None) -> None:
    """Submit the time-limit test's job and start the driver's scenarios
    (`slurm_scenarios.py`) of the selected `tests` (all without a selection), if a cluster
    answers (see `conftest.py`)."""
    if not cluster_answers():
        return
    if tests is None or "test_a_job_three_times_its_time_limit_finishes_through_requeues" in tests:
        folder = tempfile.mkdtemp(prefix="slurm_time_limit_")
        prefix = os.path.join(folder, "run")
        logs = os.path.join(folder, "logs")
        handle = submit(logs, SlowTrainingJob(1.0), raw, prefix, minutes=1)
        BACKGROUND.update(handle=handle, raw=raw, prefix=prefix)
        if background.hosting():  # the workers rebuild the handle from its id and log folder
            posted = (handle.job_id, os.path.join(logs, "%j"), raw, prefix)
            background.post("time_limit_job", posted)
    slurm_scenarios.start(tests)


def background_job():
    """(handle, config, prefix) of the session's background job."""
    if background.hosted_elsewhere():
        job_id, logs, raw, prefix = background.wait_for("time_limit_job", timeout=120)
        return submitit.SlurmJob(folder=logs, job_id=job_id), raw, prefix
    return BACKGROUND["handle"], BACKGROUND["raw"], BACKGROUND["prefix"]


def cancel_background() -> None:
    """A background job or scenario still running when the session ends (a test selection that
    skipped its test) is stopped, not left to run."""
    if BACKGROUND and not BACKGROUND["handle"].paths.result_pickle.exists():
        subprocess.run(["scancel", BACKGROUND["handle"].job_id], check=False)
    slurm_scenarios.stop()


def read_records(out_dir) -> dict:
    """The final stage's SLURM jobs as the driver recorded them."""
    return jobs.read_records(jobs.records_path(str(out_dir), "final"))
