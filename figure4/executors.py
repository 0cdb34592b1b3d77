"""Where the Figure 4 jobs run: one after another in this process (`inline`), as local processes
(`local`), or as SLURM jobs (`slurm`), the last two through submitit.

Every executor runs the same job function, `TrainingJob`, which trains through `experiment.run`
and goes on from the job's checkpoint when an earlier try was interrupted. submitit pickles it
and its plain arguments (the config itself, not a file), so every job runs the same code path.

What happens to a job that is stopped:
- SLURM's warning before the time limit (SIGUSR2, submitit's signal) or a preemption (SIGTERM):
  the run writes its checkpoint at the end of the chunk it is in and stops; the job then asks
  submitit to requeue it (submitit's checkpoint/requeue protocol), and the requeued job resumes.
  A SIGTERM while SLURM ends the job (`scancel`, a kill at the time limit) is not requeued.
- A job that leaves the queue without a result (cancelled, killed, a chunk longer than the
  warning, a node lost): its files decide. A finished `.out` is done; a checkpoint newer than
  its submission is submitted again and resumed; no new checkpoint is retried `--retries`
  times, then reported with its log's last lines while the other cells go on.
- The driver stopped (SIGINT, SIGTERM): local jobs are stopped with it (each checkpoints);
  SLURM jobs go on, and the driver records them (`logs/<stage>/submitted.json`), so the same
  command started again watches them instead of submitting them twice; a recorded job SLURM no
  longer lists is gone, and its files decide as above.
The driver polls the jobs itself (`squeue` on SLURM, which needs no accounting; `sacct` only for
the reason a forgotten job ended, where it answers), prints one line per change of a job's
state with its step, and keeps `<out-dir>/status.json` for `reproduce_figure4.py --status`.
Before the first `sbatch` the request is checked against `sinfo`; one driver works on a folder
at a time (`driver_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, NamedTuple

import submitit

from agent_registry import AGENTS, ROOT
from figure4 import plan
from figure4.plan import Job
from training import checkpoint, paths, provenance, results
from training.experiment import RunError, RunInterruptedError
from training.files import write_atomic
from training.trackers import Trackers

LOCAL_NO_LIMIT_MIN = 60 * 24 * 365  # submitit's local executor kills jobs after 2 min otherwise
SLURM_DEFAULT_MIN = 24 * 60
SLURM_MAX_REQUEUES = 100  # submitit's default, 3, would end a long run after three time limits
# A job out of the queue without a result at two looks in a row, GONE_GRACE_S apart, has ended:
# the second look gives a result file on a shared filesystem a moment to show.
GONE_LOOKS = 2
GONE_GRACE_S = 5.0
FILE_LOOK_S = 5.0  # how often the driver looks for result files between two looks at squeue
DEFAULT_RETRIES = 3  # submissions again of a cell whose job ended with no new checkpoint
SUMMARY_EVERY_S = 600  # the stage's summary line: on every change, and at least this often
LOCK_FILE = "driver.lock"  # under --out-dir: one driver per folder
STATUS_FILE = "status.json"  # under --out-dir: the stage's jobs, for `--status`
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


# --------------------------------------------------------------------------------------------
# One driver per --out-dir
# --------------------------------------------------------------------------------------------


class LockedError(Exception):
    """Another driver works on the same `--out-dir`: the line names it."""


def holder_of(path: str) -> str:
    """'host H, pid P' of the driver that holds the lock, as it wrote it (it may be writing)."""
    for _ in range(50):
        try:
            with open(path) as f:
                holder = json.load(f)
            return f"host {holder['host']}, pid {holder['pid']}, since {holder['since']}"
        except (OSError, ValueError, KeyError):
            time.sleep(0.02)
    return "unknown holder"


@contextlib.contextmanager
def driver_lock(out_dir: str):
    """Hold `<out_dir>/driver.lock` while the driver runs: a second driver on the same folder
    raises `LockedError` at once. The lock is the kernel's (`flock`), so a driver that died,
    however it died, holds none: its stale file does not block."""
    path = os.path.join(out_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockedError(
            f"--out-dir {out_dir}: another driver works on it ({holder_of(path)}); let it "
            "finish or stop it, then run this command again"
        ) from None
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, harmless


# --------------------------------------------------------------------------------------------
# The request checked against the cluster before the first sbatch
# --------------------------------------------------------------------------------------------


class RequestError(Exception):
    """The jobs' request cannot run on this cluster, or sbatch refused it: the line says which
    flag and what would fit."""


class Node(NamedTuple):
    """One node of one partition, as `sinfo -N` lists it."""

    partition: str
    default: bool  # the partition a job without --partition goes to
    cpus: int
    mem_mb: int
    gpus: int
    limit_min: int | None  # the partition's time limit; None: infinite


def slurm_minutes(text: str) -> int | None:
    """SLURM's time ('infinite', 'MM', 'MM:SS', 'HH:MM:SS', 'D-HH[:MM[:SS]]') in whole minutes
    (seconds round down); None for no limit."""
    if text.strip().lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = text.strip().rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        parts += [0] * (3 - len(parts))
        hours, minutes, _ = parts
    else:
        hours, minutes = ([0, *parts] if len(parts) < 3 else parts)[:2]
        if len(parts) == 1:
            hours, minutes = 0, parts[0]
    return int(days or 0) * 1440 + hours * 60 + minutes


def gres_gpus(text: str) -> int:
    """GPUs in a node's generic resources ('gpu:a100:4(S:0-1),shard:8' -> 4; '(null)' -> 0)."""
    total = 0
    for item in text.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu":
            total += int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
    return total


