"""Running a stage's Figure 4 jobs (`run_jobs`): one after another in this process (`inline`), as
local processes (`local`), or as SLURM jobs (`slurm`), the last two submitted through submitit
and watched here until each is done, failed or out of retries.

Every executor runs the same job function, `jobs.TrainingJob`, which trains through
`experiment.run` and goes on from the job's checkpoint when an earlier try was interrupted.

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
Before the first `sbatch` the request is checked against `sinfo`, and one driver works on a
folder at a time (both `figure4/cluster.py`).
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Any, NamedTuple

import submitit

from figure4 import jobs as figure4_jobs
from figure4 import plan
from figure4.cluster import RequestError, refusal_line
from figure4.jobs import (
    DriverStoppedError,
    Options,
    failure_line,
    job_arguments,
    job_done,
    make_executor,
    read_records,
    records_path,
    run_inline,
    stop_on_signals,
    write_records,
)
from figure4.plan import Job
from training import checkpoint, paths, provenance, results
from training.files import write_atomic

# A job out of the queue without a result at two looks in a row, GONE_GRACE_S apart, has ended:
# the second look gives a result file on a shared filesystem a moment to show.
GONE_LOOKS = 2
GONE_GRACE_S = 5.0
FILE_LOOK_S = 5.0  # how often the driver looks for result files between two looks at squeue
SUMMARY_EVERY_S = 600  # the stage's summary line: on every change, and at least this often
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
            handles = executor.map_array(figure4_jobs.TrainingJob(), *zip(*arguments, strict=True))
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
