"""Where the Figure 4 jobs run: one after another in this process (`inline`), as local processes
(`local`), or as SLURM jobs (`slurm`), the last two through submitit.

Every executor runs the same job function, `TrainingJob`, which trains through `experiment.run`
and goes on from the job's checkpoint when an earlier try was interrupted. submitit pickles it
and its plain arguments (the config itself, not a file), so every job runs the same code path.

What happens to a job that is stopped:
- SLURM's warning before the time limit (SIGUSR2, submitit's signal) or a preemption (SIGTERM):
  the run writes its checkpoint at the end of the chunk it is in and stops; the job then asks
  submitit to requeue it (submitit's checkpoint/requeue protocol), and the requeued job resumes.
  The driver keeps waiting for it.
- The driver stopped (SIGINT, SIGTERM): local jobs are stopped with it (each checkpoints);
  SLURM jobs go on, and the driver records them (`logs/<stage>/submitted.json`), so the same
  command started again waits on them instead of submitting them twice.
The driver polls the jobs itself (`squeue` on SLURM, which needs no accounting) and prints one
line per change of a job's state.
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

LOCAL_NO_LIMIT_MIN = 60 * 24 * 365  # submitit's local executor kills jobs after 2 min otherwise
SLURM_DEFAULT_MIN = 24 * 60
SLURM_MAX_REQUEUES = 100  # submitit's default, 3, would end a long run after three time limits
GONE_POLLS = 3  # a job out of the queue without a result this many looks in a row has failed
STOP_WAIT_S = 600  # how long stopped local jobs get to write their checkpoints
# SLURM states of a job that is still queued or running (a requeued job passes through them).
ACTIVE = frozenset(
    [
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "SUSPENDED",
        "PREEMPTED",
    ]
)


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
        self, agent: str, raw: dict, prefix: str, seed: int, quiet=True, accept_change=False
    ) -> str:
        """Returns what the job did, for the driver's log."""
        flags = dict(seed=seed, resume=True, quiet=quiet, accept_version_change=accept_change)
        try:
            written = AGENTS[agent].run(raw, prefix, **flags)
        except RunInterruptedError as error:
            print(error, file=sys.stderr, flush=True)  # the job's log says how it stopped
            if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
                requeue()
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


def job_arguments(job: Job, options: Options, quiet: bool) -> tuple:
    return job.cell.agent, job.raw, job.prefix, options.seed, quiet, options.accept_version_change


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
    # The job function is pickled by reference (module `figure4.executors`): the job's Python,
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


class SchedulerError(Exception):
    """`squeue` did not answer (a busy or restarting controller): the line says so."""


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """job id -> its SLURM state, from `squeue` (which needs no accounting database; finished
    jobs stay listed for a few minutes). A job SLURM no longer knows is absent. Raises
    `SchedulerError` when squeue fails: then nothing is known, not that every job is gone."""
    if not job_ids:
        return {}
    command = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(job_ids)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SchedulerError(f"squeue: {error}") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise SchedulerError(f"squeue: {why}")
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.partition("|")
        states[job_id.strip()] = state.strip()
    return states


def reattach(jobs: list[Job], options: Options, out_dir: str) -> tuple[list, list[Job]]:
    """The SLURM jobs an earlier driver submitted for `jobs` that are still queued or running
    (a restarted driver waits on them rather than submit them again), and the jobs to submit."""
    if options.executor != "slurm":
        return [], jobs
    records = read_records(records_path(out_dir, jobs[0].stage))
    recorded = {job.prefix: records[job.prefix] for job in jobs if job.prefix in records}
    try:
        states = slurm_states([record["job_id"] for record in recorded.values()])
    except SchedulerError as error:  # submitting now could run a job twice
        raise SchedulerError(
            f"{jobs[0].stage}: cannot tell whether the jobs an earlier driver submitted still "
            f"run ({error}); run the same command again when squeue answers"
        ) from None
    attached, to_submit = [], []
    for job in jobs:
        record = recorded.get(job.prefix)
        state = states.get(record["job_id"]) if record else None
        if state in ACTIVE:
            handle = submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"])
            print(
                f"{job.stage} {job.cell.name}: job {handle.job_id} of an earlier driver is "
                f"{state}: waiting on it, not submitting it again",
                flush=True,
            )
            attached.append((job, handle))
        else:
            to_submit.append(job)
    return attached, to_submit