def parse_sinfo(text: str) -> list[Node]:
    """`sinfo -h -N -o '%P|%c|%m|%G|%l'` lines as `Node`s."""
    nodes = []
    for line in text.splitlines():
        if line.count("|") != 4:
            continue
        partition, cpus, mem, gres, limit = (field.strip() for field in line.split("|"))
        nodes.append(
            Node(
                partition.rstrip("*"),
                partition.endswith("*"),
                int(cpus.rstrip("+") or 0),
                int(mem.rstrip("+") or 0),
                gres_gpus(gres),
                slurm_minutes(limit),
            )
        )
    return nodes


def request_mismatch(nodes: list[Node], options: Options) -> str | None:
    """The first part of the jobs' request that no node of the partition can give, with the
    value that would fit; None when some node fits it all. `options.gpus_per_job` is set."""
    names = " ".join(sorted({node.partition for node in nodes}))
    partition = options.slurm_partition or next((n.partition for n in nodes if n.default), None)
    if partition is None:
        return f"--slurm-partition: the cluster has no default partition; pass one of: {names}"
    fits = [node for node in nodes if node.partition == partition]
    if not fits:
        return f"--slurm-partition {partition}: no such partition here; the cluster has: {names}"
    wants = (  # flag, wanted, what a node has, how to say it
        ("--cpus-per-job", options.cpus_per_job, lambda n: n.cpus, "{} CPUs"),
        ("--gpus-per-job", options.gpus_per_job, lambda n: n.gpus, "{} GPUs"),
        ("--mem-gb", options.mem_gb or 0, lambda n: math.floor(n.mem_mb / 102.4) / 10, "{} GB"),
    )
    for flag, wanted, has, unit in wants:
        most = max(has(node) for node in fits)
        fits = [node for node in fits if has(node) >= wanted]
        if not fits:
            return (
                f"{flag} {wanted:g}: no node of partition {partition} has "
                f"{unit.format(f'{wanted:g}')} (the most is {most:g}); pass {flag} {most:g} or less"
            )
    limits = [node.limit_min for node in fits]
    limit = None if None in limits else max(limits)
    minutes = options.time or SLURM_DEFAULT_MIN
    if limit is not None and minutes > limit:
        return f"--time {minutes}: partition {partition} allows at most {limit} minutes"
    return None


