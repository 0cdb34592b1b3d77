"""Figure 4 of the paper from one command: tuning, final runs and the figure, for every cell.

    python reproduce_figure4.py                  # final runs at the table's values, then the figure
    python reproduce_figure4.py --quick          # the same at toy sizes: minutes on a laptop CPU
    python reproduce_figure4.py --estimate       # projected wall time of each stage on this machine
    python reproduce_figure4.py --stage tune select              # grid search, best point per cell
    python reproduce_figure4.py --stage final plot --hyperparameters selected
    python reproduce_figure4.py --executor slurm --slurm-partition gpu --gpus-per-job 1

A cell is an agent × environment × data regime (`figure4/plan.py`, 5 × 3 × 2 = 30), and each
stage runs one job per chosen cell (`--agents`, `--envs`, `--regimes`). Stages (`--stage`, one
or more, always run in this order; default `final plot`):
- tune: one grid run per cell over step size × softmax temperature (default: the powers of two
  the table's values come from, 10 × 11 points), `--tune-seeds` seeds per point;
- select: the best grid point per cell by return averaged over the run and its seeds (95%
  bootstrap interval over seeds, `grids.py`), written as `selected/<cell>.json`;
- final: the config's 30 seeds at the table's values (`--hyperparameters table`, default) or the
  selected ones (`--hyperparameters selected`);
- plot: `figure4.png`, one panel per environment × regime, one line per agent.

Everything lands under `--out-dir`: `tune/` (grid configs and one `.out` per point), `selected/`,
`final/` (or `final_selected/`: each job's config beside its `.out`), `logs/` (submitit's) and
`figure4.png`. A job whose outputs are finished (complete, and holding the job's config) is
skipped, and an interrupted job goes on from its checkpoint, so an interrupted reproduction
continues where it stopped. This module holds the command line and the order of the stages; the
plan of each stage's jobs is `figure4/plan.py`, running and watching them `figure4/executors.py`,
the job itself `figure4/jobs.py`, the checks against the cluster `figure4/cluster.py`, the cost
estimate `figure4/estimate.py` and the figure `figure4/figure.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys

import grids
import scoring
from agent_registry import AGENTS
from figure4 import cluster, estimate, executors, figure, plan
from figure4 import jobs as figure4_jobs
from figure4.plan import ENVIRONMENTS, METRIC, PRESETS, REGIMES, STAGES, Cell, Job, Plan
from training import checkpoint, config, paths, provenance, trackers
from training.files import WriteError, make_writable_dir, write_atomic
from training.flags import MAX_SEED, OneLineErrorParser, number
from training.results import ResultsError

PROG = "reproduce_figure4.py"


class UserError(Exception):
    """A bad flag or missing input: one line on stderr naming it, exit status 2."""


def check_configs(jobs: list[Job]) -> None:
    """Validate every config before any job starts: a bad one is one line, not 30 failed jobs."""
    for job in jobs:
        try:
            config.validate_config(job.raw, AGENTS[job.cell.agent].definition)
        except config.ConfigError as error:
            raise UserError(f"{job.stage} {job.cell.name}: config error: {error}") from None


def write_if_changed(path: str, text: str) -> None:
    """Leave an unchanged file alone, so its time stamp says when it last meant something."""
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, lambda f: f.write(text.encode()))


def done(other_versions: str) -> tuple[str, ...]:
    """The output states that count as finished: another version's too with `keep`."""
    return (plan.FINISHED, plan.OTHER_VERSION) if other_versions == "keep" else (plan.FINISHED,)


