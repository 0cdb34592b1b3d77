"""A Figure 4 job and where it runs: the job function (`TrainingJob`, which trains through
`experiment.run`, goes on from the job's checkpoint, and under SLURM requeues itself through
submitit when warned or preempted), the driver's `Options`, running jobs one after another in
this process (`inline`), the submitit executors of `local` and `slurm`, and the driver's records
of its SLURM jobs (`logs/<stage>/submitted.json`). Watching submitted jobs is
`figure4/executors.py`; the checks against the cluster are `figure4/cluster.py`.

submitit pickles the job function and its plain arguments (the config itself, not a file), so
every executor runs the same code path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import submitit

from agent_registry import AGENTS, ROOT
from figure4.plan import Job
from training import checkpoint, paths
from training.experiment import RunError, RunInterruptedError
from training.files import write_atomic
from training.trackers import Trackers

LOCAL_NO_LIMIT_MIN = 60 * 24 * 365  # submitit's local executor kills jobs after 2 min otherwise
SLURM_DEFAULT_MIN = 24 * 60
SLURM_MAX_REQUEUES = 100  # submitit's default, 3, would end a long run after three time limits
DEFAULT_RETRIES = 3  # submissions again of a cell whose job ended with no new checkpoint


class Options(NamedTuple):
    """How and where to run jobs (the driver's flags)."""

    executor: str  # inline, local or slurm
    seed: int
    parallel: int  # local: jobs at once
    time: int | None  # minutes per job
    gpus_per_job: int | None
    cpus_per_job: int
    mem_gb: float | None
    slurm_partition: str | None
    slurm_array_parallelism: int
    signal_delay: int  # seconds before the time limit that SLURM warns a job
    poll: float  # seconds between looks at the jobs' states
    accept_version_change: bool
    retries: int = DEFAULT_RETRIES  # per cell, for jobs that end with no new checkpoint
    trackers: Trackers | None = None  # live curves of every job (`--tensorboard`, `--wandb`)


class DriverStoppedError(Exception):
    """The driver got SIGINT or SIGTERM: the message is the line it prints."""

    def __init__(self, line: str, signum: int):
        super().__init__(line)
        self.signum = signum


class TrainingJob(submitit.helpers.Checkpointable):
    """One training run of a cell (a grid run for tune) into the job's prefix, going on from
    `<prefix>.ckpt` when an earlier try was interrupted. A run that cannot start raises its
    `RunError`, so the other jobs of an inline stage go on. `checkpoint` (submitit's protocol)
    is the same call: the requeued job resumes from the run's checkpoint."""

    def __call__(
        self,
        agent: str,
        raw: dict,
        prefix: str,
        seed: int,
        quiet=True,
        accept_change=False,
        trackers: Trackers | None = None,
    ) -> str:
        """Returns what the job did, for the driver's log. `trackers`: where its curves go live,
        continuing its earlier tries' runs."""
        flags = dict(seed=seed, resume=True, quiet=quiet, accept_version_change=accept_change)
        flags["trackers"] = trackers
        try:
            written = AGENTS[agent].run(raw, prefix, **flags)
        except RunInterruptedError as error:
            print(error, file=sys.stderr, flush=True)  # the job's log says how it stopped
            if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
                if error.signum == signal.SIGUSR2 or job_runs_on():
                    requeue()
                print(
                    "SLURM is ending this job (scancel, its time limit, its own requeue): "
                    "left to SLURM, not requeued",
                    file=sys.stderr,
                    flush=True,
                )
                sys.exit(-1)
            raise
        if written.chunks_run == 0:
            return "finished already: its .out written again from its checkpoint"
        return "done"


def requeue() -> None:
    """Hand a stopped run (its checkpoint written) to submitit's own handler of its signal,
    which calls `TrainingJob.checkpoint`, requeues the job with `scontrol requeue` and exits
    without a result, so the driver goes on waiting. When SLURM requeues or cancels the job
    itself (a preemption, `scontrol requeue`, `scancel`), scontrol may refuse; the job exits
    all the same, and SLURM restarts it or the driver reports it gone."""
    handler = signal.getsignal(signal.SIGUSR2)
    if callable(handler):
        try:
            handler(signal.SIGUSR2, None)
        except subprocess.SubprocessError as error:
            print(f"scontrol requeue: {error}; leaving the job to SLURM", file=sys.stderr)
    sys.exit(-1)


def job_runs_on() -> bool:
    """Whether SLURM still lists this job as running: a SIGTERM it sends while it ends a job
    (`scancel`, a kill at the time limit, `scontrol requeue`) leaves the job COMPLETING, and
    then the job must not requeue itself (a cancelled job would come back). A preemption's
    SIGTERM to a running job, or no answer, requeues it."""
    job_id = submitit.JobEnvironment().job_id
    command = ["squeue", "-h", "-j", job_id, "-o", "%T"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return True
    return done.returncode != 0 or done.stdout.strip() in ("", "RUNNING")


def job_arguments(job: Job, options: Options, quiet: bool) -> tuple:
    trackers = options.trackers and options.trackers._replace(group=tracker_group(job))
    return (
        *(job.cell.agent, job.raw, job.prefix, options.seed, quiet),
        *(options.accept_version_change, trackers),
    )


def tracker_group(job: Job) -> str:
    """A job's runs in TensorBoard and W&B: `final/ER_ProcMaze_high/seed_3` and its `mean`, or
    a tune grid's `tune/ER_ProcMaze_high/alpha_adam=5e-05_softmax_temp=0.1` (`trackers.py`)."""
    return f"{job.stage}/{job.cell.name}"


def failure_line(error: BaseException) -> str:
    """The line that says why a job failed: a run's own one line when it is in the error (a
    submitit job's error holds the job's traceback), else the error's last line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(f"{RunError.__module__}.RunError: ") or line.startswith("RunError: "):
            return line.split("RunError: ", 1)[1]
    return lines[-1] if lines else type(error).__name__


def job_done(job: Job, message: str) -> None:
    """A finished job: its line, and a tune grid's checkpoint goes (its training state is up to
    ~19 GB per cell, 110 points x 5 seeds x 100 000 transitions, and select needs only the
    `.out` files)."""
    if job.stage == "tune":
        checkpoint.remove(paths.checkpoint(job.prefix))
    print(f"{job.stage} {job.cell.name}: {message}", flush=True)


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM to the driver raise `DriverStoppedError` while jobs run (a run in
    this process takes them over while it trains: it stops at its chunk's end)."""

    def stop(signum, frame):
        raise DriverStoppedError(f"{signal.Signals(signum).name}: stopping the driver", signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------------------------
# inline
# --------------------------------------------------------------------------------------------


def run_inline(jobs: list[Job], options: Options) -> list[str]:
    failures = []
    for i, job in enumerate(jobs, start=1):
        print(f"{job.stage} {job.cell.name} ({i}/{len(jobs)}): running", flush=True)
        start = time.time()
        try:
            # Not quiet: each job's progress shows (its bar on a terminal, a line per evaluation).
            message = TrainingJob()(*job_arguments(job, options, quiet=False))
        except RunInterruptedError as error:
            raise DriverStoppedError(
                f"{job.stage} {job.cell.name}: {error}; run the same command again to go on",
                error.signum,
            ) from None
        except Exception as error:  # one failed cell must not stop the others
            failures.append(f"{job.stage} {job.cell.name}: failed: {failure_line(error)}")
            continue
        job_done(job, f"{message} in {time.time() - start:.0f} s")
    return failures


# --------------------------------------------------------------------------------------------
# local and slurm, through submitit
# --------------------------------------------------------------------------------------------


def make_executor(options: Options, folder: str) -> submitit.Executor:
    """A submitit executor for `local` or `slurm`."""
    # The job function is pickled by reference (module `figure4.jobs`): the job's Python,
    # started by submitit, must find this project's modules wherever the user launched from.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if ROOT not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *paths])
    if options.executor == "local":
        if options.parallel > 1 and options.gpus_per_job:
            # Jobs sharing a GPU: JAX's default preallocation of 75% of it would fail the second.
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(
            timeout_min=options.time or LOCAL_NO_LIMIT_MIN, gpus_per_node=options.gpus_per_job or 0
        )
        return executor
    executor = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=SLURM_MAX_REQUEUES
    )
    parameters = {
        "name": "figure4",
        "timeout_min": options.time or SLURM_DEFAULT_MIN,
        "gpus_per_node": 1 if options.gpus_per_job is None else options.gpus_per_job,
        "cpus_per_task": options.cpus_per_job,
        "slurm_array_parallelism": options.slurm_array_parallelism,
        "slurm_signal_delay_s": options.signal_delay,
        # Requeued by SLURM itself when preempted, not only when the job asks for it.
        "slurm_additional_parameters": {"requeue": True},
    }
    if options.slurm_partition:
        parameters["slurm_partition"] = options.slurm_partition
    if options.mem_gb:
        parameters["mem_gb"] = options.mem_gb
    executor.update_parameters(**parameters)
    return executor


def records_path(out_dir: str, stage: str) -> str:
    return os.path.join(out_dir, "logs", stage, "submitted.json")


def read_records(path: str) -> dict:
    """prefix -> {'job_id', 'folder'} of the SLURM jobs a driver submitted ({} without any)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_records(path: str, records: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, lambda f: f.write(json.dumps(records, indent=1).encode()))
