"""Where the Figure 4 jobs run: one after another in this process (`inline`), as local processes
(`local`), or as SLURM jobs (`slurm`), the last two through submitit.

Every executor runs the same job function, `run_job`, which trains through `experiment.run`
and goes on from the job's checkpoint when an earlier try was interrupted. submitit pickles it
and its plain arguments (the config itself, not a file), so every job runs the same code path.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import submitit

from agent_registry import AGENTS, ROOT
from figure4.plan import Job
from training import checkpoint
from training.experiment import RunError

LOCAL_NO_LIMIT_MIN = 60 * 24 * 365  # submitit's local executor kills jobs after 2 min otherwise
SLURM_DEFAULT_MIN = 24 * 60


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


def run_job(agent: str, raw: dict, prefix: str, seed: int, quiet: bool = True) -> str:
    """One training run (a grid run for tune) of `agent` on config `raw` into `prefix`, going
    on from `<prefix>.ckpt` when an earlier try of this job was interrupted. A run that cannot
    start raises `RunError`, so the other jobs of an inline stage go on."""
    AGENTS[agent].run(raw, prefix, seed=seed, resume=True, quiet=quiet)
    return prefix


def job_arguments(job: Job, seed: int, quiet: bool) -> tuple:
    return job.cell.agent, job.raw, job.prefix, seed, quiet


def failure_line(error: BaseException) -> str:
    """The line that says why a job failed: a run's own one line when it is in the error (a
    submitit job's error holds the job's traceback), else the error's last line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(f"{RunError.__module__}.RunError: ") or line.startswith("RunError: "):
            return line.split("RunError: ", 1)[1]
    return lines[-1] if lines else type(error).__name__


def job_done(job: Job, message: str) -> None:
    """A finished tune job's checkpoint goes: a grid's training state is up to ~19 GB per cell
    (110 points x 5 seeds x 100 000 transitions), and select needs only the `.out` files."""
    if job.stage == "tune":
        checkpoint.remove(job.prefix + ".ckpt")
    print(f"{job.stage} {job.cell.name}: {message}", flush=True)


def run_inline(jobs: list[Job], options: Options) -> list[str]:
    failures = []
    for i, job in enumerate(jobs, start=1):
        print(f"{job.stage} {job.cell.name} ({i}/{len(jobs)}): running", flush=True)
        start = time.time()
        try:
            run_job(*job_arguments(job, options.seed, quiet=True))
        except Exception as error:  # one failed cell must not stop the others
            failures.append(f"{job.stage} {job.cell.name}: failed: {failure_line(error)}")
            continue
        job_done(job, f"done in {time.time() - start:.0f} s")
    return failures


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
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    parameters = {
        "name": "figure4",
        "timeout_min": options.time or SLURM_DEFAULT_MIN,
        "gpus_per_node": 1 if options.gpus_per_job is None else options.gpus_per_job,
        "cpus_per_task": options.cpus_per_job,
        "slurm_array_parallelism": options.slurm_array_parallelism,
    }
    if options.slurm_partition:
        parameters["slurm_partition"] = options.slurm_partition
    if options.mem_gb:
        parameters["mem_gb"] = options.mem_gb
    executor.update_parameters(**parameters)
    return executor


def run_submitit(jobs: list[Job], options: Options, out_dir: str) -> list[str]:
    """Submit through submitit and wait on each job's result. SLURM gets one job array; the
    local executor starts every job it is given at once, so it gets `--parallel` at a time."""
    folder = os.path.join(out_dir, "logs", jobs[0].stage, "%j")
    executor = make_executor(options, folder)
    group = options.parallel if options.executor == "local" else len(jobs)
    failures = []
    for start in range(0, len(jobs), group):
        batch = jobs[start : start + group]
        arguments = [job_arguments(job, options.seed, quiet=False) for job in batch]
        handles = executor.map_array(run_job, *zip(*arguments, strict=True))
        names = ", ".join(job.cell.name for job in batch)
        print(
            f"{batch[0].stage}: {options.executor} jobs {handles[0].job_id}...: {names}", flush=True
        )
        for job, handle in zip(batch, handles, strict=True):
            try:
                handle.result()
            except Exception as error:
                failures.append(
                    f"{job.stage} {job.cell.name}: failed: {failure_line(error)} "
                    f"(log: {handle.paths.stderr})"
                )
                continue
            job_done(job, "done")
    return failures


def run_jobs(jobs: list[Job], options: Options, out_dir: str) -> list[str]:
    """Run `jobs` with the chosen executor; returns one line per failed job."""
    if options.executor == "inline":
        return run_inline(jobs, options)
    return run_submitit(jobs, options, out_dir)