def pending_jobs(jobs: list[Job], args) -> list[Job]:
    """The jobs whose outputs are not finished. Outputs of another version of the code or its
    libraries are listed and, as `--other-versions` says, stop the driver (the default), count
    as finished (`keep`), or are run again from step 0 (`redo`)."""
    versions = provenance.versions()
    states = {job.prefix: plan.job_state(job, versions) for job in jobs}
    others = [job for job in jobs if states[job.prefix] == plan.OTHER_VERSION]
    if others and args.other_versions == "stop":
        names = ", ".join(job.cell.name for job in others)
        raise UserError(
            f"{jobs[0].stage}: {len(others)} jobs' outputs were written by another version of "
            f"the code or its libraries ({names}): --other-versions keep counts them as "
            "finished, --other-versions redo runs them again"
        )
    if args.other_versions == "redo":
        for job in others:  # from step 0: their checkpoints are that version's too
            checkpoint.remove(paths.checkpoint(job.prefix))
    pending = [job for job in jobs if states[job.prefix] not in done(args.other_versions)]
    if len(pending) < len(jobs):
        print(f"{jobs[0].stage}: {len(jobs) - len(pending)} of {len(jobs)} jobs already finished")
    return pending


def run_stage(jobs: list[Job], args) -> list[str]:
    """Run a stage's unfinished jobs; returns one line per job that failed (the later stages
    go on with what the others wrote)."""
    pending = pending_jobs(jobs, args)
    if not pending:
        return []
    check_configs(pending)
    for job in pending:  # the config each job runs, for the record
        write_if_changed(job.config_path, plan.config_text(job.raw))
    failures = executors.run_jobs(pending, args.options, args.plan.out_dir)
    for line in failures:
        print(line, file=sys.stderr)
    return failures


def select_cell(cell: Cell, the_plan: Plan, other_versions: str) -> str:
    """Rank the cell's finished grid points along the axes its tune job built (`grids`),
    write the best as a config; return the line to print. Points of another version count only
    with `--other-versions keep`."""
    job = plan.tune_job(cell, the_plan)
    versions = provenance.versions()
    states = [plan.output_state(output, versions) for output in job.outputs]
    counted = done(other_versions)
    finished = [out.path for out, st in zip(job.outputs, states, strict=True) if st in counted]
    others = states.count(plan.OTHER_VERSION) if other_versions != "keep" else 0
    if not finished:
        return f"{cell.name}: no finished tune outputs in {os.path.dirname(job.prefix)}"
    try:
        runs, axes, ranked = grids.summarise(finished, METRIC, False, axes=list(job.axes))
    except ResultsError as error:
        return f"{cell.name}: cannot rank its grid: {error}"
    best = ranked[0]
    point = next(run.config for run in runs if run.path == best.path)
    key = AGENTS[cell.agent].step_size_key
    step, temp = float(point[key]), float(point["softmax_temp"])
    # The real-size config with the tuned values: `final` shrinks it again under a preset.
    raw = plan.with_hyperparameters(plan.table_config(cell), cell.agent, step, temp)
    write_if_changed(plan.selected_path(the_plan.out_dir, cell), plan.config_text(raw))
    fmt = scoring.number_format([best])
    table_step, table_temp = plan.TABLE[cell.agent][cell.env][cell.regime]
    # Each point left out by name: a cut-short or foreign file must not vanish from a ranking.
    unfinished = [
        os.path.basename(out.path)
        for out, st in zip(job.outputs, states, strict=True)
        if st == plan.UNFINISHED
    ]
    notes = (
        [f"{len(finished)}/{len(job.outputs)} points"] if len(finished) < len(job.outputs) else []
    )
    if unfinished:
        notes.append(
            f"left out, not finished (missing, cut short, damaged or of another config): "
            f"{', '.join(unfinished)}"
        )
    if others:
        notes.append(f"{others} points of another version left out (--other-versions keep)")
    if min(len(v) for v in job.axes.values()) > 2:  # else every point is on an edge
        notes += [w.removeprefix("warning: ") for w in grids.edge_warnings(best, runs, axes)]
    return (
        f"{cell.name}: {key}={step!r} softmax_temp={temp!r} "
        f"return {fmt.format(best.score)} [{fmt.format(best.low)}, {fmt.format(best.high)}] "
        f"over {best.num_seeds} seeds (table: {table_step!r}, {table_temp!r})"
        + "".join(f"; {note}" for note in notes)
    )


def plotted_cells(args, folder: str) -> tuple[list[str], list[str], list[str]]:
    """The figure's agents, environments and regimes: the chosen ones and those of every cell
    with an output under `--out-dir` (the flags choose what runs, not what the figure
    forgets), in the figure's order."""
    present = plan.cells_with_outputs(folder)
    chosen = zip(
        (AGENTS, ENVIRONMENTS, REGIMES), (args.agents, args.envs, args.regimes), strict=True
    )
    return tuple(
        [name for name in names if name in wanted or any(cell[i] == name for cell in present)]
        for i, (names, wanted) in enumerate(chosen)
    )