def submit(jobs: list[Job], options: Options, out_dir: str) -> list:
    """Submit `jobs` (one SLURM job array, or local processes) and record them."""
    folder = os.path.join(out_dir, "logs", jobs[0].stage, "%j")
    executor = make_executor(options, folder)
    arguments = [job_arguments(job, options, quiet=False) for job in jobs]
    handles = executor.map_array(TrainingJob(), *zip(*arguments, strict=True))
    if options.executor == "slurm":  # first thing: a driver killed now must find them again
        path = records_path(out_dir, jobs[0].stage)
        records = read_records(path)
        for job, handle in zip(jobs, handles, strict=True):
            records[job.prefix] = {"job_id": handle.job_id, "folder": folder}
        write_records(path, records)
    names = ", ".join(job.cell.name for job in jobs)
    print(f"{jobs[0].stage}: {options.executor} jobs {handles[0].job_id}...: {names}", flush=True)
    return list(zip(jobs, handles, strict=True))


def job_states(entries: list, executor: str) -> dict[str, str]:
    handles = [handle for _, handle in entries]
    if executor == "slurm":
        return slurm_states([handle.job_id for handle in handles])
    return {handle.job_id: handle.state for handle in handles}  # RUNNING, FINISHED, ...


def wait(entries: list, options: Options) -> list[str]:
    """Wait for every job: one line per change of a job's state; a job is done when its result
    is written. A job that left the queue without a result has failed."""
    pending, failures = list(entries), []
    shown, gone, unanswered = {}, {}, None
    while pending:
        try:
            states = job_states(pending, options.executor)
        except SchedulerError as error:  # wait for the controller; a job's result still counts
            if unanswered is None:
                print(f"{error}; waiting for it to answer", flush=True)
            unanswered, states = str(error), None
        else:
            if unanswered is not None:
                print("squeue answers again", flush=True)
            unanswered = None
        for job, handle in list(pending):
            name = f"{job.stage} {job.cell.name}"
            if handle.paths.result_pickle.exists():
                pending.remove((job, handle))
                try:
                    job_done(job, handle.result())
                except Exception as error:
                    log = handle.paths.stderr
                    failures.append(f"{name}: failed: {failure_line(error)} (log: {log})")
                continue
            if states is None:
                continue
            state = states.get(handle.job_id, "gone")
            gone[job.prefix] = 0 if state in ACTIVE else gone.get(job.prefix, 0) + 1
            if gone[job.prefix] >= GONE_POLLS:
                pending.remove((job, handle))
                failures.append(
                    f"{name}: job {handle.job_id} left the queue without a result ({state}: "
                    f"cancelled, killed or failed to start; log: {handle.paths.stderr})"
                )
                continue
            if shown.get(job.prefix) != state:
                shown[job.prefix] = state
                print(f"{name}: job {handle.job_id} {state}", flush=True)
        if pending:
            time.sleep(options.poll)
    return failures


def stop_local_jobs(entries: list) -> int:
    """Stop the driver's local jobs: SIGTERM to each job's submitit controller, which passes it
    on; each run writes its checkpoint at its chunk's end and exits. Returns how many ran."""
    running = [handle for _, handle in entries if handle.state == "RUNNING"]
    for handle in running:
        os.kill(int(handle.job_id), signal.SIGTERM)  # a local job's id is its controller's pid
    deadline = time.time() + STOP_WAIT_S
    while any(handle.state == "RUNNING" for handle in running) and time.time() < deadline:
        time.sleep(0.2)
    for handle in running:
        if handle.state == "RUNNING":
            os.kill(int(handle.job_id), signal.SIGKILL)
    return len(running)


def run_submitit(jobs: list[Job], options: Options, out_dir: str) -> list[str]:
    """Submit through submitit (a restarted driver first reattaches to its SLURM jobs) and wait.
    The local executor starts every job it is given at once, so it gets `--parallel` at a
    time. SIGINT or SIGTERM stops local jobs with the driver and leaves SLURM jobs running."""
    attached, to_submit = reattach(jobs, options, out_dir)
    group = options.parallel if options.executor == "local" else max(1, len(to_submit))
    failures, entries = [], list(attached)
    try:
        for start in range(0, len(to_submit), group):
            entries += submit(to_submit[start : start + group], options, out_dir)
            if options.executor == "local":  # each group before the next
                failures += wait(entries, options)
                entries = []
        return failures + wait(entries, options)
    except DriverStoppedError as stopped:
        if options.executor == "local":
            count = stop_local_jobs(entries)
            line = f"{stopped}: stopped {count} local jobs, each after writing its checkpoint"
        else:
            ids = ", ".join(handle.job_id for _, handle in entries)
            line = f"{stopped}: SLURM jobs {ids or '(none)'} go on; the same command waits on them"
        message = f"{line}; run the same command again to go on"
        raise DriverStoppedError(message, stopped.signum) from None


def run_jobs(jobs: list[Job], options: Options, out_dir: str) -> list[str]:
    """Run `jobs` with the chosen executor; returns one line per failed job. Raises
    `DriverStoppedError` when the driver is stopped."""
    with stop_on_signals():
        if options.executor == "inline":
            return run_inline(jobs, options)
        return run_submitit(jobs, options, out_dir)