def fit_to_cluster(options: Options) -> Options:
    """Check the jobs' request against the cluster (`sinfo`) before anything is submitted:
    raises `RequestError` naming the first mismatch. Without `--gpus-per-job`, jobs get one
    GPU where the partition has GPUs and none where it has none. A `sinfo` that does not
    answer leaves the check to sbatch (whose refusal is one line too)."""
    minutes = options.time or SLURM_DEFAULT_MIN
    if options.signal_delay >= minutes * 60:
        raise RequestError(
            f"--signal-delay {options.signal_delay}: not below --time {minutes} minutes "
            f"({minutes * 60} s): the warning would come before the job starts"
        )
    command = ["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%l"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        nodes = parse_sinfo(done.stdout) if done.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        nodes = []
    if not nodes:
        print("sinfo did not answer: the request is left to sbatch to check", flush=True)
        return options._replace(gpus_per_job=options.gpus_per_job or 0)
    if options.gpus_per_job is None:
        partition = options.slurm_partition or next((n.partition for n in nodes if n.default), "")
        has_gpus = any(n.gpus for n in nodes if n.partition == partition)
        options = options._replace(gpus_per_job=1 if has_gpus else 0)
        if not has_gpus:
            print(f"slurm: partition {partition} has no GPUs: jobs run on CPUs", flush=True)
    mismatch = request_mismatch(nodes, options)
    if mismatch:
        raise RequestError(mismatch)
    return options


def refusal_line(error: BaseException) -> str:
    """sbatch's own line from submitit's error ('Batch job submission failed: ...')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return lines[-1] if lines else type(error).__name__


# --------------------------------------------------------------------------------------------
# Watching jobs: squeue, the job's files, and what to do when a job ends without a result
# --------------------------------------------------------------------------------------------


class SchedulerError(Exception):
    """`squeue` did not answer (a busy or restarting controller): the line says so."""


class Seen(NamedTuple):
    """A job as the scheduler lists it."""

    state: str
    started: str  # when its current run started (a requeued job starts again)


def slurm_jobs() -> dict[str, Seen]:
    """job id -> how SLURM lists it, for every job of this user that `squeue` still lists
    (it keeps a finished job for `MinJobAge`; needs no accounting). A job absent from it is
    gone: asking by user, not by id, so that no id SLURM has forgotten makes squeue fail.
    Raises `SchedulerError` when squeue fails: then nothing is known, not that jobs are gone."""
    command = ["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%S"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SchedulerError(f"squeue: {error}") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise SchedulerError(f"squeue: {why}")
    listed = {}
    for line in done.stdout.splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) == 3:
            listed[fields[0]] = Seen(fields[1], fields[2])
    return listed


def job_states(watches: dict, executor: str) -> dict[str, Seen]:
    if executor == "slurm":
        return slurm_jobs()
    return {w.handle.job_id: Seen(w.handle.state, "") for w in watches.values()}


class Reasons:
    """Why a job SLURM no longer lists ended, from `sacct` where accounting answers; where it
    does not, the driver says so once, not per job."""

    def __init__(self):
        self.unanswered = None  # sacct's line once it failed

    def of(self, job_id: str) -> str:
        if self.unanswered is None:
            command = ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=60)
                lines = done.stdout.split() if done.returncode == 0 else []
                why = (done.stderr.strip().splitlines() or ["no record"])[-1]
            except (OSError, subprocess.TimeoutExpired) as error:
                lines, why = [], str(error)
            if lines:
                return lines[-1]
            self.unanswered = why
            print(
                f"sacct: {why}: why a job ended is known only while squeue lists it "
                f"(MinJobAge); the job's files decide what happens next",
                flush=True,
            )
        return "gone from squeue; reason unknown without accounting"


class Watch(NamedTuple):
    """What the driver knows of one submitted job."""

    job: Job
    handle: Any  # submitit's job
    from_step: int  # the checkpoint's step when it was submitted
    resume_from: int = -1  # the step its next run resumes from (-1: from_step)
    state: str = ""  # the state last shown
    started: str = ""  # when the run last seen running started
    step: int = 0  # step reached, from its `.out`
    out_mtime: float = 0.0
    requeues: int = 0
    gone_looks: int = 0
    rate_from: tuple = ()  # (time, step) when this run was first seen running: steps/s


def name_of(job: Job) -> str:
    return f"{job.stage} {job.cell.name}"


def out_step(watch: Watch) -> Watch:
    """The step the job's first `.out` holds (its run writes it after each evaluation)."""
    path = watch.job.outputs[0].path if watch.job.outputs else paths.out(watch.job.prefix)
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        return watch
    if mtime == watch.out_mtime:
        return watch
    try:
        times = results.load_out(path)["metrics"].get(results.TIMES_KEY, [])
    except results.ResultsError:
        return watch
    step = (len(times) * watch.job.raw["eval_frequency"]) if times else 0
    return watch._replace(step=step, out_mtime=mtime)


def ckpt_step(job: Job) -> int:
    return checkpoint.steps_done(paths.checkpoint(job.prefix))


def nth(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix} time"


REQUEUED_STATES = frozenset(["PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"])


def follow(watch: Watch, seen: Seen | None) -> tuple[Watch, list[str]]:
    """An active job's new look: the lines to print (its state and step on a change, a
    requeue, a resume) and what the driver now knows of it."""
    name, job_id, lines = name_of(watch.job), watch.handle.job_id, []
    watch = out_step(watch)._replace(gone_looks=0)
    num_steps = watch.job.raw["num_steps"]
    # A job that ran is requeued when it is queued again, or runs again from a new start (it
    # may pass through COMPLETING, and a look may miss its time in the queue).
    restarted = seen.state == "RUNNING" and seen.started != watch.started
    queued_again = seen.state in REQUEUED_STATES or restarted
    if watch.started and watch.state not in REQUEUED_STATES and queued_again:
        step = ckpt_step(watch.job)  # what the stopped run saved (or, seen late, a bit past it)
        watch = watch._replace(requeues=watch.requeues + 1, resume_from=step)
        lines.append(f"{name}: job {job_id} requeued at step {step} ({nth(watch.requeues)})")
    if seen.state == "RUNNING" and seen.started != watch.started:
        resumed = watch.from_step if watch.resume_from < 0 else watch.resume_from
        if resumed:
            lines.append(f"{name}: job {job_id} resumed from step {resumed}")
        watch = watch._replace(started=seen.started, rate_from=(time.time(), watch.step))
    if seen.state != watch.state:
        lines.append(f"{name}: job {job_id} {seen.state}, step {watch.step} of {num_steps}")
        watch = watch._replace(state=seen.state)
    return watch, lines


def steps_per_second(watch: Watch) -> float:
    if watch.state != "RUNNING" or not watch.rate_from:
        return 0.0
    since, step = watch.rate_from
    return max(0, watch.step - step) / max(time.time() - since, 1e-9)


class Ending(NamedTuple):
    """How a job that is no longer watched ended."""

    kind: str  # "done", "again" (submit it again), "failed"
    line: str  # for the log
    counts: bool = False  # a retry: it ended with no new checkpoint


def ended_with_result(watch: Watch) -> Ending:
    """The job wrote its result: done, or the error it raised."""
    try:
        message = watch.handle.result()
    except Exception as error:
        line = failure_line(error)
        # A run's own refusal (a checkpoint of another version, a file it cannot write) says
        # what to do; running it again would say the same.
        again = "RunError" not in str(error)
        return Ending("again" if again else "failed", f"raised: {line}", again)
    return Ending("done", message)


def ended_without_result(watch: Watch, reason: str, versions: dict, options: Options) -> Ending:
    """A job that left the queue without a result: its files decide. A finished `.out` is done;
    a checkpoint newer than its submission is resumed; else it is retried."""
    job, job_id = watch.job, watch.handle.job_id
    if plan.job_state(job, versions) == plan.FINISHED:
        return Ending("done", f"done (job {job_id} ended {reason} after its last .out)")
    step = ckpt_step(job)
    why = f"job {job_id} ended without a result ({reason})"
    if step > watch.from_step:
        hint = ""
        if "TIMEOUT" in reason:
            hint = (
                f"; the chunk it was in outlasted the {options.signal_delay} s warning before "
                "its time limit (--signal-delay), so it was not requeued"
            )
        return Ending("again", f"{why} at step {step}{hint}")
    return Ending("again", f"{why} with no new checkpoint (step {step})", counts=True)


def log_tail(watch: Watch, lines: int = 5) -> str:
    try:
        with open(watch.handle.paths.stderr, errors="replace") as f:
            tail = [line.rstrip() for line in f.readlines()[-lines:]]
    except OSError:
        return f"no log at {watch.handle.paths.stderr}"
    return f"log {watch.handle.paths.stderr}, last lines:\n    " + "\n    ".join(tail)


def look_at(watch: Watch, listed: dict | None, reasons: Reasons, versions, options):
    """One look at a watched job: (the watch, or None when it ended; its lines; its Ending)."""
    if watch.handle.paths.result_pickle.exists():
        return None, [], ended_with_result(watch)
    if listed is None:  # squeue did not answer: nothing is known
        return watch, [], None
    seen = listed.get(watch.handle.job_id)
    if seen is not None and seen.state in ACTIVE:
        watch, lines = follow(watch, seen)
        return watch, lines, None
    # Out of the queue: a moment for its result file to show (a shared filesystem), then gone.
    watch = watch._replace(gone_looks=watch.gone_looks + 1)
    if watch.gone_looks < GONE_LOOKS:
        return watch, [], None
    if seen is not None:
        reason = seen.state
    elif options.executor == "slurm":
        reason = reasons.of(watch.handle.job_id)
    else:
        reason = "its process ended"
    return None, [], ended_without_result(watch, reason, versions, options)


# --------------------------------------------------------------------------------------------
# The stage's loop: submit, look, resubmit, report
# --------------------------------------------------------------------------------------------


class Tally(NamedTuple):
    done: int
    running: int
    pending: int
    failed: int


def summary_line(stage: str, tally: Tally, rate: float) -> str:
    return (
        f"{stage}: {tally.done} done, {tally.running} running, {tally.pending} pending, "
        f"{tally.failed} failed; {rate:.1f} steps/s summed over running jobs"
    )


def status_path(out_dir: str) -> str:
    return os.path.join(out_dir, STATUS_FILE)


def write_status(out_dir: str, stage: str, tally: Tally, rate: float, rows: list[dict]) -> None:
    """The stage as a second shell reads it (`reproduce_figure4.py --status`)."""
    status = {
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "driver": {"host": socket.gethostname(), "pid": os.getpid()},
        "stage": stage,
        "summary": {**tally._asdict(), "steps_per_second": round(rate, 2)},
        "line": summary_line(stage, tally, rate),
        "jobs": rows,
    }
    write_atomic(status_path(out_dir), lambda f: f.write(json.dumps(status, indent=1).encode()))


def status_lines(out_dir: str) -> list[str]:
    """The status file as lines for a person; one line when there is none."""
    try:
        with open(status_path(out_dir)) as f:
            status = json.load(f)
    except (OSError, ValueError):
        return [f"no status in {out_dir} yet: no driver has run jobs there"]
    driver = status["driver"]
    lines = [f"as of {status['updated']} (driver pid {driver['pid']} on {driver['host']}):"]
    lines.append(status["line"])
    for row in status["jobs"]:
        lines.append(
            f"  {row['cell']}: {row['state']}"
            + (f", job {row['job_id']}" if row.get("job_id") else "")
            + f", step {row['step']} of {row['num_steps']}"
            + (f", requeued {row['requeues']} times" if row.get("requeues") else "")
            + (f", {row['retries']} retries" if row.get("retries") else "")
            + (f": {row['note']}" if row.get("note") else "")
        )
    return lines


def submit(jobs: list[Job], options: Options, out_dir: str) -> list:
    """Submit `jobs` (one SLURM job array, or local processes) and record them. sbatch's
    refusal raises `RequestError` with its line, leaving no file of the try behind."""
    folder = os.path.join(out_dir, "logs", jobs[0].stage, "%j")
    parent = os.path.dirname(folder)
    existed = set(os.listdir(parent)) if os.path.isdir(parent) else None
    executor = make_executor(options, folder)
    arguments = [job_arguments(job, options, quiet=False) for job in jobs]
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's error too
            handles = executor.map_array(TrainingJob(), *zip(*arguments, strict=True))
    except (submitit.core.utils.FailedJobError, subprocess.SubprocessError, OSError) as error:
        remove_new_files(parent, existed)
        raise RequestError(
            f"{jobs[0].stage}: sbatch refused the jobs: {refusal_line(error)}"
        ) from None
    if options.executor == "slurm":  # first thing: a driver killed now must find them again
        path = records_path(out_dir, jobs[0].stage)
        records = read_records(path)
        for job, handle in zip(jobs, handles, strict=True):
            records[job.prefix] = {"job_id": handle.job_id, "folder": folder}
        write_records(path, records)
    names = ", ".join(job.cell.name for job in jobs)
    print(f"{jobs[0].stage}: {options.executor} jobs {handles[0].job_id}...: {names}", flush=True)
    return handles


def remove_new_files(folder: str, existed: set | None) -> None:
    """Remove what a refused submission left in `folder` (submitit's pickles and script), and
    the folders it made when they are empty."""
    if not os.path.isdir(folder):
        return
    for name in set(os.listdir(folder)) - (existed or set()):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    if existed is None:
        for empty in (folder, os.path.dirname(folder)):
            with contextlib.suppress(OSError):
                os.rmdir(empty)


def reattach(jobs: list[Job], options: Options, out_dir: str) -> tuple[dict, list[Job]]:
    """The SLURM jobs an earlier driver submitted for `jobs` that are still queued or running
    (a restarted driver watches them rather than submit them again), and the jobs to submit:
    a recorded job SLURM no longer lists, or lists as ended, is gone, and its files decide
    (`pending_jobs` skipped the finished ones; a checkpoint is resumed)."""
    if options.executor != "slurm":
        return {}, jobs
    records = read_records(records_path(out_dir, jobs[0].stage))
    recorded = {job.prefix: records[job.prefix] for job in jobs if job.prefix in records}
    listed = slurm_jobs_when_answering(options) if recorded else {}
    watches, to_submit = {}, []
    for job in jobs:
        record = recorded.get(job.prefix)
        seen = listed.get(record["job_id"]) if record else None
        if seen is not None and seen.state in ACTIVE:
            handle = submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"])
            print(
                f"{name_of(job)}: job {handle.job_id} of an earlier driver is "
                f"{seen.state}: watching it, not submitting it again",
                flush=True,
            )
            watches[job.prefix] = Watch(job, handle, ckpt_step(job))
            continue
        if record:
            ended = seen.state if seen else "no longer listed by SLURM"
            print(
                f"{name_of(job)}: job {record['job_id']} of an earlier driver ended without "
                f"finishing ({ended}); submitting it again from step {ckpt_step(job)}",
                flush=True,
            )
        to_submit.append(job)
    return watches, to_submit


def slurm_jobs_when_answering(options: Options) -> dict[str, Seen]:
    """`slurm_jobs()`, waiting (one line) while squeue does not answer: submitting before it
    does could run a job twice."""
    said = False
    while True:
        try:
            return slurm_jobs()
        except SchedulerError as error:
            if not said:
                print(f"{error}; waiting for it to answer before submitting", flush=True)
                said = True
            time.sleep(options.poll)


def run_submitit(jobs: list[Job], options: Options, out_dir: str) -> list[str]:
    """Submit through submitit (a restarted driver first reattaches to its SLURM jobs) and
    watch the jobs (`watch_jobs`)."""
    watches, queue = reattach(jobs, options, out_dir)
    return watch_jobs(jobs, watches, queue, options, out_dir)


def watch_jobs(jobs: list[Job], watches: dict, queue: list, options, out_dir: str) -> list[str]:
    """Submit the `queue`d jobs, watch them and the `watches` (prefix -> Watch), submit again a
    job that ended without a result (from its checkpoint; one that made no progress counts as
    a retry, `--retries` per cell), and return one line per cell that failed. The local
    executor runs `--parallel` jobs at a time. SIGINT or SIGTERM stops local jobs with the
    driver and leaves SLURM jobs running."""
    stage = jobs[0].stage
    versions, reasons = provenance.versions(), Reasons()
    retries = {job.prefix: 0 for job in jobs}
    failures, outcomes, done_count = [], {}, 0  # outcomes: prefix -> (state, its last line)
    shown, last_summary, unanswered = None, 0.0, None
    try:
        while watches or queue:
            room = options.parallel - len(watches) if options.executor == "local" else len(queue)
            batch, queue = queue[: max(room, 0)], queue[max(room, 0) :]
            if batch:
                for job, handle in zip(batch, submit(batch, options, out_dir), strict=True):
                    watches[job.prefix] = Watch(job, handle, ckpt_step(job))
            try:
                listed = job_states(watches, options.executor)
            except SchedulerError as error:  # a job's written result still counts
                if unanswered is None:
                    print(f"{error}; waiting for it to answer", flush=True)
                listed, unanswered = None, str(error)
            else:
                if unanswered is not None:
                    print("squeue answers again", flush=True)
                unanswered = None
            for prefix, watch in list(watches.items()):
                new, lines, ending = look_at(watch, listed, reasons, versions, options)
                for line in lines:
                    print(line, flush=True)
                if ending is None:
                    watches[prefix] = new
                    continue
                del watches[prefix]
                name = name_of(watch.job)
                if ending.kind == "done":
                    job_done(watch.job, ending.line)
                    done_count += 1
                    outcomes[prefix] = ("DONE", ending.line)
                    continue
                retries[prefix] += ending.counts
                if ending.kind == "again" and retries[prefix] <= options.retries:
                    again = (
                        f"submitting it again (retry {retries[prefix]} of {options.retries})"
                        if ending.counts
                        else "submitting it again to resume from its checkpoint"
                    )
                    print(f"{name}: {ending.line}; {again}", flush=True)
                    outcomes[prefix] = ("TO SUBMIT", ending.line)
                    queue.append(watch.job)
                    continue
                spent = f" ({options.retries} retries spent)" if ending.counts else ""
                failures.append(f"{name}: failed{spent}: {ending.line}; {log_tail(watch)}")
                outcomes[prefix] = ("FAILED", ending.line)
                print(f"{name}: failed{spent}: {ending.line}; the stage goes on", flush=True)
            tally = Tally(
                done_count,
                sum(w.state == "RUNNING" for w in watches.values()),
                len(queue) + sum(w.state != "RUNNING" for w in watches.values()),
                len(failures),
            )
            rate = sum(steps_per_second(w) for w in watches.values())
            if tally != shown or time.time() - last_summary > SUMMARY_EVERY_S:
                print(summary_line(stage, tally, rate), flush=True)
                shown, last_summary = tally, time.time()
            rows = status_rows(jobs, watches, outcomes, retries)
            write_status(out_dir, stage, tally, rate, rows)
            if watches or queue:
                nap(list(watches.values()), options.poll)
        return failures
    except DriverStoppedError as stopped:
        if options.executor == "local":
            count = stop_local_jobs(list(watches.values()))
            line = f"{stopped}: stopped {count} local jobs, each after writing its checkpoint"
        else:
            ids = ", ".join(w.handle.job_id for w in watches.values())
            line = f"{stopped}: SLURM jobs {ids or '(none)'} go on; the same command watches them"
        message = f"{line}; run the same command again to go on"
        raise DriverStoppedError(message, stopped.signum) from None


def nap(watches: list[Watch], poll: float) -> None:
    """Sleep until the next look at the jobs: `poll` seconds, less when a job's result file
    shows up (looked for every few seconds: a stat, not a query of the controller), and only a
    moment when a job was just seen out of the queue (it is then reported at the next look)."""
    grace = any(watch.gone_looks for watch in watches)
    deadline = time.time() + (min(poll, GONE_GRACE_S) if grace else poll)
    while (left := deadline - time.time()) > 0:
        if any(watch.handle.paths.result_pickle.exists() for watch in watches):
            return
        time.sleep(min(FILE_LOOK_S, left))


def status_rows(jobs: list[Job], watches: dict, outcomes: dict, retries: dict) -> list[dict]:
    """One row per job of the stage for the status file."""
    rows = []
    for job in jobs:
        watch = watches.get(job.prefix)
        outcome, note = outcomes.get(job.prefix, ("", ""))
        rows.append(
            {
                "cell": job.cell.name,
                "job_id": watch.handle.job_id if watch else None,
                "state": (watch.state or "SUBMITTED") if watch else outcome or "TO SUBMIT",
                "step": watch.step if watch else ckpt_step(job),
                "num_steps": job.raw["num_steps"],
                "requeues": watch.requeues if watch else 0,
                "retries": retries.get(job.prefix, 0),
                "note": note,
            }
        )
    return rows


def stop_local_jobs(watches: list) -> int:
    """Stop the driver's local jobs: SIGTERM to each job's submitit controller, which passes it
    on; each run writes its checkpoint at its chunk's end and exits. Returns how many ran."""
    running = [w.handle for w in watches if w.handle.state == "RUNNING"]
    for handle in running:
        os.kill(int(handle.job_id), signal.SIGTERM)  # a local job's id is its controller's pid
    deadline = time.time() + STOP_WAIT_S
    while any(handle.state == "RUNNING" for handle in running) and time.time() < deadline:
        time.sleep(0.2)
    for handle in running:
        if handle.state == "RUNNING":
            os.kill(int(handle.job_id), signal.SIGKILL)
    return len(running)


def run_jobs(jobs: list[Job], options: Options, out_dir: str) -> list[str]:
    """Run `jobs` with the chosen executor; returns one line per failed job. Raises
    `DriverStoppedError` when the driver is stopped."""
    with stop_on_signals():
        if options.executor == "inline":
            return run_inline(jobs, options)
        return run_submitit(jobs, options, out_dir)