def run_plot(args) -> None:
    the_plan = args.plan
    path = os.path.join(the_plan.out_dir, "figure4.png")
    folder = plan.final_dir(the_plan.out_dir, the_plan.hyperparameters)
    agents, envs, regimes = plotted_cells(args, folder)
    extra = [
        f"{flag} {' '.join(sorted(set(shown) - set(wanted)))}"
        for flag, shown, wanted in (
            ("agents", agents, args.agents),
            ("envs", envs, args.envs),
            ("regimes", regimes, args.regimes),
        )
        if set(shown) - set(wanted)
    ]
    if extra:
        print(f"plot: every finished cell under {folder} is drawn, also {'; '.join(extra)}")
    lines = figure.save_figure(path, folder, agents, envs, regimes, args.window)
    print(f"plot: {lines} curves from {folder} -> {path}")
    print("\n".join(figure.ranking_lines(folder, agents, envs, regimes)))
    print("\n".join(figure.write_comparison(path, folder, agents, envs, regimes)))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument(
        "--stage",
        nargs="+",
        choices=STAGES,
        default=["final", "plot"],
        metavar="STAGE",
        help="of tune select final plot, run in that order (default: final plot)",
    )
    # --agents takes any registered agent, so that one outside the paper's table is refused
    # with a line saying so (`resolve`); the default is the table's.
    choices = {"agents": list(AGENTS), "envs": list(ENVIRONMENTS), "regimes": list(REGIMES)}
    for flag, names in (("agents", plan.TABLE), ("envs", ENVIRONMENTS), ("regimes", REGIMES)):
        p.add_argument(
            f"--{flag}",
            nargs="+",
            choices=choices[flag],
            metavar=flag[:-1].upper(),
            help=f"cells' {flag} (default all: {' '.join(names)}; --laptop: its own)",
        )
    p.add_argument(
        "--out-dir",
        help="where every output and log lands (default figure4_runs; figure4_quick with "
        "--quick, figure4_laptop with --laptop)",
    )
    sizes = p.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="toy sizes: every stage in minutes")
    sizes.add_argument(
        "--laptop",
        action="store_true",
        help="the comparison at laptop size: the five agents on PanFlute, high data, 8 seeds, "
        "15 000 steps (about an hour on 2 cores)",
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print the projected wall time of each stage here; run nothing",
    )
    p.add_argument(
        "--hyperparameters",
        choices=("table", "selected"),
        default="table",
        help="final: the reference table's values or the select stage's (default table)",
    )
    p.add_argument(
        "--tune-seeds",
        type=number(int, 1),
        help=f"seeds per grid point (default {plan.TUNE_SEEDS}, --quick "
        f"{PRESETS['quick'].tune_seeds})",
    )
    p.add_argument(
        "--step-sizes",
        nargs="+",
        type=number(float, 0, strict=True),
        help="tune grid's step sizes (default 3.125e-6 * 2**k, k = 0..9)",
    )
    p.add_argument(
        "--temperatures",
        nargs="+",
        type=number(float, 0, strict=True),
        help="tune grid's softmax temperatures (default 0.0125 * 2**k, k = 0..10)",
    )
    p.add_argument(
        "--seed",
        type=number(int, 0, maximum=MAX_SEED),
        default=0,
        help="master PRNG seed of every run (default 0)",
    )
    p.add_argument(
        "--window",
        type=number(int, 1),
        help="plot: moving average over evaluations (default 1/50 of the run)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print the state of the jobs a driver runs or ran under --out-dir (its status "
        "file); run nothing",
    )
    p.add_argument(
        "--executor",
        choices=("inline", "local", "slurm"),
        default="inline",
        help="where jobs run: in this process, as local processes, or on SLURM (default inline)",
    )
    p.add_argument(
        "--parallel", type=number(int, 1), default=2, help="local: jobs running at once (default 2)"
    )
    p.add_argument(
        "--time",
        type=number(int, 1),
        help=f"minutes per job (default: slurm {figure4_jobs.SLURM_DEFAULT_MIN}, local no limit)",
    )
    p.add_argument(
        "--gpus-per-job",
        type=number(int, 0),
        help="GPUs per job (default: slurm 1 where the partition has GPUs, else 0; local 0)",
    )
    p.add_argument(
        "--cpus-per-job", type=number(int, 1), default=8, help="slurm: CPUs per job (default 8)"
    )
    p.add_argument(
        "--mem-gb",
        type=number(float, 1),
        help="slurm: memory per job in GB (default: the partition's default)",
    )
    p.add_argument(
        "--slurm-partition", help="slurm: the partition (default: the cluster's default one)"
    )
    p.add_argument(
        "--slurm-array-parallelism",
        type=number(int, 1),
        default=64,
        help="slurm: jobs of the array running at once (default 64)",
    )
    p.add_argument(
        "--signal-delay",
        type=number(int, 1),
        default=300,
        help="slurm: seconds before a job's time limit that SLURM warns it, so that it "
        "checkpoints at its chunk's end and is requeued (default 300; more than a chunk takes, "
        "less than --time)",
    )
    p.add_argument(
        "--retries",
        type=number(int, 0),
        default=figure4_jobs.DEFAULT_RETRIES,
        help="local, slurm: times a cell's job is submitted again after ending with no new "
        f"checkpoint (default {figure4_jobs.DEFAULT_RETRIES}); one that made progress is resumed "
        "regardless",
    )
    p.add_argument(
        "--poll",
        type=number(float, 0.1),
        help="local, slurm: seconds between looks at the jobs' states (default: local 1, slurm 30)",
    )
    p.add_argument(
        "--other-versions",
        choices=("stop", "keep", "redo"),
        default="stop",
        help="finished outputs of another version of the code or its libraries: stop and list "
        "them (default), keep them as finished, or redo them",
    )
    p.add_argument(
        "--accept-version-change",
        action="store_true",
        help="resume runs from checkpoints of another version of the code, its libraries or "
        "another kind of device",
    )
    trackers.add_flags(p)  # every job's curves live, under its stage and cell
    return p


def resolve(args) -> argparse.Namespace:
    """Check what argparse cannot, and resolve the flags into the `Plan` of each cell's jobs
    and the executor's `Options`."""
    slurm_only = (
        "cpus_per_job",
        "mem_gb",
        "slurm_partition",
        "slurm_array_parallelism",
        "signal_delay",
    )
    defaults = build_parser().parse_args([])
    if error := trackers.flag_error(args):
        raise UserError(error)
    if args.tensorboard:  # the jobs' working folder is not the driver's
        args.tensorboard = os.path.abspath(args.tensorboard)
    for name in slurm_only:
        if args.executor != "slurm" and getattr(args, name) != getattr(defaults, name):
            raise UserError(f"--{name.replace('_', '-')}: only with --executor slurm")
    if args.executor == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: sbatch not found: this is not a SLURM login node")
    outside_table = [a for a in args.agents or () if a not in plan.TABLE]
    if outside_table:
        raise UserError(
            f"--agents: {', '.join(outside_table)} has no row in the paper's Figure 4 table "
            f"(figure4/plan.TABLE: {' '.join(plan.TABLE)}); train it with its own script"
        )
    preset = PRESETS["quick"] if args.quick else PRESETS["laptop"] if args.laptop else plan.FULL
    step_sizes = tuple(args.step_sizes or preset.step_sizes)
    temperatures = tuple(args.temperatures or preset.temperatures)
    for flag, values in (("step-sizes", step_sizes), ("temperatures", temperatures)):
        if len(set(values)) < len(values):
            raise UserError(f"--{flag}: a value is given twice")
    out_dir = os.path.abspath(args.out_dir or preset.out_dir)
    if not args.estimate and not args.status:
        check_out_dir(out_dir)
    the_plan = Plan(
        out_dir=out_dir,
        preset=preset,
        step_sizes=step_sizes,
        temperatures=temperatures,
        tune_seeds=args.tune_seeds or preset.tune_seeds,
        seed=args.seed,
        hyperparameters=args.hyperparameters,
    )
    options = figure4_jobs.Options(
        args.executor,
        args.seed,
        args.parallel,
        args.time,
        args.gpus_per_job,
        args.cpus_per_job,
        args.mem_gb,
        args.slurm_partition,
        args.slurm_array_parallelism,
        args.signal_delay,
        args.poll or (30.0 if args.executor == "slurm" else 1.0),
        args.accept_version_change,
        args.retries,
        trackers.from_flags(args),
    )
    if args.executor == "slurm" and {"tune", "final"} & set(args.stage) and not args.status:
        options = cluster.fit_to_cluster(options)  # before anything is submitted
    stages = [stage for stage in STAGES if stage in args.stage]
    cells = {
        "agents": args.agents or list(plan.TABLE),
        "envs": args.envs or list(preset.envs),
        "regimes": args.regimes or list(preset.regimes),
    }
    return argparse.Namespace(
        **{**vars(args), **cells}, plan=the_plan, options=options, stages=stages
    )


def check_out_dir(out_dir: str) -> None:
    """Every stage writes under `--out-dir`: find out before any job runs that it can."""
    try:
        make_writable_dir(out_dir)
    except OSError as error:
        raise UserError(f"--out-dir: cannot write {out_dir}: {error.strerror}") from None


def chosen_cells(args) -> list[Cell]:
    return [
        Cell(a, e, r)
        for a in plan.TABLE
        if a in args.agents
        for e in ENVIRONMENTS
        if e in args.envs
        for r in REGIMES
        if r in args.regimes
    ]


def check_selected(cells: list[Cell], the_plan: Plan) -> None:
    for cell in cells:
        path = plan.selected_path(the_plan.out_dir, cell)
        if not os.path.exists(path):
            raise UserError(
                f"--hyperparameters selected: no {path}: run --stage tune select for "
                f"{cell.name} first"
            )


def run(args) -> int:
    """Run the chosen stages; returns the exit status: 1 when a job failed (every stage still
    ran, with what the other jobs wrote)."""
    cells, the_plan = chosen_cells(args), args.plan
    if args.estimate:
        estimate.run_estimate(cells, the_plan)
        return 0
    if args.status:
        print("\n".join(executors.status_lines(the_plan.out_dir)))
        return 0
    failures = []
    # One driver at a time submits jobs and writes selections; a plot only reads, so it may
    # be drawn while a driver works.
    writes = any(stage != "plot" for stage in args.stages)
    lock = cluster.driver_lock(the_plan.out_dir) if writes else contextlib.nullcontext()
    with lock:
        for stage in args.stages:
            if stage == "tune":
                failures += run_stage([plan.tune_job(cell, the_plan) for cell in cells], args)
            elif stage == "select":
                for cell in cells:
                    print("select " + select_cell(cell, the_plan, args.other_versions), flush=True)
            elif stage == "final":
                if the_plan.hyperparameters == "selected":
                    check_selected(cells, the_plan)
                failures += run_stage([plan.final_job(cell, the_plan) for cell in cells], args)
            else:
                run_plot(args)
    if failures:
        print(f"{PROG}: {len(failures)} jobs failed (above); the rest is done", file=sys.stderr)
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = build_parser()
    try:
        return run(resolve(parser.parse_args(argv)))
    except (UserError, cluster.RequestError) as error:
        parser.exit(2, f"{PROG}: error: {error}\n")
    except cluster.LockedError as error:
        parser.exit(1, f"{PROG}: {error}\n")
    except WriteError as error:  # a full disk, a lost mount: what was written before stays
        parser.exit(1, f"{PROG}: cannot write {error.filename}: {error.strerror}\n")
    except figure4_jobs.DriverStoppedError as stopped:
        parser.exit(128 + stopped.signum, f"{PROG}: {stopped}\n")
    except KeyboardInterrupt:  # Ctrl-C between stages
        parser.exit(128 + signal.SIGINT, f"{PROG}: interrupted; run the same command to go on\n")


if __name__ == "__main__":
    sys.exit(main())
